"""Request checks every in-process backend shares: token-form validation and text tokenising."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from specprefill.backends.base import BaseRequest, PositionMode
from specprefill.errors import EmptyPromptError, PromptError
from specprefill.prompt.messages import plain_chat, validate_messages

__all__ = ["TokenRequest", "tokenize_request_text", "validate_token_request"]


@dataclass(frozen=True)
class TokenRequest:
    """A checked token-form request."""

    ids: list[int]
    positions: list[int]
    original_length: int
    """Where decoding continues (the original prompt length)."""
    mode: PositionMode
    """``"full"`` for the whole prompt at ``0..N-1``, else ``"original"``."""


def validate_token_request(request: BaseRequest, vocab_size: int | None) -> TokenRequest:
    """Check a token-form request once: ids in the vocabulary, positions increasing, a valid length.

    Args:
        request: A request with ``token_ids`` set.
        vocab_size: Every id must be below this (None: not checked).

    Returns:
        The checked :class:`TokenRequest`.

    Raises:
        EmptyPromptError: No token ids.
        PromptError: Ids outside the vocabulary, or positions that do not fit the ids.

    """
    ids = [int(t) for t in request.token_ids or ()]
    if not ids:
        raise EmptyPromptError("the request has no token ids; nothing to prefill")
    if vocab_size is not None:
        bad = [t for t in ids if t < 0 or t >= vocab_size]
        if bad:
            raise PromptError(
                f"token ids {bad[:5]} are outside the base vocabulary [0, {vocab_size}); the speculator uses "
                "another tokenizer, so send text or messages instead"
            )
    positions = list(range(len(ids))) if request.position_ids is None else [int(p) for p in request.position_ids]
    if len(positions) != len(ids):
        raise PromptError(f"{len(ids)} token ids but {len(positions)} position ids; they must match")
    if positions[0] < 0 or any(b <= a for a, b in itertools.pairwise(positions)):
        raise PromptError("position_ids must be non-negative and strictly increasing")
    original = int(request.original_length) if request.original_length is not None else positions[-1] + 1
    if original <= positions[-1]:
        raise PromptError(f"original_length={original} must be greater than the last position id {positions[-1]}")
    full = original == len(ids) and positions == list(range(len(ids)))
    return TokenRequest(ids, positions, original, "full" if full else "original")


def tokenize_request_text(tokenizer: Any, request: BaseRequest, model_name: str) -> list[int]:
    """Token ids of a text/messages request with the base's own tokenizer (chat template for messages).

    Args:
        tokenizer: A transformers-style tokenizer (callable, ``apply_chat_template``), or None.
        request: A request with ``messages`` or ``text``.
        model_name: For error messages.

    Returns:
        The non-empty token ids.

    Raises:
        EmptyPromptError: Nothing to tokenise.
        PromptError: No tokenizer, the chat template rejected the messages, or the request is empty.

    """
    if tokenizer is None:
        raise PromptError(f"the base {model_name!r} has no tokenizer; send token ids instead of text")
    if request.messages is not None:
        messages = validate_messages(request.messages)
        if getattr(tokenizer, "chat_template", None):
            try:
                rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:
                raise PromptError(f"the chat template of {model_name!r} rejected the messages: {exc}") from exc
            ids = tokenizer(str(rendered), add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(plain_chat(messages), add_special_tokens=True)["input_ids"]
    elif request.text is not None:
        if not request.text.strip():
            raise EmptyPromptError("the prompt text is empty; give the model something to read")
        ids = tokenizer(request.text, add_special_tokens=True)["input_ids"]
    else:
        raise PromptError("the request has neither token_ids, text nor messages")
    out = [int(t) for t in ids]
    if not out:
        raise EmptyPromptError("the prompt tokenised to nothing; give the model some text")
    return out
