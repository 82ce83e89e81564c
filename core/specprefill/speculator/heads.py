"""Retrieval-head profiles: which attention heads of a speculator point at the sentence a question asks about.

The paper's score takes, for every prompt token, the max over all layers and heads. Most heads of a small
model attend by position or structure (the previous token, line starts, section titles), so that max saturates
on short headings and on the last sentences before the question. A few heads attend by content, and those
rank the answer sentence first (as the retrieval heads of Wu et al. 2024 do for copying).

:func:`calibrate_heads` finds them once per speculator. It generates synthetic fact-lookup prompts
(:func:`calibration_samples`: four passages of short facts about invented people, and a question about one
fact), scores each with every head alone, and records each head's mean reciprocal rank of the answer
sentence among the prompt's sentence chunks. ``SpecPrefillConfig.retrieval_heads = k`` then scores with the k
best heads of the profile. The packaged models ship a profile (``specprefill/head_profiles``); for others,
``specprefill heads --speculator NAME`` writes one to the cache, where :func:`find_profile` looks.
The calibration prompts share no words, templates or task with the evaluation tasks in ``benchmarks/``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError

if TYPE_CHECKING:
    from specprefill.speculator.hf import HFSpeculator

__all__ = [
    "PACKAGED_PROFILES",
    "CalibrationSample",
    "HeadProfile",
    "calibrate_heads",
    "calibration_samples",
    "find_profile",
    "format_top",
    "profile_files",
    "profile_path",
    "save_profile",
]

log = logging.getLogger("specprefill")

PACKAGED_PROFILES = Path(__file__).parent / "head_profiles"
"""Folder of the profiles shipped with the package (one ``<speculator name>.json`` each)."""

CALIBRATION_LOOKAHEAD = 16
"""Look-ahead used while calibrating (the passage pruners' default, ``specprefill.prompt.passages.PASSAGE_LOOKAHEAD``)."""


@dataclass(frozen=True)
class HeadProfile:
    """Per-head retrieval scores of one speculator model (mean reciprocal rank of the answer sentence)."""

    model: str
    """The speculator name the profile was measured for."""
    scores: tuple[tuple[float, ...], ...]
    """``scores[layer][head]`` in [0, 1]; 0 for layers that were not scored (sliding-window layers)."""
    samples: int = 0
    """Calibration prompts measured."""
    seed: int = 0
    """Seed of :func:`calibration_samples`."""

    def __post_init__(self) -> None:
        if not self.scores or len({len(row) for row in self.scores}) != 1 or not self.scores[0]:
            raise ConfigurationError(
                f"head profile of {self.model!r}: scores must be a non-empty [layers][heads] table"
            )
        if not all(0.0 <= v <= 1.0 for row in self.scores for v in row):  # also rejects NaN
            raise ConfigurationError(f"head profile of {self.model!r}: every score must lie in [0, 1]")

    @property
    def layers(self) -> int:
        """Number of layers."""
        return len(self.scores)

    @property
    def heads(self) -> int:
        """Query heads per layer."""
        return len(self.scores[0])

    def top(self, count: int) -> dict[int, tuple[int, ...]]:
        """The ``count`` best heads as ``{layer: (head, ...)}`` (ties: lower layer, then lower head first).

        Heads that never ranked an answer (score 0) are left out, so fewer heads may come back.
        """
        table = np.asarray(self.scores, dtype=np.float64).ravel()
        order = np.argsort(-table, kind="stable")[: max(count, 0)]
        chosen: dict[int, list[int]] = {}
        for flat in sorted(int(i) for i in order if table[i] > 0):
            layer, head = divmod(flat, self.heads)
            chosen.setdefault(layer, []).append(head)
        return {layer: tuple(heads) for layer, heads in chosen.items()}

    def to_json(self) -> str:
        """The profile as a JSON document (scores rounded to 4 decimals)."""
        rows = [[round(float(v), 4) for v in row] for row in self.scores]
        body = {"model": self.model, "samples": self.samples, "seed": self.seed, "scores": rows}
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HeadProfile:
        """Read a profile written by :meth:`to_json`.

        Raises:
            ConfigurationError: The document is not a head profile.

        """
        try:
            body = json.loads(text)
            scores = tuple(tuple(float(v) for v in row) for row in body["scores"])
            return cls(str(body["model"]), scores, int(body.get("samples", 0)), int(body.get("seed", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"not a head profile ({exc}); write one with `specprefill heads --speculator NAME`"
            ) from exc


def profile_path(name: str) -> Path:
    """Where :func:`save_profile` writes the profile of speculator ``name`` by default (the cache)."""
    from specprefill.speculator.loading import cache_dir

    return cache_dir() / "heads" / f"{_slug(name)}.json"


def save_profile(profile: HeadProfile, path: str | Path | None = None) -> Path:
    """Write ``profile`` (default: to :func:`profile_path`, where :func:`find_profile` finds it); returns the path."""
    target = Path(path) if path is not None else profile_path(profile.model)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(profile.to_json(), encoding="utf-8")
    return target


def profile_files(name: str) -> list[Path]:
    """The profile files of speculator ``name`` that exist, in lookup order: the cache, then the packaged one."""
    return [p for p in (profile_path(name), PACKAGED_PROFILES / f"{_slug(name)}.json") if p.is_file()]


def find_profile(name: str, layers: int, heads: int) -> HeadProfile | None:
    """The profile of speculator ``name``: the cache first, then the packaged ones; None if none fits.

    A profile whose shape differs from ``layers x heads`` is ignored with a warning.
    """
    for path in profile_files(name):
        try:
            profile = HeadProfile.from_json(path.read_text(encoding="utf-8"))
        except ConfigurationError as exc:
            log.warning("ignoring head profile %s: %s", path, exc)
            continue
        if (profile.layers, profile.heads) == (layers, heads):
            return profile
        log.warning(
            "ignoring head profile %s: it has %d layers x %d heads, the model %d x %d",
            path, profile.layers, profile.heads, layers, heads,
        )  # fmt: skip
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.") or "speculator"


# --- calibration prompts ----------------------------------------------------------------------------------
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
    from specprefill.prompt.passages import Passage, layout_passages, protect_passages
    from specprefill.prompt.segments import check_segments, segment_starts
    from specprefill.scoring import chunk_bounds

    layout = layout_passages([Passage(text=t) for t in sample.passages], sample.question)
    prepared = speculator.prepare(layout.messages, config=config)
    protected, windows = protect_passages(prepared, layout, speculator.name)
    text, offsets = prepared.text or "", prepared.offsets or []
    starts = segment_starts(
        offsets, text, config.segment_by, content_spans=prepared.content_spans or (), extra=check_segments(windows)
    )
    per_head = speculator.head_scores(prepared.input_ids, config)  # [L, H, N]
    bounds = [(a, b) for a, b in chunk_bounds(len(offsets), config.chunk_size, starts) if not protected[a:b].all()]
    means = np.stack([per_head[:, :, a:b].mean(axis=-1) for a, b in bounds], axis=-1)  # [L, H, C]
    lo = text.rindex(sample.answer)
    hi = lo + len(sample.answer)
    hits = [i for i, (a, b) in enumerate(bounds) if offsets[a][0] < hi and offsets[b - 1][1] > lo]
    best = means[:, :, hits].max(axis=-1, keepdims=True)
    ranks: npt.NDArray[Any] = (means > best).sum(axis=-1)
    return ranks


def format_top(profile: HeadProfile, count: int) -> str:
    """A one-line summary of the ``count`` best heads (``L18.H6 0.64, ...``)."""
    pairs: Sequence[tuple[int, int]] = [(layer, head) for layer, heads in profile.top(count).items() for head in heads]
    ranked = sorted(pairs, key=lambda p: -profile.scores[p[0]][p[1]])
    return ", ".join(f"L{layer}.H{head} {profile.scores[layer][head]:.2f}" for layer, head in ranked)
