"""Retrieval-head profiles: which attention heads of a speculator point at the sentence a question asks about.

The paper's score takes, for every prompt token, the max over all layers and heads. Most heads of a small
model attend by position or structure (the previous token, line starts, section titles), so that max saturates
on short headings and on the last sentences before the question. A few heads attend by content, and those
rank the answer sentence first (as the retrieval heads of Wu et al. 2024 do for copying).

A :class:`HeadProfile` holds each head's mean reciprocal rank of the answer sentence (measured by
:func:`specprefill.speculator.calibrate.calibrate_heads`); ``SpecPrefillConfig.retrieval_heads = k`` then
scores with the k best heads. This module is the store: the packaged models ship a profile
(``specprefill/speculator/head_profiles``), ``specprefill heads --speculator NAME`` writes one to the cache,
and :func:`find_profile` looks in both. It loads no model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specprefill.errors import ConfigurationError
from specprefill.speculator.embedded import cache_dir

__all__ = [
    "PACKAGED_PROFILES",
    "HeadProfile",
    "find_profile",
    "format_top",
    "profile_files",
    "profile_path",
    "save_profile",
]

log = logging.getLogger("specprefill")

PACKAGED_PROFILES = Path(__file__).parent / "head_profiles"
"""Folder of the profiles shipped with the package (one ``<speculator name>.json`` each)."""


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
def format_top(profile: HeadProfile, count: int) -> str:
    """A one-line summary of the ``count`` best heads (``L18.H6 0.64, ...``)."""
    pairs: Sequence[tuple[int, int]] = [(layer, head) for layer, heads in profile.top(count).items() for head in heads]
    ranked = sorted(pairs, key=lambda p: -profile.scores[p[0]][p[1]])
    return ", ".join(f"L{layer}.H{head} {profile.scores[layer][head]:.2f}" for layer, head in ranked)
