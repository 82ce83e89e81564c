"""SpecPrefill method variants for the ablation: named :class:`~specprefill.SpecPrefillConfig` overrides.

A variant is a base preset (``"paper"``: the paper's Full LAH, ``SpecPrefillConfig.paper()`` where the
library has it; ``"default"``: the library's current defaults) plus field overrides. Overrides are plain
dicts checked only when a run starts (:func:`build_config`), so variants may name fields that only some
versions of the library have (``observation_window``, ``query_reduction``, ``segment_by``); a variant the
installed library cannot build is skipped with the library's own error message.

Scoring is shared: :func:`scoring_key` drops the fields that only affect selection, so every variant with
the same scoring settings reuses one importance vector per sample (for every keep rate and selection
variant). Segment-aware variants (``segment_by``) pass segment starts from :func:`segment_starts` to
``select_chunks(..., segments=...)``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError

__all__ = [
    "ABLATION_VARIANTS",
    "SEGMENT_LEVELS",
    "SELECTION_FIELDS",
    "VARIANTS",
    "Variant",
    "build_config",
    "parse_variant",
    "scoring_key",
    "segment_starts",
    "variant_for",
]

Span = tuple[int, int]

SELECTION_FIELDS: frozenset[str] = frozenset(
    {
        "keep_rate", "chunk_size", "max_kept_tokens", "min_prompt_tokens", "segment_by", "chunk_context",
        "context_weight", "coverage", "coverage_radius", "complete_tokens", "complete_next", "complete_share",
        "lexical_weight", "lexical_fusion", "lexical_stop_words",
        "protect_template",
        "protect_system_tokens", "protect_question_tokens", "protected_count_toward_budget", "gap_marker",
        "fallback_on_error",
    }
)  # fmt: skip
"""Config fields that change which chunks are kept but not the importance; every other field is a scoring
field (unknown new fields included, so a new scoring option is never shared by mistake)."""

SEGMENT_LEVELS: tuple[str, ...] = ("none", "messages", "paragraphs", "sentences")
"""``segment_by`` levels, coarse to fine; each level includes the boundaries of the coarser ones."""


@dataclass(frozen=True)
class Variant:
    """A named SpecPrefill setting: a base preset plus config overrides."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    preset: str = "paper"
    """``"paper"`` (the paper's Full LAH preset) or ``"default"`` (the library's defaults)."""
    label: str = ""

    def describe(self) -> str:
        """``preset + overrides`` as one short line (for reports)."""
        changes = ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.preset}" + (f" + {changes}" if changes else "")


def _v(name: str, label: str, preset: str = "paper", **overrides: Any) -> Variant:
    return Variant(name=name, overrides=overrides, preset=preset, label=label)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _v("specprefill-lah8", "SpecPrefill (look-ahead 8)"),
        _v("specprefill-lah1", "SpecPrefill (look-ahead 1)", lookahead=1),
        _v("specprefill-default", "SpecPrefill (library defaults)", preset="default"),
        _v("specprefill-no-complete", "defaults without sentence completion", preset="default", complete_tokens=0),
        _v(
            "specprefill-next-short",
            "defaults, completion into the next sentence only after a short one",
            preset="default",
            complete_next="short",
        ),
        _v("specprefill-no-lexical", "defaults without the question-word channel", preset="default", lexical_weight=0),
        _v(
            "specprefill-no-fusion",
            "defaults, question words blended in but not rank-fused",
            preset="default",
            lexical_fusion=0,
        ),
        _v(
            "specprefill-no-stop-words",
            "defaults, function words count as question words",
            preset="default",
            lexical_stop_words=False,
        ),
        _v("specprefill-coverage", "library defaults + coverage 0.25", preset="default", coverage=0.25),
        _v("specprefill-default-lah8", "defaults with look-ahead 8", preset="default", lookahead=8),
        _v("specprefill-max", "SpecPrefill, max over queries", query_reduction="max"),
        _v("specprefill-mix", "SpecPrefill, mix of max and mean", query_reduction="mix"),
        _v("specprefill-ow32", "SpecPrefill + window 32 (mean)", observation_window=32),
        _v("specprefill-ow32-max", "SpecPrefill + window 32, max", observation_window=32, query_reduction="max"),
        _v(
            "specprefill-ow32-lah1-max",
            "window 32 only (no look-ahead), max",
            observation_window=32,
            lookahead=1,
            query_reduction="max",
        ),
        _v("specprefill-seg", "SpecPrefill, sentence grid", segment_by="sentences"),
        _v("specprefill-seg-para", "SpecPrefill, paragraph grid", segment_by="paragraphs"),
        _v(
            "specprefill-ow32-max-seg",
            "window 32, max, sentence grid",
            observation_window=32,
            query_reduction="max",
            segment_by="sentences",
        ),
    )
}
"""Built-in variants: the paper grid vs the segment grid, look-ahead only vs look-ahead plus observation
window, mean vs max over queries."""

