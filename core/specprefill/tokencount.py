"""Token counts for OpenAI-tokenizer models with ``tiktoken``.

tiktoken downloads its BPE tables on first use and caches them. Offline machines need the file placed in
a cache folder beforehand: set ``TIKTOKEN_CACHE_DIR`` to a folder holding the table under the name
``sha1(<download URL>)`` (see :func:`tiktoken_cache_filename`). When the table can be neither read nor
downloaded, :class:`~specprefill.errors.BackendUnavailableError` says exactly which file to provide.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import Any

from specprefill._deps import require
from specprefill.errors import BackendUnavailableError

__all__ = ["DEFAULT_ENCODING", "count_tokens", "get_encoding", "tiktoken_cache_filename"]

DEFAULT_ENCODING = "o200k_base"
"""Encoding used for models tiktoken does not know (the GPT-4o / o-series table)."""

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"
_FILES = {
    "o200k_base": "o200k_base.tiktoken",
    "o200k_harmony": "o200k_base.tiktoken",
    "cl100k_base": "cl100k_base.tiktoken",
    "p50k_base": "p50k_base.tiktoken",
    "p50k_edit": "p50k_base.tiktoken",
    "r50k_base": "r50k_base.tiktoken",
}


def tiktoken_cache_filename(encoding_name: str) -> tuple[str, str]:
    """Download URL of an encoding's BPE table and the file name tiktoken looks for in its cache folder.

    Args:
        encoding_name: e.g. ``"o200k_base"``.

    Returns:
        ``(url, cache_file_name)``; the cache file name is the SHA-1 of the URL.

    """
    url = _BLOB + _FILES.get(encoding_name, f"{encoding_name}.tiktoken")
    return url, hashlib.sha1(url.encode()).hexdigest()


def _encoding_name(tiktoken: Any, model: str) -> str:
    try:
        return str(tiktoken.encoding_name_for_model(model))
    except KeyError:
        return DEFAULT_ENCODING


@functools.lru_cache(maxsize=16)
def get_encoding(model: str = "gpt-4o") -> Any:
    """The tiktoken encoding for an OpenAI model name (``o200k_base`` for names tiktoken does not know).

    Args:
        model: OpenAI model name such as ``"gpt-4o"`` or ``"gpt-3.5-turbo"``, or an encoding name such as
            ``"cl100k_base"``.

    Returns:
        A ``tiktoken.Encoding``.

    Raises:
        BackendUnavailableError: tiktoken is not installed, or its BPE table is neither cached nor
            downloadable; the message names the file to put into ``TIKTOKEN_CACHE_DIR``.

    """
    tiktoken = require("tiktoken", extra="openai")
    name = model if model in _FILES else _encoding_name(tiktoken, model)
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:
        url, key = tiktoken_cache_filename(name)
        cache = (
            os.environ.get("TIKTOKEN_CACHE_DIR")
            or os.environ.get("DATA_GYM_CACHE_DIR")
            or os.path.join(tempfile.gettempdir(), "data-gym-cache")
        )
        raise BackendUnavailableError(
            f"tiktoken cannot load the {name!r} table for model {model!r} ({type(exc).__name__}: {exc}). "
            f"On a machine without internet, download {url} elsewhere, save it as {os.path.join(cache, key)} "
            "and set TIKTOKEN_CACHE_DIR to that folder (the file name is the SHA-1 of the URL)"
        ) from exc


def count_tokens(text: str, model: str = "gpt-4o", *, encoding: Any = None) -> int:
    """Number of tokens ``text`` takes for an OpenAI model.

    Special-token strings (``<|endoftext|>``) in the text are counted as ordinary text.

    Args:
        text: The text to count.
        model: OpenAI model name (tiktoken's ``encoding_for_model``; ``o200k_base`` if unknown).
        encoding: A ready ``tiktoken.Encoding`` to use instead of looking one up by ``model``.

    Returns:
        The token count.

    Raises:
        BackendUnavailableError: tiktoken or its BPE table is not available (see :func:`get_encoding`).

    """
    enc = encoding if encoding is not None else get_encoding(model)
    return len(enc.encode(text, disallowed_special=()))
