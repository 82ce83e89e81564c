"""Calibrating a retrieval-head profile: which heads of a speculator rank the asked-about sentence first.

:func:`calibrate_heads` generates synthetic fact-lookup prompts (:func:`calibration_samples`: four passages of
short facts about invented people, and a question about one fact), scores each with every head alone, and
records each head's mean reciprocal rank of the answer sentence among the prompt's sentence chunks, as a
:class:`~specprefill.speculator.heads.HeadProfile`. The calibration prompts share no words, templates or task
with the evaluation tasks in ``benchmarks/``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError
from specprefill.prompt.passages import Passage, layout_passages, protect_passages
from specprefill.prompt.segments import check_segments, segment_starts_of
from specprefill.scoring.chunks import chunk_bounds
from specprefill.speculator.heads import HeadProfile
from specprefill.speculator.hf import HFSpeculator

__all__ = ["CALIBRATION_LOOKAHEAD", "CalibrationSample", "calibrate_heads", "calibration_samples"]

CALIBRATION_LOOKAHEAD = 16
"""Look-ahead used while calibrating (the passage pruners' default,
:data:`~specprefill.prompt.passages.PASSAGE_LOOKAHEAD`)."""


_FIRST_NAMES = (
    "Amara Basil Corin Delphine Emeric Fenna Galen Hesper Ilka Jarrah Kestrel Liesel Marius Noor Orla Piet "
    "Quill Rhoswen Sigrun Tamsin Ulric Vesna Wendell Xanthe Yorick Zelda"
).split()
_SURNAMES = (
    "Achterberg Blackwood Castellan Dunmore Eastwick Farrow Gilchrist Harrowgate Ingleby Jessup Kilbride "
    "Lockhart Mossop Northam Ormsby Pilcher Quayle Redfern Stanier Thackeray Underhill Vickery Wetherby Yelland"
).split()
_FACTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("lives in", "Where does {p} live?", ("a houseboat on the canal", "the old lighthouse", "a flat above the "
     "bakery", "a farmhouse near the quarry", "the gatehouse of the abbey", "a cabin by the reservoir")),
    ("works as", "What does {p} work as?", ("a bookbinder", "a ferry pilot", "a glassblower", "a tax inspector",
     "a beekeeper", "a piano tuner", "a surveyor")),
    ("was born in", "In which year was {p} born?", tuple(str(year) for year in range(1931, 1999, 3))),
    ("owns", "What does {p} own?", ("a green motorbike", "three alpacas", "a wooden sailing boat",
     "a vintage typewriter", "a vineyard", "a racing pigeon")),
    ("collects", "What does {p} collect?", ("old maps", "seashells", "tin soldiers", "railway tickets",
     "pressed flowers", "jazz records")),
    ("plays", "Which instrument does {p} play?", ("the cello", "the bagpipes", "the harp", "the trombone",
     "the accordion", "the oboe")),
)  # fmt: skip
_FILLER = (
    "The weather was mild for most of the season, with rain on the coast.",
    "Several new shops opened along the main road during the year.",
    "The council repaired the footpath beside the river in the autumn.",
    "A local newspaper reported that the harvest was better than expected.",
    "Visitors often stop at the market square on Saturday mornings.",
    "The school held its annual concert in the community hall.",
    "Trains to the city run every half hour on weekdays.",
    "The library extended its opening hours over the winter months.",
)


@dataclass(frozen=True)
class CalibrationSample:
    """One calibration prompt: passages of facts, a question about one fact, and that fact's sentence."""

    passages: tuple[str, ...]
    question: str
    answer: str


def calibration_samples(count: int, seed: int = 0, facts: int = 40) -> list[CalibrationSample]:
    """``count`` deterministic fact-lookup prompts (about 700 SmolLM2 tokens each with 40 facts)."""
    rng = random.Random(seed)
    return [_calibration_sample(rng, facts) for _ in range(count)]