ABLATION_VARIANTS: tuple[str, ...] = (
    "specprefill-default",
    "specprefill-no-complete",
    "specprefill-next-short",
    "specprefill-no-lexical",
    "specprefill-no-fusion",
    "specprefill-no-stop-words",
    "specprefill-default-lah8",
    "specprefill-coverage",
)
"""The variants the full preset adds to the paper's look-ahead 8 and 1: the library defaults, then one row per
rule of the defaults taken out or changed (sentence completion, its continuation after any sentence, question
words, their rank fusion and stop words, look-ahead 4) and the opt-in coverage rule. The older variants (window,
max, segment grid) stay runnable by name; their ablation is in ``examples/report/full-retention`` and
``full-heads``."""


def parse_variant(spec: str) -> Variant:
    """A variant from the command line: ``NAME=JSON`` with a JSON object of config overrides.

    The object may hold ``"preset": "paper" | "default"`` (default ``"paper"``); every other key is a
    :class:`~specprefill.SpecPrefillConfig` field, checked when the run starts.

    Raises:
        ConfigurationError: Not ``NAME=JSON``, the JSON is not an object, or the preset is unknown.

    """
    name, sep, body = spec.partition("=")
    if not sep or not name.strip():
        raise ConfigurationError(f"variant {spec!r}: write NAME='{{\"field\": value, ...}}'")
    try:
        overrides = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"variant {name!r}: the overrides are not valid JSON ({exc.msg})") from exc
    if not isinstance(overrides, dict):
        raise ConfigurationError(f"variant {name!r}: give a JSON object of config fields")
    preset = str(overrides.pop("preset", "paper"))
    if preset not in ("paper", "default"):
        raise ConfigurationError(f"variant {name!r}: preset must be 'paper' or 'default' (got {preset!r})")
    return Variant(name=name.strip(), overrides=overrides, preset=preset, label=name.strip())


def variant_for(name: str, custom: Mapping[str, Mapping[str, Any]] | None = None) -> Variant | None:
    """The variant called ``name``: a custom one (``{name: overrides}``), a built-in one, ``specprefill-lahN``.

    Returns None when ``name`` is not a SpecPrefill variant (e.g. ``"rag"``).
    """
    if custom and name in custom:
        overrides = dict(custom[name])
        return Variant(name, overrides, str(overrides.pop("preset", "paper")), name)
    if name in VARIANTS:
        return VARIANTS[name]
    lookahead = name.removeprefix("specprefill-lah")
    if name.startswith("specprefill-lah") and lookahead.isdigit():
        return _v(name, f"SpecPrefill (look-ahead {lookahead})", lookahead=int(lookahead))
    return None


def build_config(variant: Variant) -> SpecPrefillConfig:
    """The validated config of a variant.

    Raises:
        ConfigurationError: The installed library has no such field, a value is out of range, or the
            preset is unknown.

    """
    if variant.preset == "paper":
        paper = getattr(SpecPrefillConfig, "paper", None)
        base = paper() if callable(paper) else SpecPrefillConfig()  # before paper() existed, defaults = paper
    elif variant.preset == "default":
        base = SpecPrefillConfig()
    else:
        raise ConfigurationError(f"variant {variant.name!r}: unknown preset {variant.preset!r}")
    overrides = dict(variant.overrides)
    config = base.with_overrides(**overrides)
    segment_by = str(overrides.get("segment_by", getattr(config, "segment_by", "none")))
    if segment_by not in SEGMENT_LEVELS:
        raise ConfigurationError(f"variant {variant.name!r}: segment_by must be one of {SEGMENT_LEVELS}")
    if segment_by != "none":
        _segmenter()  # fail now, not on the first sample
    return config


def scoring_key(config: SpecPrefillConfig) -> str:
    """The config's scoring fields as a stable string: equal keys give equal importance for a prompt."""
    dump = config.model_dump()
    return json.dumps({k: v for k, v in sorted(dump.items()) if k not in SELECTION_FIELDS}, sort_keys=True)


def segment_starts(text: str, offsets: Sequence[Span], regions: Sequence[Span], level: str) -> list[int]:
    """Token indices where segments start, for ``select_chunks(..., segments=...)``.

    They come from the library's own segmenter (``specprefill.prompt.segments.segment_starts``), so the harness
    measures exactly what the library does.

    Args:
        text: The prompt text.
        offsets: Character span of each token.
        regions: Character spans of the prompt's message contents (the "messages" level restarts the grid
            at their starts and ends); for the harness's plain-text prompts, the context.
        level: One of :data:`SEGMENT_LEVELS`; ``"none"`` gives no segments.

    Raises:
        ConfigurationError: An unknown level, or a library without segment-aware selection.

    """
    if level not in SEGMENT_LEVELS:
        raise ConfigurationError(f"unknown segment level {level!r}; use one of {SEGMENT_LEVELS}")
    if level == "none":
        return []
    starts = _segmenter()(offsets, text, level, content_spans=list(regions))
    return [int(i) for i in starts or []]


def _segmenter() -> Any:
    try:
        module = importlib.import_module("specprefill.prompt.segments")
    except ImportError as exc:
        raise ConfigurationError(
            "segment-aware variants need specprefill.prompt.segments (segment-aware selection); "
            "this specprefill has none"
        ) from exc
    return module.segment_starts
