"""What scoring takes from a prepared prompt: whether it is scored, its segment starts, its scoring config.

Pure helpers shared by :meth:`Speculator.score_prompt <specprefill.speculator.base.Speculator.score_prompt>` and
its batched form :meth:`~specprefill.speculator.base.Speculator.score_prompts`.
"""

from __future__ import annotations

from collections.abc import Sequence

from specprefill.config import SpecPrefillConfig
from specprefill.prompt.prepared import PreparedPrompt
from specprefill.prompt.segments import final_paragraph_tokens, segment_starts

__all__ = ["due", "scoring_config", "segment_starts_of"]


def scoring_config(prepared: PreparedPrompt, config: SpecPrefillConfig) -> SpecPrefillConfig:
    """``config`` with the observation window cut to the prompt's final paragraph (``window_in_final_paragraph``)."""
    if not config.window_in_final_paragraph or config.observation_window == 0:
        return config
    tail = final_paragraph_tokens(prepared.text, prepared.offsets, prepared.content_spans)
    if tail is None or tail >= config.observation_window:
        return config
    return config.with_overrides(observation_window=max(tail, 1))


def due(prepared: PreparedPrompt, config: SpecPrefillConfig) -> bool:
    """Whether the prompt is long enough to be scored (``min_prompt_tokens``)."""
    return len(prepared.input_ids) >= max(config.min_prompt_tokens, 1)


def segment_starts_of(prepared: PreparedPrompt, config: SpecPrefillConfig, extra: Sequence[int]) -> list[int] | None:
    """Token indices where the prompt's segments start (:func:`~specprefill.prompt.segments.segment_starts`)."""
    return segment_starts(
        prepared.offsets,
        prepared.text,
        config.segment_by,
        content_spans=prepared.content_spans or (),
        extra=extra,
    )
