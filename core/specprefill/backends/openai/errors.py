"""Typed errors for failures of the ``openai`` client: each message names the server and the fix."""

from __future__ import annotations

from typing import Any

from specprefill.errors import BackendError

__all__ = ["translate_openai_error"]


def translate_openai_error(
    openai: Any,
    exc: BaseException,
    doing: str,
    base_url: str,
    model: str | None,
    timeout: float | None,
    deadline: Any = None,
) -> BackendError:
    """The :class:`BackendError` for an ``openai`` exception raised while ``doing`` something.

    Args:
        openai: The ``openai`` module.
        exc: The exception.
        doing: What was going on (``"generating"``, ``"listing models"``).
        base_url: The server.
        model: The model name asked for (None: not known).
        timeout: The per-attempt silence limit, for the timeout message.
        deadline: The request's :class:`~specprefill.backends.retry.Deadline`, if any.

    Returns:
        The error to raise (``from exc``).

    """
    if deadline is not None and deadline.expired():
        return deadline.error(base_url, doing)  # type: ignore[no-any-return]
    if isinstance(exc, openai.APITimeoutError):
        return BackendError(
            f"the OpenAI-compatible server at {base_url} timed out while {doing} (timeout={timeout}s without "
            "an answer); raise timeout=... or check the server load"
        )
    if isinstance(exc, openai.APIConnectionError):
        return BackendError(
            f"cannot reach the OpenAI-compatible server at {base_url} while {doing} ({str(exc).rstrip('.')}). "
            "Is the server running, and is base_url right (it usually ends in /v1)?"
        )
    if isinstance(exc, openai.AuthenticationError):
        return BackendError(
            f"the server at {base_url} rejected the API key ({exc.status_code}); pass api_key=... or set OPENAI_API_KEY"
        )
    if isinstance(exc, openai.NotFoundError):
        return BackendError(
            f"the server at {base_url} answered 404 while {doing}: {_message(exc).rstrip('.')}. "
            f"Check the model name ({model!r}) and that base_url ends in /v1"
        )
    if isinstance(exc, openai.APIStatusError):
        return BackendError(f"the server at {base_url} answered {exc.status_code} while {doing}: {_message(exc)}")
    if isinstance(exc, (openai.APIResponseValidationError, ValueError)):
        return BackendError(
            f"the server at {base_url} sent a reply that is not valid OpenAI JSON while {doing} "
            f"({type(exc).__name__}: {exc})"
        )
    return BackendError(f"the OpenAI client failed while {doing} ({base_url}): {exc}")


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", exc))
