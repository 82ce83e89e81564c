"""Token counting with tiktoken, including the offline case (no BPE table cached, no internet)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from specprefill.errors import BackendUnavailableError

tiktoken = pytest.importorskip("tiktoken", reason='needs tiktoken: pip install "specprefill[openai]"')

from specprefill import tokencount  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    tokencount.get_encoding.cache_clear()
    yield
    tokencount.get_encoding.cache_clear()


def byte_encoding() -> object:
    """A real tiktoken Encoding built locally: one token per byte (no download needed)."""
    return tiktoken.Encoding(
        name="bytes-only",
        pat_str=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )


def test_count_tokens_with_a_given_encoding():
    enc = byte_encoding()
    assert tokencount.count_tokens("hello", encoding=enc) == 5
    assert tokencount.count_tokens("naïve 東京", encoding=enc) == len("naïve 東京".encode())
    # special-token text is counted as plain text, not rejected
    assert tokencount.count_tokens("<|endoftext|>", encoding=enc) == len("<|endoftext|>")
    assert tokencount.count_tokens("", encoding=enc) == 0


def test_cache_file_name_follows_tiktoken():
    url, key = tokencount.tiktoken_cache_filename("o200k_base")
    assert url.endswith("/o200k_base.tiktoken")
    assert key == hashlib.sha1(url.encode()).hexdigest()
    assert tokencount.tiktoken_cache_filename("p50k_edit")[0].endswith("/p50k_base.tiktoken")


def test_missing_table_raises_with_instructions(monkeypatch: pytest.MonkeyPatch, tmp_path):
    import tiktoken.load

    def offline(blobpath: str) -> bytes:
        raise ConnectionError(f"cannot download {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier in this process
    with pytest.raises(BackendUnavailableError) as info:
        tokencount.count_tokens("hello", model="gpt-4o")
    message = str(info.value)
    _, key = tokencount.tiktoken_cache_filename("o200k_base")
    assert "TIKTOKEN_CACHE_DIR" in message and "o200k_base" in message
    assert str(tmp_path / key) in message


def test_unknown_models_use_o200k(monkeypatch: pytest.MonkeyPatch):
    seen: list[str] = []

    def fake_get_encoding(name: str) -> object:
        seen.append(name)
        return byte_encoding()

    monkeypatch.setattr(tiktoken, "get_encoding", fake_get_encoding)
    assert tokencount.count_tokens("abc", model="some-local-llama") == 3
    assert tokencount.count_tokens("abc", model="gpt-3.5-turbo") == 3
    assert tokencount.count_tokens("abc", model="cl100k_base") == 3
    assert seen == ["o200k_base", "cl100k_base", "cl100k_base"]


def test_real_o200k_table_when_available():
    try:
        enc = tokencount.get_encoding("gpt-4o")
    except BackendUnavailableError as exc:
        pytest.skip(f"tiktoken's o200k_base table is not available offline here: {exc}")
    assert tokencount.count_tokens("hello world", encoding=enc) == 2
    assert tokencount.count_tokens("hello world", model="gpt-4o") == 2
