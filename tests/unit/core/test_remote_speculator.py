"""RemoteSpeculator against the real middleware in memory (fake service, fake speculator), and its typed errors."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from fakes import BosSpeculator
from remote_fakes import (
    FakeService,
    asgi_transport,
    async_asgi_transport,
    failing_transport,
    middleware,
    raw_transport,
)
from specprefill import SpecPrefillConfig
from specprefill.errors import PromptError, SpeculatorError
from specprefill.prompt.messages import plain_chat
from specprefill.prompt.passages import Passage, prune_passages
from specprefill.speculator.remote import (
    RemoteConnectionError,
    RemoteProtocolError,
    RemoteRequestError,
    RemoteResponseError,
    RemoteSpeculator,
)

CFG = SpecPrefillConfig(chunk_size=4, lookahead=1, min_prompt_tokens=0, gap_marker="|", keep_rate=0.3)
TEXT = "some filler text here. The KEY FACT is HERE. more filler text follows and ends."
PASSAGES = [
    Passage("filler words and more filler words. The BRIDGE opened in EIGHTEEN TWELVE. filler."),
    Passage("nothing to see in this passage at all, only lower case words here."),
    Passage("another passage with a NAME in it and some trailing words.", protected=((0, 7),)),
]


def local() -> BosSpeculator:
    return BosSpeculator(template=plain_chat)


def remote(service: FakeService | None = None) -> RemoteSpeculator:
    app = middleware(service or FakeService(local()))
    return RemoteSpeculator(
        "http://server:8000/v1", timeout=5, transport=asgi_transport(app), async_transport=async_asgi_transport(app)
    )


def test_prune_equals_in_process_prune() -> None:
    client = remote()
    got = client.prune(TEXT, CFG)
    want = local().prune(TEXT, CFG)
    assert np.array_equal(got.kept_indices, want.kept_indices)
    assert got.text == want.text and got.kept_spans == want.kept_spans
    assert got.stats.tokens_in == want.stats.tokens_in and got.stats.speculator == "char-fake"
    assert client.name == "char-fake" and client.url == "http://server:8000/specprefill/v1/prune"


def test_the_client_config_travels_to_the_server() -> None:
    svc = FakeService(local(), config={"chunk_size": 64, "min_prompt_tokens": 10_000})
    scored = remote(svc).score_prompt(TEXT, CFG)
    assert scored.importance is not None  # the client's min_prompt_tokens=0 won over the server's 10_000


def test_prune_passages_equals_in_process() -> None:
    got = remote().prune_passages(PASSAGES, "When did the bridge open?", CFG, min_tokens_per_passage=4)
    want = prune_passages(local(), PASSAGES, "When did the bridge open?", CFG, min_tokens_per_passage=4)
    assert [o.text for o in got.passages] == [o.text for o in want.passages]
    assert got.passages == want.passages
    assert np.array_equal(got.result.kept_indices, want.result.kept_indices)
    assert "EIGHTEEN TWELVE" in got.passages[0].text and got.passages[2].text.startswith("another")


async def test_async_prune_passages_equals_in_process() -> None:
    got = await remote().aprune_passages(PASSAGES, "When did the bridge open?", CFG)
    want = prune_passages(local(), PASSAGES, "When did the bridge open?", CFG)
    assert got.passages == want.passages
    scored = await remote().ascore_prompt(TEXT, CFG)
    assert scored.n_tokens == local().score_prompt(TEXT, CFG).n_tokens


def test_unavailable_server_keeps_every_passage_and_flags_it() -> None:
    pruned = remote(FakeService(local(), fail="queue_full")).prune_passages(PASSAGES, "q?", CFG)
    assert [o.text for o in pruned.passages] == [p.text for p in PASSAGES]
    assert pruned.result.stats.fallback is True and "queue_full" in (pruned.result.stats.fallback_reason or "")
    with pytest.raises(RemoteResponseError) as info:
        remote(FakeService(local(), fail="queue_full")).prune_passages(
            PASSAGES, "q?", CFG.with_overrides(fallback_on_error=False)
        )
    assert info.value.status == 503


def test_connection_failure_is_typed_and_falls_back_for_passages() -> None:
    client = RemoteSpeculator("http://nowhere:1", transport=failing_transport(httpx.ConnectError("refused")))
    with pytest.raises(RemoteConnectionError, match="did not answer"):
        client.score_prompt(TEXT, CFG)
    pruned = client.prune_passages(PASSAGES, "q?", CFG)
    assert pruned.result.stats.fallback is True and pruned.passages[0].text == PASSAGES[0].text


async def test_async_connection_failure_is_typed() -> None:
    client = RemoteSpeculator("http://nowhere:1", async_transport=failing_transport(httpx.ReadTimeout("slow")))
    with pytest.raises(RemoteConnectionError, match="ReadTimeout"):
        await client.ascore_prompt(TEXT, CFG)


def test_a_400_is_a_request_error_and_a_prompt_error_and_never_falls_back() -> None:
    error = json.dumps({"error": {"message": "prompt is empty", "type": "invalid_request_error"}}).encode()
    client = RemoteSpeculator("http://s", transport=raw_transport(400, error))
    with pytest.raises(RemoteRequestError, match="prompt is empty") as info:
        client.prune_passages(PASSAGES, "q?", CFG)
    assert isinstance(info.value, PromptError) and info.value.status == 400
    assert info.value.error_type == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "content", "error"),
    [
        (500, b"<html>Internal Server Error</html>", RemoteResponseError),
        (404, b'{"detail": "Not Found"}', RemoteResponseError),
        (200, b"", RemoteProtocolError),
        (200, b'{"text": "abc", "kept_spans": [[0, 3]], "stats": {"tokens_in": 3', RemoteProtocolError),
        (200, b"not json", RemoteProtocolError),
        (200, b'{"text": "abc"}', RemoteProtocolError),
        (200, b'{"text": "abc", "kept_spans": [[0, 3]], "stats": {}}', RemoteProtocolError),
    ],
)
def test_bad_replies_are_typed_errors(status: int, content: bytes, error: type[Exception]) -> None:
    client = RemoteSpeculator("http://s", transport=raw_transport(status, content))
    with pytest.raises(error):
        client.score_prompt(TEXT, CFG)


def test_a_fallback_reply_without_scores_is_not_taken_for_scores() -> None:
    reply = {
        "text": TEXT,
        "kept_spans": [[0, len(TEXT)]],
        "stats": {
            "tokens_in": 0,
            "tokens_kept": 0,
            "keep_ratio": 1.0,
            "speculator_seconds": 0.0,
            "positions": "none",
            "fallback": True,
            "fallback_reason": "deadline",
            "pruned": False,
        },
        "scored": None,
    }
    client = RemoteSpeculator("http://s", transport=raw_transport(200, json.dumps(reply).encode()))
    with pytest.raises(RemoteProtocolError, match="deadline"):
        client.score_prompt(TEXT, CFG)


def test_api_key_is_sent_as_bearer() -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(401, json={"error": {"message": "Unauthorized", "type": "authentication_error"}})

    client = RemoteSpeculator("http://s", api_key="k1", transport=httpx.MockTransport(handle))
    with pytest.raises(RemoteResponseError) as info:
        client.score_prompt(TEXT, CFG)
    assert seen == ["Bearer k1"] and info.value.status == 401


@pytest.mark.parametrize("url", ["", "server:8000", "ftp://x", None])
def test_base_url_must_be_http(url: object) -> None:
    with pytest.raises(SpeculatorError, match="base_url"):
        RemoteSpeculator(url)  # type: ignore[arg-type]
