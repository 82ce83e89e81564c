"""The question-word channel: prompt words that the question names, weighted by how rare they are in the prompt.

A small speculator's attention often misses a sentence that shares the question's rarest words ("Which
Python versions does tinytag support?" against "Supports Python 3.7 or higher" in a long README), and
embedding retrieval misses where attention succeeds. With ``SpecPrefillConfig.lexical_weight > 0`` each
unprotected token before the question that spells a word of the question gains
``lexical_weight * peak * idf(word) / max idf``, where ``peak`` is the highest importance of any unprotected
token and ``idf`` is the word's inverse document frequency over the prompt's lines and sentences (a word on
every line weighs nothing). Selection then ranks chunks on the sum, so attention still orders everything the
question's words do not single out. English function words (:data:`STOP_WORDS`: "what", "which", "the", ...)
are no question words by default: in a manual or a licence they are rare enough to weigh as much as the
question's real terms ("what" outweighed "defusedxml" and "limit" in a README).

The question is the final paragraph of the prompt (in a chat, of the last message's content), or its last
line when it has no blank line; a prompt whose question would cover most of it gets no lexical channel. All
functions are pure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from specprefill.errors import ConfigurationError
from specprefill.prompt.segments import final_paragraph_start
from specprefill.spans import Span

__all__ = [
    "MAX_QUESTION_SHARE",
    "STOP_WORDS",
    "blend_lexical",
    "lexical_scores",
    "normal_word",
    "question_span",
    "question_word_scores",
    "with_question_words",
    "word_weights",
]

FloatArray = npt.NDArray[np.float32]

MAX_QUESTION_SHARE = 0.5
"""A "question" longer than this share of the text is no question: :func:`question_span` gives None."""

STOP_WORDS: frozenset[str] = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
    out over own same she should so some such than that the their them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you your""".split()
)
"""English function words left out of the question words (``lexical_stop_words``)."""

_WORD = re.compile(r"\w+")
_UNIT = re.compile(r"\n|(?<=[.!?])\s+")
"""Where the units that document frequencies count end: a line break, or a sentence end before white space."""


def normal_word(word: str) -> str:
    """``word`` lower-cased, without a plural ``s`` (on words of more than three letters)."""
    word = word.lower()
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


_STOP_NORMAL = frozenset(normal_word(w) for w in STOP_WORDS)
""":data:`STOP_WORDS` as :func:`normal_word` spells them ("does" -> "doe")."""


def question_span(text: str, content_spans: Sequence[Span] | None = None) -> Span | None:
    """Character span of the question: the final paragraph of the text (of the last content in a chat).

    Without a blank line the last line is the question. None when there is no text before it, or it covers
    more than :data:`MAX_QUESTION_SHARE` of the text.
    """
    lo, hi = content_spans[-1] if content_spans else (0, len(text))
    hi = lo + len(text[lo:hi].rstrip())
    start = final_paragraph_start(text, lo, hi)
    if start is None:
        start = text.rfind("\n", lo, hi) + 1 or lo
    if start <= 0 or not text[:start].strip() or hi - start > MAX_QUESTION_SHARE * len(text):
        return None
    return start, hi


def word_weights(context: str, question: str, *, stop_words: bool = False) -> dict[str, float]:
    """Each question word that occurs in ``context``, weighted by its inverse document frequency there.

    Documents are the context's lines and sentences: ``log((units + 1) / (units holding the word + 1))``. Words
    absent from the context, or present in every unit, are left out; so are :data:`STOP_WORDS` with
    ``stop_words``.
    """
    units = [u for u in _UNIT.split(context) if u.strip()]
    frequency = Counter(w for u in units for w in {normal_word(m.group()) for m in _WORD.finditer(u)})
    wanted = {normal_word(m.group()) for m in _WORD.finditer(question)}
    if stop_words:
        wanted -= _STOP_NORMAL
    weights = {w: math.log((len(units) + 1) / (frequency[w] + 1)) for w in wanted if frequency[w]}
    return {w: v for w, v in weights.items() if v > 0}


