"""Scoring equals a naive eager-attention reference (DESIGN §1 steps 2-5), to 1e-4.

The reference runs the whole prompt plus the look-ahead tokens through an *eager* copy of the model with
``output_attentions=True``, takes the probability rows of the scoring queries over the prompt keys,
renormalises them over the prompt (softmax restricted to a subset equals the renormalised full softmax),
and reduces them with the pure NumPy functions in ``specprefill.scoring``. With an observation window the
reference also takes the rows of the last W prompt tokens (eager attention is causal, and the NumPy
reference applies its own causal mask on top).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import pytest

from conftest import HAS_EMBEDDED, HAS_TORCH, needs_model
from specprefill import SpecPrefillConfig, importance_from_attention

pytestmark = pytest.mark.skipif(not HAS_TORCH, reason="needs torch + transformers (the hf extra)")

PARAGRAPHS = [
    "The harbour office opens at seven and closes at five, except on public holidays when it stays shut.",
    "Ferries to the northern islands leave every ninety minutes; the last one departs at 21:40.",
    "In 1894 the lighthouse keeper, Ada Morrow, recorded the longest storm in the town's history.",
    "Fishing licences cost forty-two crowns a season and must be shown on request to the wardens.",
    "The museum's east wing holds a collection of ship models, the oldest carved around 1720.",
    "Local bakers sell a rye bread flavoured with caraway that visitors often take home as a gift.",
]


def long_text(n_paragraphs: int) -> str:
    parts = [PARAGRAPHS[i % len(PARAGRAPHS)] + f" (note {i})" for i in range(n_paragraphs)]
    return "\n".join(parts) + "\nQuestion: who recorded the longest storm, and in which year?"


def reference_importance(
    eager_model: Any,
    ids: list[int],
    lookahead: list[int],
    kernel: int,
    skip_layers: set[int] = frozenset(),
    *,
    window: int = 0,
    reduction: str = "mean",
    mix: float = 0.5,
    heads: dict[int, tuple[int, ...]] | None = None,
) -> np.ndarray:
    """Importance from the eager model's full attention maps (only ``heads``, ``{layer: heads}``, if given)."""
    import torch

    n, q = len(ids), len(lookahead) + 1
    first = n - max(window, 1)  # the last prompt token is both a window query and the first look-ahead query
    with torch.no_grad():
        out = eager_model(torch.tensor([ids + lookahead]), output_attentions=True)
    # the look-ahead tokens must be the model's own greedy continuation
    greedy = out.logits[0, n - 1 : n - 1 + q].argmax(-1).tolist()
    assert greedy[: q - 1] == lookahead
    rows = []
    for layer, att in enumerate(out.attentions):
        if layer in skip_layers:
            continue
        if heads is not None and layer not in heads:
            continue
        probs = att[0, :, first : n - 1 + q, :n].double()
        probs = (probs / probs.sum(-1, keepdim=True)).float()
        if heads is not None:  # the other heads' rows become zeros: they never win a max of probabilities
            probs[[h for h in range(probs.shape[0]) if h not in heads[layer]]] = 0.0
        rows.append(probs)
    return importance_from_attention(
        torch.stack(rows).numpy(), kernel, window_queries=window, query_reduction=reduction, query_mix=mix
    )


@needs_model
@pytest.mark.integration
def test_embedded_model_matches_eager_reference(speculator_fp32: Any) -> None:
    from specprefill.speculator.loading import load_causal_lm

    ids, _ = speculator_fp32.encode_with_specials(long_text(36))
    assert len(ids) >= 1000
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0)
    scored = speculator_fp32.score(ids, cfg)
    assert scored.importance.dtype == np.float32 and scored.importance.shape == (len(ids),)
    assert 1 <= scored.queries <= cfg.lookahead
    eager, _ = load_causal_lm("smollm2-135m", dtype="float32", attn_implementation="eager")
    ref = reference_importance(eager, ids, scored.lookahead_token_ids, cfg.pool_kernel)
    err = float(np.abs(scored.importance - ref).max())
    assert err < 1e-4, f"max abs error {err}"
    assert err / float(ref.max()) < 1e-3
    # the reference is not trivially close: other look-ahead depths change the scores
    one = speculator_fp32.score(ids, cfg.with_overrides(lookahead=1)).importance
    assert float(np.abs(one - ref).max()) > 10 * max(err, 1e-7)


@needs_model
@pytest.mark.integration
@pytest.mark.parametrize(
    ("window", "lookahead", "reduction"), [(32, 8, "max"), (16, 1, "mix")], ids=["w32-la8-max", "w16-la1-mix"]
)
def test_observation_window_matches_eager_reference(
    speculator_fp32: Any, window: int, lookahead: int, reduction: str
) -> None:
    from specprefill.speculator.loading import load_causal_lm

    ids, _ = speculator_fp32.encode_with_specials(long_text(36))
    cfg = SpecPrefillConfig.paper(
        min_prompt_tokens=0, observation_window=window, lookahead=lookahead, query_reduction=reduction
    )
    scored = speculator_fp32.score(ids, cfg)
    # the last prompt token is counted once: W window queries plus the decoded look-ahead tokens
    assert scored.queries == window + len(scored.lookahead_token_ids)
    assert len(scored.lookahead_token_ids) <= lookahead - 1
    eager, _ = load_causal_lm("smollm2-135m", dtype="float32", attn_implementation="eager")
    ref = reference_importance(
        eager, ids, scored.lookahead_token_ids, cfg.pool_kernel, window=window, reduction=reduction
    )
    err = float(np.abs(scored.importance - ref).max())
    assert err < 1e-4 and err / float(ref.max()) < 1e-3, f"max abs error {err}"
    # not trivially close: the paper setting scores differently
    paper = speculator_fp32.score(ids, SpecPrefillConfig.paper(min_prompt_tokens=0)).importance
    assert float(np.abs(paper - ref).max()) > 10 * max(err, 1e-7)


