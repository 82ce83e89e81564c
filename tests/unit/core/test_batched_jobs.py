"""Micro-batches that share forward passes: length buckets, score_prompts and the service's batched path (fakes)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from fakes import FakeSpeculator
from specprefill import SpecPrefillConfig
from specprefill.errors import PromptError
from specprefill.server.pruning import TOKENIZER_PROBE as _PROBE
from specprefill.server.pruning import ScoreJob
from specprefill.server.service import BatchableJob, ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import ImportanceResult
from specprefill.speculator.batching import length_buckets

CFG = SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8, keep_rate=0.3)
PROBE = [ord(c) for c in _PROBE]


class BatchingFake(FakeSpeculator):
    """Records every score_many call; ``batch_forward`` as HFSpeculator has it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batch_forward = True
        self.batches: list[int] = []

    def score_many(self, batch: Sequence[tuple[Sequence[int], SpecPrefillConfig]]) -> list[ImportanceResult]:
        self.batches.append(len(batch))
        return super().score_many(batch)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


# --- length buckets -------------------------------------------------------------------------------
def test_length_buckets_bound_the_padding() -> None:
    assert length_buckets([], []) == []
    assert length_buckets(["a"], [5]) == [["a"]]
    assert length_buckets([0, 1, 2, 3], [1000, 1000, 990, 800]) == [[0, 1, 2, 3]]
    # 1320 with 357 would pad 2 x 1320 for 1677 real tokens: split by length instead
    assert length_buckets([0, 1, 2, 3], [561, 1320, 357, 865]) == [[1, 3], [0, 2]]
    assert length_buckets([0, 1], [100, 10], slack=10.0) == [[0, 1]]
    assert length_buckets([0, 1, 2, 3], [4096] * 4, max_tokens=8192) == [[0, 1], [2, 3]]
    assert length_buckets([0, 1], [9000, 9000], max_tokens=8192) == [[0], [1]]
    for items, lengths in [([0, 1, 2], [7, 7, 7]), ([0, 1, 2, 3, 4], [50, 3, 900, 40, 41])]:
        buckets = length_buckets(items, lengths)
        assert sorted(i for b in buckets for i in b) == items  # every item once
        for b in buckets:
            assert len(b) * max(lengths[i] for i in b) <= 1.25 * sum(lengths[i] for i in b) or len(b) == 1


# --- score_prompts --------------------------------------------------------------------------------
def test_score_prompts_equals_score_prompt_each() -> None:
    spec = FakeSpeculator(hot=["ferry"])
    texts = ["the ferry leaves at six " * 5, "short", "a ferry " * 20]
    cfg = SpecPrefillConfig(min_prompt_tokens=10)
    items = [(spec.prepare(t, config=cfg), cfg) for t in texts]
    together = spec.score_prompts(items)
    for (prepared, config), scored in zip(items, together, strict=True):
        alone = spec.score_prompt(prepared, config)
        assert scored.segments == alone.segments and scored.queries == alone.queries
        if alone.importance is None:  # "short" is under min_prompt_tokens: not scored either way
            assert scored.importance is None
        else:
            assert np.array_equal(scored.importance, alone.importance)


def test_a_failing_batch_is_scored_one_by_one_each_with_its_fallback() -> None:
    class Broken(FakeSpeculator):
        def score_many(self, batch: Any) -> list[ImportanceResult]:
            raise RuntimeError("batch broke")

    spec = Broken()
    items = [(spec.prepare("x" * 40, config=CFG), CFG), (spec.prepare("y" * 30, config=CFG), CFG)]
    scored = spec.score_prompts(items)
    assert all(s.importance is not None for s in scored) and spec.calls == 2  # alone, each scored

    spec.fail = RuntimeError("model down")
    assert all(s.fallback_reason and "model down" in s.fallback_reason for s in spec.score_prompts(items))


# --- the service ----------------------------------------------------------------------------------
def blocked_service(spec: FakeSpeculator) -> tuple[ScoringService, threading.Event]:
    service = ScoringService(ServerSettings(speculator="fake", max_batch=8), loader=lambda: spec)
    release = threading.Event()
    assert service.wait_loaded(5)
    busy = service.submit(lambda s: release.wait(10)).future
    while not busy.running():
        pass
    return service, release


def test_score_jobs_are_batchable_and_equal_alone() -> None:
    job = ScoreJob(ids=ids("abc" * 30), config=CFG, probe=PROBE)
    assert isinstance(job, BatchableJob) and not isinstance(lambda s: 0, BatchableJob)
    spec = FakeSpeculator()
    alone = job(spec)
    prepared, config = job.prepare(spec)
    again = job.finish(spec, spec.score_prompt(prepared, config))
    assert alone.kept.tolist() == again.kept.tolist() and len(alone.kept) < 90


async def test_a_micro_batch_of_score_jobs_shares_one_score_many() -> None:
    spec = BatchingFake()
    service, release = blocked_service(spec)
    texts = ["abcdefgh" * 12, "zyxw" * 30, "hello world " * 9]
    runs = [asyncio.ensure_future(service.run(ScoreJob(ids=ids(t), config=CFG, probe=PROBE))) for t in texts]
    await asyncio.sleep(0.05)
    release.set()
    outcomes = await asyncio.gather(*runs)
    assert spec.batches == [3]  # one call for the three jobs
    for text, outcome in zip(texts, outcomes, strict=True):
        assert outcome.kept.tolist() == ScoreJob(ids=ids(text), config=CFG)(FakeSpeculator()).kept.tolist()


async def test_one_bad_job_fails_alone_and_the_others_are_scored() -> None:
    spec = BatchingFake()
    service, release = blocked_service(spec)
    good = [ScoreJob(ids=ids("abcdefgh" * 12), config=CFG, probe=PROBE) for _ in range(2)]
    chat = [{"role": "user", "content": "qrst" * 20}]
    bad = ScoreJob(ids=ids("qrst" * 20), config=CFG, text="QRST" * 20, messages=chat)  # ids do not match the text
    runs = [asyncio.ensure_future(service.run(job)) for job in (good[0], bad, good[1])]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert isinstance(results[1], ScoringUnavailableError) and isinstance(results[1].__cause__, PromptError)
    assert all(len(r.kept) < 96 for r in (results[0], results[2]))  # type: ignore[union-attr]
    assert spec.batches == []  # the batch failed in prepare, before the model: every job ran alone


async def test_without_batch_forward_jobs_run_one_by_one() -> None:
    spec = BatchingFake()
    spec.batch_forward = False
    service, release = blocked_service(spec)
    runs = [asyncio.ensure_future(service.run(ScoreJob(ids=ids("ab" * 40), config=CFG))) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*runs)
    assert spec.batches == [] and spec.calls == 3 and service.batches[3] == 1


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_batch_forward_setting_reaches_the_speculator(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import specprefill.speculator.loading as models
    from specprefill.server.loader import load_configured_speculator

    monkeypatch.setattr(models, "load_speculator", lambda name, **kw: BatchingFake(name=name))
    settings = ServerSettings.load({"SPECPREFILL_SERVER_SPECULATOR": "any", "SPECPREFILL_SERVER_BATCH_FORWARD": value})
    assert load_configured_speculator(settings).batch_forward is (value == "true")  # type: ignore[attr-defined]
