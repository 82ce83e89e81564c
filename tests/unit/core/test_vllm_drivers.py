"""The vLLM drivers' plumbing with a fake engine (hermetic: no vLLM needed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from specprefill.backends.vllm_drivers import AsyncDriver


class FakeAsyncLLM:
    """Yields the prompt's words one by one; fails on the word "boom"."""

    async def generate(self, prompt: dict[str, Any], params: Any, request_id: str) -> AsyncIterator[str]:
        for word in prompt["text"].split():
            await asyncio.sleep(0)
            if word == "boom":
                raise RuntimeError("engine failed")
            yield word

    def shutdown(self) -> None:
        pass


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Any:
    async def create(engine_args: Any) -> FakeAsyncLLM:
        return FakeAsyncLLM()

    monkeypatch.setattr(AsyncDriver, "_create", staticmethod(create))
    d = AsyncDriver(engine_args=None)
    yield d
    d.close()


def test_run_streams_outputs_from_any_thread(driver: AsyncDriver) -> None:
    results: list[list[str]] = []
    worker = threading.Thread(target=lambda: results.append(list(driver.run({"text": "a b c"}, None))))
    worker.start()
    worker.join(timeout=10)
    assert results == [["a", "b", "c"]]


def test_run_hands_engine_errors_to_the_caller(driver: AsyncDriver) -> None:
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="engine failed"):
        for item in driver.run({"text": "a boom c"}, None):
            seen.append(item)
    assert seen == ["a"]


async def test_arun_streams_to_another_loop(driver: AsyncDriver) -> None:
    assert [x async for x in driver.arun({"text": "x y"}, None)] == ["x", "y"]
    with pytest.raises(RuntimeError, match="engine failed"):
        _ = [x async for x in driver.arun({"text": "boom"}, None)]