def _tiny_model(kind: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    from specprefill.speculator.loading import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    if kind == "gemma3":
        cfg = Gemma3TextConfig(num_hidden_layers=6, head_dim=16, sliding_window=16, **common)
        model = Gemma3ForCausalLM(cfg)
    else:
        cfg = Qwen2Config(num_hidden_layers=3, **common)
        model = Qwen2ForCausalLM(cfg)
    return model.float().eval(), tokenizer


@pytest.mark.skipif(not HAS_EMBEDDED, reason="uses the packaged SmolLM2 tokenizer")
@pytest.mark.parametrize("kind", ["qwen2", "gemma3"])
def test_other_architectures_match_reference(kind: str) -> None:
    from specprefill.speculator.hf import HFSpeculator

    model, tokenizer = _tiny_model(kind)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    spec = HFSpeculator(model, tokenizer, name=f"tiny-{kind}")
    ids, _ = spec.encode_with_specials(long_text(4))
    assert len(ids) > 64
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0, lookahead=4)
    scored = spec.score(ids, cfg)
    layer_types = getattr(model.config, "layer_types", None) or []
    sliding = {i for i, t in enumerate(layer_types) if t == "sliding_attention"}
    if kind == "gemma3":
        assert sliding and len(sliding) < len(layer_types)  # 5 local layers : 1 global
    ref = reference_importance(eager, ids, scored.lookahead_token_ids, cfg.pool_kernel, skip_layers=sliding)
    assert float(np.abs(scored.importance - ref).max()) < 1e-4
    if kind == "gemma3":
        # including the windowed layers would give a different answer: they really are excluded
        with_local = reference_importance(eager, ids, scored.lookahead_token_ids, cfg.pool_kernel)
        assert float(np.abs(with_local - ref).max()) > 1e-4


@pytest.mark.skipif(not HAS_EMBEDDED, reason="uses the packaged SmolLM2 tokenizer")
def test_sliding_layers_count_when_window_covers_prompt() -> None:
    from specprefill.speculator.hf import HFSpeculator

    model, tokenizer = _tiny_model("gemma3")
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    spec = HFSpeculator(model, tokenizer, name="tiny-gemma3")
    ids = spec.encode_with_specials("Short prompt: the window of 16 covers it.")[0][:12]
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0, lookahead=4, pool_kernel=3)
    scored = spec.score(ids, cfg)
    if len(ids) + len(scored.lookahead_token_ids) <= 16:
        ref = reference_importance(eager, ids, scored.lookahead_token_ids, cfg.pool_kernel)
        assert float(np.abs(scored.importance - ref).max()) < 1e-4


@pytest.mark.skipif(not HAS_EMBEDDED, reason="uses the packaged SmolLM2 tokenizer")
@pytest.mark.parametrize("kind", ["qwen2", "gemma3"])
def test_retrieval_heads_match_reference_on_those_heads(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    from specprefill.speculator.heads import HeadProfile
    from specprefill.speculator.hf import HFSpeculator

    model, tokenizer = _tiny_model(kind)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with caplog.at_level(logging.INFO, logger="specprefill"):
        spec = HFSpeculator(model, tokenizer, name=f"tiny-{kind}-heads")
    assert spec.head_profile is None  # no profile for it: every head, as before, and the log says how to fix it
    assert f"no retrieval-head profile for speculator 'tiny-{kind}-heads'" in caplog.text
    layers = spec.attention_shape[0]
    layer_types = getattr(model.config, "layer_types", None) or []
    sliding = {i for i, t in enumerate(layer_types) if t == "sliding_attention"}
    full = [layer for layer in range(layers) if layer not in sliding]
    # head 1 of the first full layer, heads 0 and 3 of the last one (KV heads 0 and 1)
    wanted = {full[0]: (1,), full[-1]: (0, 3)} if len(full) > 1 else {full[0]: (0, 3)}
    scores = [[0.5 if h in wanted.get(layer, ()) else 0.0 for h in range(4)] for layer in range(layers)]
    spec.head_profile = HeadProfile("tiny", tuple(tuple(row) for row in scores))
    ids, _ = spec.encode_with_specials(long_text(4))
    cfg = SpecPrefillConfig.paper(min_prompt_tokens=0, lookahead=4, retrieval_heads=3)
    assert spec.head_selection(cfg) == wanted
    scored = spec.score(ids, cfg)
    ref = reference_importance(eager, ids, scored.lookahead_token_ids, cfg.pool_kernel, sliding, heads=wanted)
    assert float(np.abs(scored.importance - ref).max()) < 1e-4
    every = spec.score(ids, cfg.with_overrides(retrieval_heads=0)).importance
    assert float(np.abs(every - scored.importance).max()) > 1e-4
