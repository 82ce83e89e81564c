"""Chat messages: validation, where each content sits in the template rendering, and cutting them down."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from specprefill.errors import EmptyPromptError, PromptError
from specprefill.prompt.prepared import scrub_surrogates
from specprefill.result import Message
from specprefill.spans import Span, cut_spans, join_spans

__all__ = [
    "cut_messages",
    "locate_contents",
    "locate_contents_by_template",
    "message_text",
    "plain_chat",
    "validate_messages",
]


def message_text(message: Message) -> str:
    """The text of a message's content (a string, or a list of ``{"type": "text", "text": ...}`` parts)."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise PromptError(
                    f"unsupported message content part {part!r}: only text parts can be pruned; "
                    "send images and other parts to the base model directly"
                )
        return "".join(parts)
    raise PromptError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def validate_messages(messages: Sequence[Any]) -> list[Message]:
    """Check chat messages and return them as plain dicts with string content.

    Raises:
        EmptyPromptError: No messages, or every message is empty.
        PromptError: A message is not a ``{"role", "content"}`` mapping.

    """
    if len(messages) == 0:
        raise EmptyPromptError("the message list is empty; pass at least one {'role': 'user', 'content': ...}")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PromptError(f"message {i} must be a dict with a string 'role' and a 'content', got {m!r:.80}")
        out.append({**m, "role": scrub_surrogates(m["role"]), "content": scrub_surrogates(message_text(m))})
    if not any(m["content"].strip() for m in out):
        raise EmptyPromptError("every message is empty; give the model something to read")
    return out


def locate_contents(rendered: str, contents: Sequence[str]) -> list[Span]:
    """Find each message content, in order, inside the chat-template rendering.

    Templates sometimes strip white space around contents, so a stripped match is tried too. A content
    that cannot be found gets the empty span ``(p, p)`` at the cursor (it is then treated as template).
    """
    spans: list[Span] = []
    cursor = 0
    for content in contents:
        for candidate in (content, content.strip()):
            pos = rendered.find(candidate, cursor) if candidate else -1
            if pos >= 0:
                spans.append((pos, pos + len(candidate)))
                cursor = pos + len(candidate)
                break
        else:
            spans.append((cursor, cursor))
    return spans


def locate_contents_by_template(
    rendered: str, messages: Sequence[Message], render: Callable[[list[Message]], str]
) -> list[Span]:
    """Exact content spans, found by rendering the chat again with a unique placeholder per content.

    The placeholder rendering gives the template text around every content, so a content that also occurs
    in the template (``"user"``, words of a default system prompt) is not mistaken for it. Falls back to
    :func:`locate_contents` when the template treats placeholders differently from the real contents.
    """
    contents = [str(m["content"]) for m in messages]
    sentinels = [f"\ue000specprefill{i}\ue001" for i in range(len(messages))]
    try:
        skeleton = render([{**m, "content": tag} for m, tag in zip(messages, sentinels, strict=True)])
    except Exception:  # any template failure: fall back to searching the rendering
        skeleton = ""
    spans = _match_skeleton(rendered, contents, skeleton, sentinels) if skeleton else None
    return spans if spans is not None else locate_contents(rendered, contents)


def _match_skeleton(
    rendered: str, contents: Sequence[str], skeleton: str, sentinels: Sequence[str]
) -> list[Span] | None:
    pieces: list[str] = []
    rest = skeleton
    for tag in sentinels:
        if skeleton.count(tag) != 1 or tag not in rest:
            return None
        head, rest = rest.split(tag, 1)
        pieces.append(head)
    pieces.append(rest)
    spans: list[Span] = []
    cursor = 0
    for i, content in enumerate(contents):
        if not rendered.startswith(pieces[i], cursor):
            return None
        cursor += len(pieces[i])
        for candidate in (content, content.strip(), content.lstrip(), content.rstrip()):
            end = cursor + len(candidate)
            if rendered.startswith(candidate, cursor) and rendered.startswith(pieces[i + 1], end):
                spans.append((cursor, end))
                cursor = end
                break
        else:
            return None
    return spans if rendered[cursor:] == pieces[-1] else None


def plain_chat(messages: Sequence[Message]) -> str:
    """A neutral chat layout for models without a chat template: ``Role: content`` blocks, then ``Assistant:``."""
    blocks = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*blocks, "Assistant:"])


def cut_messages(
    messages: list[Message], content_spans: list[Span], kept: list[Span], text: str, marker: str
) -> list[Message]:
    """Each message with its content cut down to the kept spans of the rendered ``text`` (joined with ``marker``).

    A message whose content was not found in the rendering (empty window) is passed on unpruned.
    """
    out: list[Message] = []
    for m, window in zip(messages, content_spans, strict=True):
        if window[0] == window[1]:
            # not found in the rendering (the template rewrote or dropped it): pass it on unpruned
            out.append(dict(m))
            continue
        content = text[window[0] : window[1]]
        local = cut_spans(kept, window)
        new = content if local == [(0, len(content))] else join_spans(content, local, marker)
        out.append({**m, "content": new})
    return out
