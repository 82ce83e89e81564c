"""Pure position logic of the vLLM plugin: no vLLM and no torch import.

A pruned request reaches vLLM as a normal prompt made of the kept token ids. vLLM stores their keys and
values at the contiguous KV indices ``0 .. n_kept-1`` and would give them the same positions; the plugin
rewrites only the *positions* the model sees (the RoPE input):

* prompt token at KV index ``k < n_kept`` -> its original index in the unpruned prompt;
* every later token (decode, or a prompt re-computed after preemption) at KV index ``k >= n_kept``
  -> ``k + (N - n_kept)`` where ``N`` is the original prompt length, so decoding continues at ``N, N+1, ...``.

The original positions travel in ``SamplingParams.extra_args`` (over HTTP: ``vllm_xargs``), which only
allows scalars and flat lists, as two keys:

* :data:`XARG_RUNS` - ``[orig_start_0, length_0, orig_start_1, length_1, ...]``: the kept positions as
  maximal runs of consecutive indices (kept 32-token chunks merge into few runs);
* :data:`XARG_LENGTH` - ``N``.

Prefix caching hashes token ids, not positions, so a pruned request must carry a ``cache_salt`` that
depends on its positions (:func:`cache_salt`), or vLLM would silently reuse KV computed at other positions.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill.errors import PromptError

__all__ = [
    "SALT_PREFIX",
    "XARG_LENGTH",
    "XARG_RUNS",
    "PositionMap",
    "PositionSpecError",
    "cache_salt",
    "decode_runs",
    "encode_runs",
    "parse_xargs",
    "request_extras",
    "xargs_for",
]

XARG_RUNS = "specprefill_runs"
"""``extra_args`` key: flat ``[orig_start, length, ...]`` runs of the kept original positions."""

XARG_LENGTH = "specprefill_orig_len"
"""``extra_args`` key: the original (unpruned) prompt length ``N``."""

SALT_PREFIX = "specprefill-"
"""Prefix of every cache salt this module derives."""

_MAX_SALT = 128  # vLLM rejects longer cache salts


class PositionSpecError(PromptError):
    """Position ids or their ``extra_args`` encoding are malformed (the message says which rule broke)."""


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PositionSpecError(f"{what} must be an integer, got {value!r}")
    return int(value)


def encode_runs(position_ids: Sequence[int] | npt.NDArray[np.integer]) -> list[int]:
    """Compress strictly increasing positions into flat ``[start, length, ...]`` runs.

    Args:
        position_ids: Original positions of the kept tokens, strictly increasing and non-negative.

    Returns:
        The runs, e.g. ``[0, 1, 2, 10, 11]`` -> ``[0, 3, 10, 2]``.

    Raises:
        PositionSpecError: The positions are empty, negative or not strictly increasing.

    """
    values = [_as_int(p, "a position id") for p in position_ids]
    if not values:
        raise PositionSpecError("position_ids is empty; a pruned request keeps at least one token")
    if values[0] < 0:
        raise PositionSpecError(f"position ids must be non-negative, got {values[0]}")
    runs: list[int] = [values[0], 1]
    for prev, cur in itertools.pairwise(values):
        if cur <= prev:
            raise PositionSpecError(f"position ids must be strictly increasing, got {prev} then {cur}")
        if cur == prev + 1:
            runs[-1] += 1
        else:
            runs.extend((cur, 1))
    return runs


def decode_runs(runs: Sequence[int]) -> list[int]:
    """Expand flat ``[start, length, ...]`` runs back into the list of positions (inverse of :func:`encode_runs`).

    Raises:
        PositionSpecError: The runs are malformed (see :meth:`PositionMap.from_runs`).

    """
    starts, lengths = _split_runs(runs)
    out: list[int] = []
    for start, length in zip(starts, lengths, strict=True):
        out.extend(range(start, start + length))
    return out


def _split_runs(runs: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence):
        raise PositionSpecError(f"{XARG_RUNS} must be a flat list of integers, got {type(runs).__name__}")
    values = [_as_int(v, f"every item of {XARG_RUNS}") for v in runs]
    if not values or len(values) % 2:
        raise PositionSpecError(
            f"{XARG_RUNS} must hold [orig_start, length] pairs (an even, non-zero count), got {len(values)} items"
        )
    starts = tuple(values[0::2])
    lengths = tuple(values[1::2])
    end = 0
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        if length < 1:
            raise PositionSpecError(f"run {i} of {XARG_RUNS} has length {length}; lengths must be >= 1")
        if start < end:
            raise PositionSpecError(
                f"run {i} of {XARG_RUNS} starts at {start}, inside or before the previous run (ends at {end}); "
                "runs must be sorted and must not overlap"
            )
        end = start + length
    return starts, lengths


@dataclass(frozen=True)
class PositionMap:
    """Where the kept tokens of one pruned request sit in the original prompt.

    ``kv`` below is a KV index (the position vLLM assigns: 0, 1, 2, ... over the kept tokens, then the
    generated ones); :meth:`position` maps it to the position the model must see.

    Attributes:
        orig_starts: Original start of each run of consecutive kept positions.
        lengths: Length of each run.
        original_length: ``N``, the original prompt length; decoding continues at ``N``.

    """

    orig_starts: tuple[int, ...]
    lengths: tuple[int, ...]
    original_length: int
    kv_starts: tuple[int, ...] = field(init=False, repr=False)
    """KV index where each run starts (running sum of the lengths)."""

    def __post_init__(self) -> None:
        starts, lengths = _split_runs([v for pair in zip(self.orig_starts, self.lengths, strict=True) for v in pair])
        n = _as_int(self.original_length, XARG_LENGTH)
        last_end = starts[-1] + lengths[-1]
        if n < last_end:
            raise PositionSpecError(
                f"{XARG_LENGTH}={n} is smaller than the end of the last kept run ({last_end}); it must be the "
                "original prompt length, greater than every kept position"
            )
        kv: list[int] = []
        total = 0
        for length in lengths:
            kv.append(total)
            total += length
        object.__setattr__(self, "orig_starts", starts)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "original_length", n)
        object.__setattr__(self, "kv_starts", tuple(kv))

    # --- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_positions(
        cls, position_ids: Sequence[int] | npt.NDArray[np.integer], original_length: int | None = None
    ) -> PositionMap:
        """Build the map from the kept tokens' original positions.

        Args:
            position_ids: Original positions of the kept tokens, strictly increasing.
            original_length: ``N``; defaults to the last position + 1.

        Raises:
            PositionSpecError: The positions are malformed or ``original_length`` is too small.

        """
        runs = encode_runs(position_ids)
        n = runs[-2] + runs[-1] if original_length is None else original_length
        return cls(tuple(runs[0::2]), tuple(runs[1::2]), n)

    @classmethod
    def from_runs(cls, runs: Sequence[int], original_length: int) -> PositionMap:
        """Build the map from flat ``[orig_start, length, ...]`` runs.

        Raises:
            PositionSpecError: Odd or empty list, a length < 1, overlapping or unsorted runs, or
                ``original_length`` smaller than the end of the last run.

        """
        starts, lengths = _split_runs(runs)
        return cls(starts, lengths, original_length)

    # --- properties -----------------------------------------------------------------------------------
    @property
    def n_kept(self) -> int:
        """Number of kept prompt tokens (the prompt length vLLM sees)."""
        return self.kv_starts[-1] + self.lengths[-1]

    @property
    def delta(self) -> int:
        """``N - n_kept``: the shift of every token after the kept prompt."""
        return self.original_length - self.n_kept

    @property
    def num_runs(self) -> int:
        """Number of runs."""
        return len(self.orig_starts)

    @property
    def is_identity(self) -> bool:
        """True when nothing was dropped (positions ``0..N-1``): no rewrite is needed."""
        return self.num_runs == 1 and self.orig_starts[0] == 0 and self.delta == 0

    # --- mapping --------------------------------------------------------------------------------------
    def position(self, kv: int) -> int:
        """Position the model must see for the token at KV index ``kv`` (>= 0)."""
        if kv < 0:
            raise PositionSpecError(f"KV index must be >= 0, got {kv}")
        if kv >= self.n_kept:
            return kv + self.delta
        run = bisect.bisect_right(self.kv_starts, kv) - 1
        return self.orig_starts[run] + (kv - self.kv_starts[run])

    def positions(self, kv: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        """Vectorised :meth:`position` over an array of KV indices (a numpy reference for the torch code)."""
        idx = np.asarray(kv, dtype=np.int64)
        if idx.size and int(idx.min()) < 0:
            raise PositionSpecError("KV indices must be >= 0")
        kv_starts = np.asarray(self.kv_starts, dtype=np.int64)
        orig = np.asarray(self.orig_starts, dtype=np.int64)
        run = np.searchsorted(kv_starts, idx, side="right") - 1
        in_prompt = orig[run] + (idx - kv_starts[run])
        return np.where(idx < self.n_kept, in_prompt, idx + self.delta).astype(np.int64)

    def prompt_positions(self) -> list[int]:
        """Original positions of all kept prompt tokens, in order."""
        return [self.position(k) for k in range(self.n_kept)]

    def runs(self) -> list[int]:
        """Flat ``[orig_start, length, ...]`` runs (the :data:`XARG_RUNS` value)."""
        return [v for pair in zip(self.orig_starts, self.lengths, strict=True) for v in pair]

    # --- wire format ----------------------------------------------------------------------------------
    def to_xargs(self) -> dict[str, Any]:
        """The ``extra_args`` / ``vllm_xargs`` entries that carry this map."""
        return {XARG_RUNS: self.runs(), XARG_LENGTH: self.original_length}

    def salt(self, user_salt: str | None = None) -> str:
        """The cache salt of this map (see :func:`cache_salt`)."""
        return cache_salt(self, user_salt)


def xargs_for(position_ids: Sequence[int] | npt.NDArray[np.integer], original_length: int) -> dict[str, Any]:
    """The ``extra_args`` entries for kept tokens at ``position_ids`` out of an ``original_length`` prompt.

    Raises:
        PositionSpecError: The positions are malformed or ``original_length`` is too small.

    """
    return PositionMap.from_positions(position_ids, original_length).to_xargs()


def parse_xargs(extra_args: Mapping[str, Any] | None) -> PositionMap | None:
    """Read a request's position map from its ``extra_args`` (None when it carries none).

    Args:
        extra_args: ``SamplingParams.extra_args`` (may be None or hold other keys too).

    Returns:
        The map, or None when neither key is present. An identity map (nothing dropped) is returned as is.

    Raises:
        PositionSpecError: Only one of the two keys is present, or the values are malformed.

    """
    if not extra_args:
        return None
    has_runs = XARG_RUNS in extra_args
    has_len = XARG_LENGTH in extra_args
    if not has_runs and not has_len:
        return None
    if not (has_runs and has_len):
        missing = XARG_LENGTH if has_runs else XARG_RUNS
        raise PositionSpecError(f"extra_args has one specprefill key but not {missing!r}; send both or neither")
    runs = extra_args[XARG_RUNS]
    if isinstance(runs, tuple):
        runs = list(runs)
    return PositionMap.from_runs(runs, _as_int(extra_args[XARG_LENGTH], XARG_LENGTH))


def cache_salt(positions: PositionMap, user_salt: str | None = None) -> str:
    """A prefix-cache salt that differs whenever the positions (or the original length) differ.

    vLLM hashes the salt into the first KV block, and block hashes chain, so requests with different
    salts never share cached KV. Derived deterministically, so identical pruned requests still share.

    Args:
        positions: The request's position map.
        user_salt: A salt the caller already uses (tenant isolation); it is mixed in.

    Returns:
        ``"specprefill-<hex>"``, at most 128 characters, without the characters vLLM forbids.

    """
    digest = hashlib.sha256()
    digest.update(b"specprefill/positions/v1\0")
    digest.update(str(positions.original_length).encode())
    digest.update(b"\0")
    digest.update(",".join(map(str, positions.runs())).encode())
    if user_salt:
        digest.update(b"\0user\0")
        digest.update(user_salt.encode())
    return (SALT_PREFIX + digest.hexdigest()[:48])[:_MAX_SALT]


def request_extras(
    position_ids: Sequence[int] | npt.NDArray[np.integer] | None,
    original_length: int | None,
    *,
    n_tokens: int,
    user_salt: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """What a pruned request adds to its vLLM call: ``(extra_args entries, cache_salt)``.

    Args:
        position_ids: Original positions of the kept tokens (None: contiguous ``0..n_tokens-1``).
        original_length: ``N`` (None: ``n_tokens``).
        n_tokens: Number of kept token ids actually sent (checked against ``position_ids``).
        user_salt: A caller salt to keep (returned unchanged for unpruned requests).

    Returns:
        ``({}, user_salt)`` when nothing was dropped (an ordinary request), otherwise the two
        :data:`XARG_RUNS` / :data:`XARG_LENGTH` entries and the derived salt.

    Raises:
        PositionSpecError: The positions do not match the token count or are malformed.

    """
    ids = list(range(n_tokens)) if position_ids is None else position_ids
    if len(ids) != n_tokens:
        raise PositionSpecError(f"{n_tokens} token ids but {len(ids)} position ids; they must match")
    pmap = PositionMap.from_positions(ids, original_length if original_length is not None else n_tokens)
    if pmap.is_identity:
        return {}, user_salt
    return pmap.to_xargs(), pmap.salt(user_salt)