def lexical_scores(
    text: str,
    offsets: Sequence[Span],
    protected: npt.NDArray[np.bool_],
    question: Span,
    *,
    stop_words: bool = False,
) -> FloatArray:
    """``[N]``: for each unprotected token before the question, the highest weight of a question word it spells.

    Weights come from :func:`word_weights` over ``text[:question start]`` (``stop_words``: without
    :data:`STOP_WORDS`); every token that overlaps a matching word gets that word's weight; other tokens get 0.
    """
    if len(offsets) != len(protected):
        raise ConfigurationError(f"{len(offsets)} token offsets but {len(protected)} protection flags")
    start, end = question
    weights = word_weights(text[:start], text[start:end], stop_words=stop_words)
    per_char = np.zeros(start + 1, dtype=np.float32)
    for match in _WORD.finditer(text, 0, start):
        weight = weights.get(normal_word(match.group()))
        if weight:
            per_char[match.start() : match.end()] = weight
    if not len(offsets):
        return np.zeros(0, dtype=np.float32)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    lo = np.minimum(spans[:, 0], start)
    hi = np.minimum(spans[:, 1], start)
    scored = (lo < hi) & ~np.asarray(protected, dtype=np.bool_)
    # max over per_char[lo:hi] for every token at once: reduceat over the interleaved bounds, even slots only
    bounds = np.stack([lo, np.maximum(hi, lo)], axis=1).ravel()
    maxima = np.maximum.reduceat(per_char, bounds)[0::2]
    return np.where(scored, maxima, np.float32(0)).astype(np.float32)


def blend_lexical(
    importance: npt.ArrayLike, lexical: npt.ArrayLike, protected: npt.NDArray[np.bool_], weight: float
) -> FloatArray:
    """``importance + weight * peak * lexical / max(lexical)``; ``peak``: the highest unprotected importance.

    Returns ``importance`` (as float32) unchanged when ``weight`` is 0, nothing matched, or no unprotected token
    has a finite score.
    """
    imp = np.asarray(importance, dtype=np.float32)
    lex = np.asarray(lexical, dtype=np.float32)
    if imp.shape != lex.shape or imp.shape != protected.shape:
        raise ConfigurationError(f"importance {imp.shape}, lexical {lex.shape} and protected {protected.shape} differ")
    free = imp[~protected]
    free = free[np.isfinite(free)]  # a wire reply may carry NaN for tokens it did not score
    top = float(lex.max(initial=0.0))
    if weight <= 0 or top <= 0 or not free.size:
        return imp
    return (imp + np.float32(weight * float(free.max()) / top) * lex).astype(np.float32)


def question_word_scores(
    text: str | None,
    offsets: Sequence[Span] | None,
    protected: npt.NDArray[np.bool_],
    content_spans: Sequence[Span] | None = None,
    *,
    stop_words: bool = False,
) -> FloatArray | None:
    """:func:`lexical_scores` of the prompt's question (:func:`question_span`); None without text or a question."""
    if not text or not offsets:
        return None
    question = question_span(text, content_spans)
    if question is None:
        return None
    return lexical_scores(text, offsets, protected, question, stop_words=stop_words)


def with_question_words(
    importance: npt.ArrayLike,
    text: str | None,
    offsets: Sequence[Span] | None,
    protected: npt.NDArray[np.bool_],
    weight: float,
    content_spans: Sequence[Span] | None = None,
    *,
    words: FloatArray | None = None,
    stop_words: bool = False,
) -> FloatArray:
    """The importance selection ranks: ``importance`` with the question-word channel blended in at ``weight``.

    Unchanged (as float32) for a prompt without text (token ids), without a question (:func:`question_span`),
    or with ``weight`` 0. ``words``: :func:`question_word_scores` when the caller already has it (else it is
    computed here, ``stop_words`` as there).
    """
    if weight <= 0:
        return np.asarray(importance, dtype=np.float32)
    if words is None:
        words = question_word_scores(text, offsets, protected, content_spans, stop_words=stop_words)
    if words is None:
        return np.asarray(importance, dtype=np.float32)
    return blend_lexical(importance, words, protected, weight)
