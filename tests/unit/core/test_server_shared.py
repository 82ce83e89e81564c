"""One speculator for several API servers: process roles, the scoring host and its forwarding clients (fakes)."""

from __future__ import annotations

import functools
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fakes import FakeSpeculator
from specprefill.config import SpecPrefillConfig
from specprefill.server import pruning, shared
from specprefill.server.service import ScoringService, ScoringUnavailableError
from specprefill.server.settings import ServerSettings
from specprefill.speculator.base import Speculator

ENV = {shared.ADDRESS_ENV: "@x", shared.KEY_ENV: "00"}


# --- picklable jobs (module level, as the hooks build them) ---------------------------------------
def name_and_thread(spec: Speculator) -> tuple[str, str, int]:
    return spec.name, threading.current_thread().name, os.getpid()


def fail_with(spec: Speculator, *, error: BaseException) -> None:
    raise error


def nap(spec: Speculator, *, seconds: float) -> str:
    time.sleep(seconds)
    return "awake"


def unpicklable_result(spec: Speculator) -> Any:
    return threading.Lock()


class UnbuildableError(Exception):
    """An exception whose pickle cannot be loaded again (its __init__ wants two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def fail_unbuildable(spec: Speculator) -> None:
    raise UnbuildableError("a", "b")


# --- fixtures -------------------------------------------------------------------------------------
def settings(**kw: Any) -> ServerSettings:
    return ServerSettings(speculator="fake", **kw)


@pytest.fixture
def host() -> Iterator[shared.ScorerHost]:
    service = ScoringService(settings(), loader=lambda: FakeSpeculator(name="host-fake"))
    server = shared.ScorerHost(service)
    server.start()
    yield server
    server.close()


def client(server: shared.ScorerHost, **kw: Any) -> shared.ForwardingService:
    return shared.ForwardingService(settings(**kw), server.address, server.authkey)


# --- roles ----------------------------------------------------------------------------------------
def test_roles_host_client_and_none(caplog: pytest.LogCaptureFixture) -> None:
    role = shared.process_role
    assert role(has_parent=False, name="MainProcess", environ={}) == "host"
    assert role(has_parent=False, name="MainProcess", environ=ENV) == "host"  # a stale address is replaced
    assert role(has_parent=True, name="ApiServer_1", environ=ENV) == "client"
    assert role(has_parent=True, name="EngineCore_DP0", environ=ENV) is None
    assert role(has_parent=True, name="ApiServer_0", environ={shared.ADDRESS_ENV: "@x"}) is None
    with caplog.at_level(logging.WARNING, logger="specprefill.server"):
        assert role(has_parent=True, name="ApiServer_0", environ={}) is None
    assert "served unpruned" in caplog.text  # an API server that cannot prune says so


def test_this_process_is_a_host_and_builds_a_local_service() -> None:
    assert shared.current_role() == "host"
    assert type(shared.service_for_process(settings())) is ScoringService


def test_an_api_server_child_builds_a_forwarding_service(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setattr(multiprocessing.current_process(), "name", "ApiServer_3")
    monkeypatch.setenv(shared.ADDRESS_ENV, "@specprefill-test")
    monkeypatch.setenv(shared.KEY_ENV, "ab" * 4)
    service = shared.service_for_process(settings())
    assert isinstance(service, shared.ForwardingService) and service.address == "@specprefill-test"


def test_the_unavailable_error_keeps_its_reason_through_pickle() -> None:
    err = pickle.loads(pickle.dumps(ScoringUnavailableError("queue_full", "64 requests wait")))
    assert isinstance(err, ScoringUnavailableError) and err.reason == "queue_full" and str(err) == "64 requests wait"


# --- host and clients -----------------------------------------------------------------------------
async def test_jobs_run_on_the_hosts_speculator(host: shared.ScorerHost) -> None:
    first, second = client(host), client(host)
    a = await first.run(name_and_thread)
    b = await second.run(name_and_thread)
    assert a[:2] == b[:2] == ("host-fake", "specprefill-scoring")  # the host's worker thread, its model
    assert host.clients == 2 and sum(host.service.batches.values()) == 2
    assert first.speculator is None  # a client holds no model


async def test_score_job_of_the_hooks_gives_the_same_kept_tokens_remotely(host: shared.ScorerHost) -> None:
    ids = [ord(c) for c in "abcdefgh" * 30]
    probe = [ord(c) for c in pruning.TOKENIZER_PROBE]
    job = pruning.ScoreJob(ids=ids, probe=probe, config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8))
    remote = await client(host).run(job)
    local = job(FakeSpeculator())
    assert list(remote.kept) == list(local.kept) and len(remote.kept) < len(ids)


async def test_errors_come_back_typed(host: shared.ScorerHost) -> None:
    svc = client(host)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(functools.partial(fail_with, error=pruning.TokenizerMismatchError("other tokenizer")))
    assert info.value.reason == "error" and isinstance(info.value.__cause__, pruning.TokenizerMismatchError)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(fail_unbuildable)
    assert info.value.reason == "error" and "UnbuildableError: a/b" in str(info.value)
    with pytest.raises(ScoringUnavailableError, match="lock"):
        await svc.run(unpicklable_result)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(lambda spec: spec.name)  # a local function cannot travel: it alone fails, typed
    assert info.value.reason == "error" and "lambda" in str(info.value)
    with pytest.raises(ScoringUnavailableError, match="unreadable job"):  # pickles here, not there
        await svc.run(functools.partial(fail_with, error=UnbuildableError("a", "b")))
    assert (await svc.run(name_and_thread))[0] == "host-fake"  # the connection still serves


async def test_a_stalled_host_gives_deadline_and_the_next_job_reconnects(host: shared.ScorerHost) -> None:
    svc = client(host, deadline_seconds=0.2)
    with pytest.raises(ScoringUnavailableError) as info:
        await svc.run(functools.partial(nap, seconds=0.6))
    assert info.value.reason == "deadline"
    time.sleep(0.6)  # the host finishes the abandoned job
    svc.settings = settings(deadline_seconds=5)
    assert await svc.run(functools.partial(nap, seconds=0.0)) == "awake"
    assert host.clients == 2  # dropped after the deadline, connected again


async def test_a_full_host_queue_is_queue_full_for_the_client() -> None:
    service = ScoringService(settings(queue_size=1), loader=lambda: FakeSpeculator(name="busy"))
    server = shared.ScorerHost(service)
    server.start()
    try:
        assert service.wait_loaded(5)
        running = service.submit(functools.partial(nap, seconds=0.5)).future
        while not running.running():
            time.sleep(0.01)
        service.submit(functools.partial(nap, seconds=0.0))  # waits: the queue is full
        with pytest.raises(ScoringUnavailableError) as info:
            await client(server).run(name_and_thread)
        assert info.value.reason == "queue_full"
    finally:
        server.close()


async def test_a_host_that_failed_to_load_makes_clients_fall_back() -> None:
    def broken() -> Speculator:
        raise OSError("weights missing")

    server = shared.ScorerHost(ScoringService(settings(), loader=broken))
    server.start()
    try:
        svc = client(server)
        assert svc.wait_loaded(5) is False and "weights missing" in str(svc.load_error)
        with pytest.raises(ScoringUnavailableError) as info:
            await svc.run(name_and_thread)
        assert info.value.reason == "load_failed"
    finally:
        server.close()


async def test_a_wrong_key_or_no_host_is_load_failed(host: shared.ScorerHost) -> None:
    intruder = shared.ForwardingService(settings(), host.address, b"not the key")
    assert intruder.wait_loaded(5) is False
    with pytest.raises(ScoringUnavailableError) as info:
        await intruder.run(name_and_thread)
    assert info.value.reason == "load_failed"
    gone = shared.ForwardingService(settings(), "@specprefill-nobody-listens", b"k")
    assert gone.wait_loaded(5) is False and gone.load_error is not None
    assert (await client(host).run(name_and_thread))[0] == "host-fake"  # the host still serves


def test_start_host_exports_its_address_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared, "_host", None)
    monkeypatch.delenv(shared.ADDRESS_ENV, raising=False)
    monkeypatch.delenv(shared.KEY_ENV, raising=False)
    service = ScoringService(settings(), loader=lambda: FakeSpeculator(name="h"))
    started = shared.start_host(service)
    try:
        assert shared.start_host(service) is started
        assert os.environ[shared.ADDRESS_ENV] == started.address and started.address.startswith("@")
        assert bytes.fromhex(os.environ[shared.KEY_ENV]) == started.authkey and len(started.authkey) == 32
    finally:
        started.close()


async def test_a_clients_micro_batch_reaches_the_host_as_one_batch(host: shared.ScorerHost) -> None:
    from specprefill.server.queueing import Job

    release = threading.Event()
    svc = client(host)
    assert svc.wait_loaded(5) and host.service.wait_loaded(5)
    busy = host.service.submit(lambda spec: release.wait(30)).future  # the host's worker is busy meanwhile
    while not busy.running():
        time.sleep(0.01)
    jobs = [Job(functools.partial(nap, seconds=0.0), deadline=time.monotonic() + 30) for _ in range(3)]
    for job in jobs:
        assert job.future.set_running_or_notify_cancel()
    sender = threading.Thread(target=svc._run_batch, args=(jobs,))
    sender.start()
    deadline = time.monotonic() + 30
    while len(host.service._queue) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    sender.join(30)
    assert busy.result(30) is True and [job.future.result(30) for job in jobs] == ["awake"] * 3
    assert host.service.batches[3] == 1  # sent together, queued together, taken in one wake-up