def _calibration_sample(rng: random.Random, n_facts: int) -> CalibrationSample:
    people: set[str] = set()
    while len(people) < n_facts:
        people.add(f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}")
    names = sorted(people)
    rng.shuffle(names)
    facts = [(name, *rng.choice(_FACTS)) for name in names]
    values = [rng.choice(options) for _, _, _, options in facts]
    sentences = [f"{name} {verb} {value}." for (name, verb, _, _), value in zip(facts, values, strict=True)]
    target = rng.randrange(n_facts)
    answer = sentences[target]
    for _ in range(n_facts // 3):
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(_FILLER))
    paragraphs = [" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)]
    per_passage = max(1, len(paragraphs) // 4)
    passages = tuple("\n\n".join(paragraphs[i : i + per_passage]) for i in range(0, len(paragraphs), per_passage))
    name, _, question, _ = facts[target]
    return CalibrationSample(passages, question.format(p=name), answer)


# --- calibration ------------------------------------------------------------------------------------------
def calibrate_heads(
    speculator: HFSpeculator,
    *,
    samples: int = 48,
    seed: int = 0,
    config: SpecPrefillConfig | None = None,
    progress: Callable[[int, int], Any] | None = None,
) -> HeadProfile:
    """Measure every head's retrieval score on :func:`calibration_samples` (see the module docstring).

    Args:
        speculator: The speculator to profile.
        samples: Calibration prompts (48 took 80 s for SmolLM2-135M on 2 CPU cores).
        seed: Seed of the prompts.
        config: Scoring settings (default: the library defaults with look-ahead 16); its
            ``retrieval_heads`` is ignored (every head is scored).
        progress: Called with ``(done, total)`` after each prompt.

    Returns:
        The profile; install it with :func:`save_profile` or assign it to ``speculator.head_profile``.

    """
    if samples < 1:
        raise ConfigurationError(f"samples must be at least 1 (got {samples})")
    cfg = (config or SpecPrefillConfig(lookahead=CALIBRATION_LOOKAHEAD)).with_overrides(retrieval_heads=0)
    total: npt.NDArray[np.float64] | None = None
    for done, sample in enumerate(calibration_samples(samples, seed), start=1):
        ranks = _answer_ranks(speculator, sample, cfg)
        reciprocal = 1.0 / (1.0 + ranks)
        total = reciprocal if total is None else total + reciprocal
        if progress is not None:
            progress(done, samples)
    assert total is not None
    scores = tuple(tuple(float(v) for v in row) for row in total / samples)
    return HeadProfile(speculator.name, scores, samples, seed)


def _answer_ranks(speculator: HFSpeculator, sample: CalibrationSample, config: SpecPrefillConfig) -> npt.NDArray[Any]:
    """``[L, H]`` rank (0 = best) of the answer sentence's best chunk under each head alone."""
    layout = layout_passages([Passage(text=t) for t in sample.passages], sample.question)
    prepared = speculator.prepare(layout.messages, config=config)
    protected, windows = protect_passages(prepared, layout, speculator.name)
    text, offsets = prepared.text or "", prepared.offsets or []
    starts = segment_starts_of(prepared, config, check_segments(windows))
    per_head = speculator.head_scores(prepared.input_ids, config)  # [L, H, N]
    bounds = [(a, b) for a, b in chunk_bounds(len(offsets), config.chunk_size, starts) if not protected[a:b].all()]
    means = np.stack([per_head[:, :, a:b].mean(axis=-1) for a, b in bounds], axis=-1)  # [L, H, C]
    lo = text.rindex(sample.answer)
    hi = lo + len(sample.answer)
    hits = [i for i, (a, b) in enumerate(bounds) if offsets[a][0] < hi and offsets[b - 1][1] > lo]
    best = means[:, :, hits].max(axis=-1, keepdims=True)
    ranks: npt.NDArray[Any] = (means > best).sum(axis=-1)
    return ranks
