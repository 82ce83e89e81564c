"""The one configuration object for pruning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from typing_extensions import Self

from specprefill.errors import ConfigurationError

__all__ = ["SpecPrefillConfig"]


class SpecPrefillConfig(BaseModel):
    """How a prompt is scored and pruned.

    Defaults are the paper's "Full LAH" scoring (chunks of 32 tokens, look-ahead 8, pooling kernel 13) plus
    the queries of the last 32 prompt tokens (within the final paragraph, usually the question) reduced by
    max, only the 16 best heads of the speculator's retrieval-head profile, a chunk grid that restarts at
    sentence boundaries and a light chunk context (``chunk_context=8``, ``context_weight=0.3``), with
    ``keep_rate=0.3``. The full-preset evaluations (``examples/report/full-retention``,
    ``examples/report/full-defaults``, ``examples/report/full-heads``) show the window and the grid win at
    every keep rate; the chunk context, the retrieval heads and the final-paragraph window stay within 1-2
    points there and keep the facts of the README demo question and of 14 of the 16 RAG example questions
    (``python -m benchmarks.rag_examples``). :meth:`paper` is the paper's exact algorithm. Invalid values
    raise :class:`~specprefill.errors.ConfigurationError` (a ``ValueError``) that says which field to fix.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    keep_rate: float = Field(default=0.3, gt=0.0, le=1.0)
    """Fraction of the prunable chunks to keep, in (0, 1]; ``ceil(keep_rate * n_chunks)`` chunks are kept."""

    chunk_size: int = Field(default=32, ge=1, le=4096)
    """Tokens per contiguous chunk; chunks are kept or dropped whole."""

    lookahead: int = Field(default=4, ge=1, le=64)
    """Queries used for scoring: the last prompt token plus ``lookahead - 1`` greedily decoded tokens (the
    paper's preset uses 8; with the observation window, 4 kept as many answers on real prose for about a
    sixth less scoring time)."""

    pool_kernel: int = Field(default=13, ge=1, le=1025)
    """Odd kernel of the 1-D average pooling that smooths each attention row (1 disables smoothing)."""

    observation_window: int = Field(default=32, ge=0, le=4096)
    """Also score with the queries of the last W prompt tokens, captured in the same prefill (0: none).

    Each window query attends only to prompt keys at or before its own position (causal mask). The last
    prompt token counts once; with ``lookahead=1`` only the window queries are used.
    """

    window_in_final_paragraph: bool = True
    """Take window queries only from the prompt's final paragraph (after its last blank line; in a chat,
    within the last message) and the chat template after it, when that is shorter than the window: it is
    usually the question, while queries of context tokens mostly attend to their own neighbours and lift
    them above the answer. False: the last ``observation_window`` tokens, whatever they are."""

    query_reduction: str = "max"
    """How the queries' scores combine after the max over layers x heads: ``mean``, ``max``, ``mix`` (a
    ``query_mix`` blend), or any name added with :func:`specprefill.scoring.reduce.register_reduction`."""

    query_mix: float = Field(default=0.5, ge=0.0, le=1.0)
    """Weight of the max in ``query_reduction="mix"``: ``query_mix * max + (1 - query_mix) * mean``."""

    retrieval_heads: int = Field(default=16, ge=0, le=65536)
    """Score with only the k heads of the speculator's retrieval-head profile that best find the asked-about
    sentence (0: every head, as the paper). Without a profile for the speculator every head is used; see
    :mod:`specprefill.speculator.heads` and ``specprefill heads --speculator NAME``."""

    max_kept_tokens: int | None = Field(default=None, ge=1)
    """Absolute cap on kept (unprotected) tokens, applied together with ``keep_rate``."""

    min_prompt_tokens: int = Field(default=256, ge=0)
    """Prompts shorter than this many speculator tokens are passed through unpruned."""

    segment_by: Literal["none", "messages", "paragraphs", "sentences"] = "sentences"
    """Where the chunk grid restarts ("none": the paper's grid from token 0). "messages": at every message
    content's start and end; "paragraphs": also after blank lines; "sentences": also after ``.``/``!``/``?``
    before white space and CJK ``。！？`` (a single line break is no boundary: hard-wrapped text). With any
    segments (these, or passages given to ``prune(segments=...)``) no chunk crosses a boundary and the
    budget counts tokens, not chunks (see :func:`specprefill.scoring.select_chunks`)."""

    chunk_context: int = Field(default=8, ge=0, le=4096)
    """Tokens on each side of a chunk whose importance also counts toward its score (0: the paper's chunk mean).

    A chunk then scores ``(1 - context_weight) * its mean + context_weight * the highest importance within
    this many tokens around it``, so a value sitting just after the words the question names ("175 degrees"
    after "saffron") ranks higher.
    """

    context_weight: float = Field(default=0.3, gt=0.0, le=1.0)
    """Share of the neighbourhood peak in a chunk's score when ``chunk_context > 0`` (0.5: the midpoint)."""

    coverage: float = Field(default=0.0, ge=0.0, le=1.0)
    """Coverage of several facts: each kept chunk lowers the scores of the chunks within ``coverage_radius``
    tokens of it by this share, so the next picks prefer another high-scoring region (0: the plain ranking)."""

    coverage_radius: int = Field(default=128, ge=1)
    """Tokens around a kept chunk whose chunks ``coverage`` lowers."""

    complete_tokens: int = Field(default=16, ge=0, le=4096)
    """Sentence completion (segment grids): each kept chunk also keeps up to this many tokens after it - the
    rest of its sentence, or, when it ends its sentence, the start of the next (the line after a question or
    heading) - and before it, back to its sentence start (0: off). The budget stays exact."""

    complete_next: Literal["any", "short"] = "any"
    """When a kept chunk ends its sentence, which sentences completion continues into the next one after:
    ``"any"`` - every sentence (the sentence after an option's description often holds its default: "This
    defaults to 250."); ``"short"`` - only a sentence of at most ``complete_tokens`` tokens (a heading, a label,
    a question line), the rule before version 2 of the ``real_prose`` benchmark."""

    complete_share: float = Field(default=0.25, gt=0.0, le=1.0)
    """Most of the token budget that sentence completion may use, counted beyond the budget's first 64 tokens
    (:data:`~specprefill.scoring.select.COMPLETION_RESERVE`, which go to whole chunks); the rest goes to whole
    chunks."""

    lexical_weight: float = Field(default=0.5, ge=0.0, le=100.0)
    """Question-word channel (:mod:`specprefill.scoring.lexical`): a token before the question that spells one
    of the question's words gains up to this share of the peak importance, by the word's rarity in the prompt
    (its inverse frequency over lines and sentences), so a sentence naming the question's rare words ranks high
    even where the speculator's attention missed it (0: attention alone, as in the paper)."""

    lexical_stop_words: bool = True
    """Leave English function words ("what", "which", "the", ... :data:`~specprefill.scoring.lexical.STOP_WORDS`)
    out of the question words: rare in a manual or a licence, they otherwise weigh as much as the question's
    real terms (False: every word of the question counts)."""

    lexical_fusion: int = Field(default=9, ge=0, le=100_000)
    """Rank fusion with the question-word channel (needs ``lexical_weight > 0``): chunks rank by ``1 / (k +
    rank by the blended importance) + 1 / (k + rank by the question words alone)``, ranks from 1 and ``k`` this
    value; both channels score chunks with the same chunk context, and a chunk without a question word in it or
    within ``chunk_context`` tokens of it gets only the first term. The chunks that best match the question's
    rare words then compete on rank with attention's best, where the blend alone lets the region attention
    favours most take the budget: on two-fact questions the second fact is often there (0: the blended
    ranking alone)."""

    protect_template: bool = True
    """For chat messages: never drop chat-template tokens (role markers, separators)."""

    protect_system_tokens: int | None = Field(default=None, ge=0)
    """For chat messages: protect the first N tokens of each system message (None: all of it; 0: none)."""

    protect_question_tokens: int | None = Field(default=256, ge=0)
    """For chat messages: protect the question, the final paragraph of the final user message (after its last
    blank line; all of it without one), at most its last N tokens (None: the whole message; 0: none)."""

    protected_count_toward_budget: bool = False
    """If true, protected tokens use up the ``keep_rate`` / ``max_kept_tokens`` budget."""

    max_speculator_tokens: int | None = Field(default=None, ge=64)
    """Longest input the speculator scores at once (default: its context window); longer prompts go in windows."""

    window_query_tokens: int = Field(default=512, ge=1)
    """In windowed scoring, how many final prompt tokens (the question) every window also sees."""

    gap_marker: str = " … "
    """Placed between non-adjacent kept spans in ``PruneResult.text`` (the text sent to other tokenizers)."""

    fallback_on_error: bool = True
    """If the speculator fails, send the full prompt (with a warning and ``stats.fallback=True``) instead of failing."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from exc

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Validate a mapping (e.g. parsed JSON/TOML) into a config; errors are ``ConfigurationError``."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            _reraise(exc)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Validate a JSON document into a config; errors are ``ConfigurationError``."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            _reraise(exc)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigurationError(
            f"SpecPrefillConfig is immutable; make a changed copy with config.with_overrides({name}=...)"
        )

    @field_validator("query_reduction")
    @classmethod
    def _check_query_reduction(cls, value: str) -> str:
        from specprefill.scoring.reduce import reduction_names  # the table of reductions; it imports no config

        if value not in reduction_names():
            raise ValueError(f"query_reduction must be one of {list(reduction_names())} (got {value!r})")
        return value

    @field_validator("pool_kernel")
    @classmethod
    def _check_pool_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"pool_kernel must be odd (got {value}); use e.g. 13, or 1 to disable")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> Self:
        if self.max_speculator_tokens is not None and self.max_speculator_tokens <= self.lookahead:
            raise ValueError(
                f"max_speculator_tokens ({self.max_speculator_tokens}) must exceed lookahead ({self.lookahead}): "
                "each window holds prompt tokens plus the look-ahead tokens"
            )
        return self

    @model_validator(mode="after")
    def _check_observation_window(self) -> Self:
        if self.observation_window > self.window_query_tokens:
            raise ValueError(
                f"observation_window ({self.observation_window}) must not exceed window_query_tokens "
                f"({self.window_query_tokens}): in windowed scoring every window must hold the same query tail"
            )
        return self

    @classmethod
    def of(cls, value: object) -> SpecPrefillConfig:
        """The config a call means: the defaults for None, a mapping of fields validated, a config as it is.

        Raises:
            ConfigurationError: ``value`` is something else, or the mapping holds an invalid field.

        """
        if value is None:
            return cls()
        if isinstance(value, SpecPrefillConfig):
            return value
        if isinstance(value, Mapping):
            return cls.model_validate(dict(value))
        raise ConfigurationError(
            f"config must be a SpecPrefillConfig or a mapping of its fields, got {type(value).__name__}"
        )

    def long_enough(self, n_tokens: int) -> bool:
        """Whether a prompt of ``n_tokens`` speculator tokens is scored at all (``min_prompt_tokens``).

        The one length gate: the speculator, passage pruning and the server all ask it.
        """
        return n_tokens >= max(self.min_prompt_tokens, 1)

    @classmethod
    def paper(cls, **overrides: Any) -> Self:
        """The paper's exact "Full LAH" algorithm: chunks of 32, look-ahead 8, kernel 13, mean over queries.

        No observation window, and the chunk grid runs from token 0 (no segments). Fields outside the
        algorithm (``keep_rate``, protection, budgets) keep their defaults unless overridden.

        Args:
            **overrides: Fields to change on top of the preset, e.g. ``keep_rate=0.1``.

        Returns:
            A new validated config.

        """
        return cls(**{**_PAPER_PRESET, **overrides})

    def with_overrides(self, **overrides: Any) -> SpecPrefillConfig:
        """Return a validated copy with some fields changed (``None`` values are ignored).

        Args:
            **overrides: Field names and new values, e.g. ``keep_rate=0.1``.

        Returns:
            A new config; this one is unchanged.

        """
        changes = {k: v for k, v in overrides.items() if v is not None}
        if not changes:
            return self
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise ConfigurationError(
                f"unknown SpecPrefillConfig field(s) {unknown}; valid fields: {sorted(type(self).model_fields)}"
            )
        return SpecPrefillConfig(**{**self.model_dump(), **changes})


_PAPER_PRESET: dict[str, Any] = {
    "chunk_size": 32,
    "lookahead": 8,
    "pool_kernel": 13,
    "observation_window": 0,
    "query_reduction": "mean",
    "segment_by": "none",
    "chunk_context": 0,
    "context_weight": 0.3,
    "coverage": 0.0,
    "complete_tokens": 0,
    "lexical_weight": 0.0,
    "lexical_fusion": 0,
    "retrieval_heads": 0,
    "window_in_final_paragraph": False,
}
"""The algorithm fields of the paper's "Full LAH" preset (see :meth:`SpecPrefillConfig.paper`)."""


def _reraise(exc: ValidationError) -> NoReturn:
    """Raise the ``ConfigurationError`` behind a pydantic error (``__init__`` errors arrive wrapped)."""
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigurationError):
            raise inner from exc
    raise ConfigurationError(_explain(exc)) from exc


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"]:
            where = ".".join(str(p) for p in err["loc"])
            parts.append(f"{where}: {msg} (got {err.get('input')!r:.200})")
        else:
            parts.append(msg)
    return "invalid SpecPrefillConfig: " + "; ".join(parts)
