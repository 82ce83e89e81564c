"""TransformersBackend: exact original positions (against an independent masked reference), decoding rules.

The exactness test runs the embedded SmolLM2-135M in float32 twice:

* the backend: only the kept tokens are prefilled, at their original positions, then decoding at N, N+1, ...
* the reference (plain model forward calls, written here): the FULL prompt at positions 0..N-1 with a custom
  4-D mask that hides every dropped prompt token as a key, then decoding at N+k with the same keys hidden.

Both compute the same function, so greedy tokens must agree one for one.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from conftest import HAS_TORCH, needs_model
from specprefill.backends.base import BaseRequest, GenerationParams
from specprefill.errors import EmptyPromptError, PromptError, PromptTooLongError

pytestmark = pytest.mark.skipif(not HAS_TORCH, reason="needs torch + transformers (the hf extra)")

FACTS = [
    "The harbour office opens at seven and closes at five, except on public holidays.",
    "Ferries to the northern islands leave every ninety minutes; the last one departs at 21:40.",
    "In 1894 the lighthouse keeper, Ada Morrow, recorded the longest storm in the town's history.",
    "Fishing licences cost forty-two crowns a season and must be shown to the wardens.",
    "The museum's east wing holds ship models, the oldest carved around 1720.",
    "Local bakers sell a rye bread flavoured with caraway that visitors take home.",
    "The town council meets on the first Tuesday of every month in the old customs house.",
]


def long_prompt(n: int = 28) -> str:
    lines = [f"{i + 1}. {FACTS[i % len(FACTS)]}" for i in range(n)]
    return "Town notes:\n" + "\n".join(lines) + "\nSummary of the notes above: the town"


# --- the independent reference ------------------------------------------------------------------------------
def masked_reference(model: Any, ids: list[int], kept: list[int], steps: int, eos: set[int]) -> tuple[list[int], Any]:
    """Greedy decode over the FULL prompt with dropped prompt tokens hidden as keys (custom 4-D masks)."""
    import torch

    n = len(ids)
    neg = torch.finfo(torch.float32).min
    keep = torch.zeros(n, dtype=torch.bool)
    keep[kept] = True
    idx = torch.arange(n)
    causal = idx[None, :] <= idx[:, None]
    # a dropped token may still see itself so its (unused) row stays finite
    allowed = causal & (keep[None, :] | (idx[None, :] == idx[:, None]))
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, neg)
    out_tokens: list[int] = []
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([ids]),
            position_ids=idx[None, :],
            attention_mask=mask,
            use_cache=True,
        )
        # the first new token comes from the last KEPT prompt token
        logits = out.logits[0, kept[-1]].float()
        first_logits = logits.clone()
        cache = out.past_key_values
        for k in range(steps):
            token = int(logits.argmax())
            out_tokens.append(token)
            if token in eos or k + 1 == steps:
                break
            key_ok = torch.cat([keep, torch.ones(k + 1, dtype=torch.bool)])
            step_mask = torch.zeros(1, 1, 1, n + k + 1).masked_fill(~key_ok, neg)
            out = model(
                input_ids=torch.tensor([[token]]),
                position_ids=torch.tensor([[n + k]]),
                attention_mask=step_mask,
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[0, -1].float()
            cache = out.past_key_values
    return out_tokens, first_logits


def kept_logits(
    model: Any, ids: list[int], positions: list[int], *, with_mask: bool = True, use_cache: bool = True
) -> Any:
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.tensor([positions]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long) if with_mask else None,
            use_cache=use_cache,
            logits_to_keep=1,
        )
    return out.logits[0, -1].float()


@pytest.fixture(scope="module")
def base_fp32(speculator_fp32: Any) -> Any:
    from specprefill.backends.transformers import TransformersBackend

    return TransformersBackend(speculator_fp32.model, speculator_fp32.tokenizer, name="smollm2-135m-fp32")


@pytest.fixture(scope="module")
def pruned_fp32(speculator_fp32: Any) -> Any:
    result = speculator_fp32.prune(long_prompt(), keep_rate=0.3, min_prompt_tokens=0)
    assert result.original_length >= 600, result.original_length
    assert result.stats.pruned and 0.2 < result.stats.keep_ratio < 0.45
    return result


# --- exactness ----------------------------------------------------------------------------------------------
@needs_model
@pytest.mark.integration
def test_pruned_greedy_matches_masked_full_prompt_reference(speculator_fp32: Any, base_fp32: Any, pruned_fp32: Any):
    import torch

    r = pruned_fp32
    steps = 16
    request = BaseRequest(token_ids=r.kept_token_ids, position_ids=r.position_ids, original_length=r.original_length)
    out = base_fp32.generate(request, GenerationParams(max_new_tokens=steps))
    assert out.positions == "original"
    assert out.prompt_tokens == len(r.kept_token_ids) < r.original_length

    ref_tokens, ref_first_logits = masked_reference(
        speculator_fp32.model, r.input_ids, [int(i) for i in r.kept_indices], steps, set(base_fp32.eos_ids)
    )
    assert len(ref_tokens) >= 16, "the reference stopped early; the comparison would be too short"
    assert out.token_ids == ref_tokens

    # the comparison can fail: the full, unmasked prompt gives clearly different logits
    full_logits = kept_logits(speculator_fp32.model, r.input_ids, list(range(r.original_length)))
    assert float((full_logits - ref_first_logits).abs().max()) > 1e-2
    # and the kept tokens at their original positions reproduce the reference's first logits
    original = kept_logits(speculator_fp32.model, r.kept_token_ids, r.position_ids)
    torch.testing.assert_close(original, ref_first_logits, atol=2e-4, rtol=1e-4)


@needs_model
@pytest.mark.integration
def test_compacted_positions_change_the_logits(speculator_fp32: Any, pruned_fp32: Any):
    r = pruned_fp32
    model = speculator_fp32.model
    original = kept_logits(model, r.kept_token_ids, r.position_ids)
    compacted = kept_logits(model, r.kept_token_ids, list(range(len(r.kept_token_ids))))
    assert float((original - compacted).abs().max()) > 1e-2


@needs_model
@pytest.mark.integration
def test_gapped_positions_without_mask_are_read_as_packed_sequences(speculator_fp32: Any, pruned_fp32: Any):
    # DESIGN §4: without an explicit mask (and without a cache) transformers 5.x reads every position gap
    # as the start of another packed sequence and cuts the attention there
    r = pruned_fp32
    model = speculator_fp32.model
    with_mask = kept_logits(model, r.kept_token_ids, r.position_ids, use_cache=False)
    without = kept_logits(model, r.kept_token_ids, r.position_ids, with_mask=False, use_cache=False)
    assert float((with_mask - without).abs().max()) > 1e-2
    # the backend always passes a mask, so it is safe either way
    assert float((with_mask - kept_logits(model, r.kept_token_ids, r.position_ids)).abs().max()) < 1e-4


@needs_model
@pytest.mark.integration
def test_full_request_equals_plain_greedy_and_reports_full(speculator_fp32: Any, base_fp32: Any):
    import torch

    ids = speculator_fp32.encode_with_specials("The capital of France is")[0]
    out = base_fp32.generate(BaseRequest(token_ids=ids), GenerationParams(max_new_tokens=6))
    assert out.positions == "full"
    expected = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(6):
            nxt = int(speculator_fp32.model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
            expected.append(nxt)
            if nxt in base_fp32.eos_ids:
                break
            seq.append(nxt)
    assert out.token_ids == expected


# --- decoding rules -----------------------------------------------------------------------------------------
@needs_model
@pytest.mark.integration
def test_stream_joins_to_output_and_length_finish(base_fp32: Any):
    request = BaseRequest(text="Once upon a time, in a small village by the sea,")
    chunks = list(base_fp32.stream(request, GenerationParams(max_new_tokens=10)))
    assert all(c.output is None for c in chunks[:-1]) and chunks[-1].output is not None
    out = chunks[-1].output
    assert "".join(c.text for c in chunks) == out.text
    assert out.finish_reason == "length" and out.completion_tokens == 10 == len(out.token_ids)
    assert out.positions == "compacted"
    assert 0 < out.prefill_seconds <= out.total_seconds


@needs_model
@pytest.mark.integration
def test_stop_string_is_trimmed_and_never_streamed(base_fp32: Any):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    full = base_fp32.generate(BaseRequest(messages=messages), GenerationParams(max_new_tokens=16))
    assert "Paris" in full.text, full.text
    stop = "Paris"
    chunks = list(base_fp32.stream(BaseRequest(messages=messages), GenerationParams(max_new_tokens=16, stop=(stop,))))
    out = chunks[-1].output
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.index(stop)]
    assert "".join(c.text for c in chunks) == out.text
    assert not any("Par" in c.text for c in chunks)


@needs_model
@pytest.mark.integration
def test_eos_ends_generation_with_stop(base_fp32: Any):
    messages = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
    out = base_fp32.generate(BaseRequest(messages=messages), GenerationParams(max_new_tokens=24))
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] in base_fp32.eos_ids
    assert "<|im_end|>" not in out.text


@needs_model
@pytest.mark.integration
def test_sampling_is_reproducible_with_a_seed(base_fp32: Any):
    request = BaseRequest(text="My favourite colours are")
    a = base_fp32.generate(request, GenerationParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7))
    b = base_fp32.generate(request, GenerationParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7))
    assert a.token_ids == b.token_ids
    c = base_fp32.generate(request, GenerationParams(max_new_tokens=6, temperature=1.5, seed=8))
    assert c.token_ids != a.token_ids


@needs_model
@pytest.mark.integration
def test_concurrent_generations_are_independent(base_fp32: Any):
    prompts = ["The sky is", "Two plus two equals"]
    params = GenerationParams(max_new_tokens=5)
    expected = [base_fp32.generate(BaseRequest(text=p), params).token_ids for p in prompts]
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        results[i] = base_fp32.generate(BaseRequest(text=prompts[i]), params).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[0], results[1]] == expected


@needs_model
def test_prompt_too_long_is_refused_before_any_forward(base_fp32: Any):
    limit = base_fp32.max_position_embeddings
    request = BaseRequest(token_ids=[1, 2], position_ids=[0, limit - 5], original_length=limit - 4)
    with pytest.raises(PromptTooLongError, match="max_new_tokens"):
        base_fp32.generate(request, GenerationParams(max_new_tokens=10))


@needs_model
def test_bad_requests(base_fp32: Any):
    params = GenerationParams(max_new_tokens=2)
    with pytest.raises(EmptyPromptError):
        base_fp32.generate(BaseRequest(token_ids=[]), params)
    with pytest.raises(PromptError, match="outside the base vocabulary"):
        base_fp32.generate(BaseRequest(token_ids=[10**7]), params)
    with pytest.raises(PromptError, match="position ids"):
        base_fp32.generate(BaseRequest(token_ids=[1, 2], position_ids=[0]), params)
    with pytest.raises(PromptError, match="strictly increasing"):
        base_fp32.generate(BaseRequest(token_ids=[1, 2], position_ids=[3, 3]), params)
    with pytest.raises(PromptError, match="original_length"):
        base_fp32.generate(BaseRequest(token_ids=[1, 2], position_ids=[0, 5], original_length=3), params)
    with pytest.raises(PromptError, match="neither"):
        base_fp32.generate(BaseRequest(), params)
    with pytest.raises(EmptyPromptError):
        base_fp32.generate(BaseRequest(text="   "), params)


@needs_model
def test_same_tokenizer(speculator_fp32: Any, speculator: Any, base_fp32: Any):
    class Vocab:
        def __init__(self, vocab: dict[str, int]) -> None:
            self.vocab = vocab

        def get_vocab(self) -> dict[str, int]:
            return self.vocab

    class Spec:
        def __init__(self, tokenizer: Any) -> None:
            self.tokenizer = tokenizer

    assert base_fp32.same_tokenizer(speculator_fp32) is True
    assert base_fp32.same_tokenizer(speculator) is True  # another tokenizer object, same vocabulary
    assert base_fp32.same_tokenizer(Spec(Vocab({"a": 0, "b": 1}))) is False
    assert base_fp32.same_tokenizer(Spec(Vocab(dict(speculator.tokenizer.get_vocab())))) is True
    assert base_fp32.same_tokenizer(object()) is False


# --- incremental text (hermetic) ----------------------------------------------------------------------------
class ByteTokenizer:
    """One token per UTF-8 byte: multi-byte characters need several tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_detokenizer_never_splits_characters():
    from specprefill.backends.transformers import IncrementalDetokenizer

    text = "héllo 你好 🙂 world ✓"
    detok = IncrementalDetokenizer(ByteTokenizer())
    deltas = [detok.add(b) for b in text.encode()]
    deltas.append(detok.flush())
    assert "".join(deltas) == text == detok.text
    assert not any("\ufffd" in d for d in deltas)
    # an emoji is released only when its fourth byte arrives
    emoji_at = text.encode().index("🙂".encode())
    assert deltas[emoji_at : emoji_at + 3] == ["", "", ""]
    assert deltas[emoji_at + 3] == "🙂"


def test_incremental_detokenizer_flushes_a_broken_tail():
    from specprefill.backends.transformers import IncrementalDetokenizer

    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.add(ord("a")) == "a"
    assert detok.add("🙂".encode()[0]) == ""
    assert detok.flush() == "\ufffd"


@needs_model
def test_incremental_detokenizer_with_real_tokenizer(base_fp32: Any):
    from specprefill.backends.transformers import IncrementalDetokenizer

    text = "Grüße aus Zürich! 東京タワー 🙂🚀 done."
    ids = base_fp32.tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(base_fp32.tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == base_fp32.tokenizer.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_stop_checker():
    from specprefill.backends.transformers import StopChecker

    checker = StopChecker(["\n\n", "END"])
    assert checker.find("hello") is None
    assert checker.safe_length("hello E") == len("hello ")
    assert checker.safe_length("hello EN") == len("hello ")
    assert checker.safe_length("hello\n") == len("hello")
    assert checker.safe_length("hello!") == len("hello!")
    assert checker.find("hello EN") is None
    assert checker.find("hello END more") == len("hello ")
    assert StopChecker([]).find("anything") is None
    assert StopChecker(["", "x"]).stops == ("x",)


@needs_model
@pytest.mark.integration
def test_from_pretrained_loads_the_embedded_model(speculator: Any):
    from specprefill.backends.transformers import TransformersBackend

    base = TransformersBackend.from_pretrained("smollm2-135m")
    assert base.model_name == "smollm2-135m" and base.same_tokenizer(speculator)
    assert base.max_position_embeddings == 8192
    out = base.generate(BaseRequest(text="Hello"), GenerationParams(max_new_tokens=2))
    assert out.completion_tokens == 2 and out.model == "smollm2-135m"


def test_from_pretrained_missing_path_is_a_model_load_error(tmp_path: Any):
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        TransformersBackend.from_pretrained(str(tmp_path / "nowhere.gguf"))
