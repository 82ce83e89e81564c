"""What the CLI prints: JSON on stdout, stats blocks on stderr, a small step progress bar."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from specprefill.result import PruneResult

__all__ = [
    "StepBar",
    "engine_stats_lines",
    "print_block",
    "prune_stats_lines",
    "steps",
    "time_split",
    "write_json",
]


def write_json(payload: Mapping[str, Any]) -> None:
    """One JSON object and a newline on stdout (arrays and sets as lists, anything else as text)."""
    json.dump(payload, sys.stdout, ensure_ascii=False, default=_json_default)
    sys.stdout.write("\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def print_block(lines: Sequence[str], stream: IO[str]) -> None:
    """Lines after a ``---`` separator."""
    stream.write("\n".join(["---", *lines]) + "\n")
    stream.flush()


def prune_stats_lines(result: PruneResult) -> list[str]:
    """The stats of ``specprefill prune``."""
    s = result.stats
    lines = [
        f"tokens in: {s.tokens_in}",
        f"tokens kept: {s.tokens_kept}  (protected: {s.protected_tokens})",
        f"keep ratio: {s.keep_ratio:.3f}  (keep_rate {s.keep_rate:g}; chunks {s.chunks_kept}/{s.chunks_total})",
        f"speculator seconds: {s.speculator_seconds:.2f}  ({s.speculator or 'speculator'}, "
        f"{s.lookahead_queries} quer{'y' if s.lookahead_queries == 1 else 'ies'}, "
        f"{s.windows} window{'s' if s.windows != 1 else ''})",
    ]
    if not s.pruned and not s.fallback:
        lines.append("not pruned: the prompt is shorter than --min-prompt-tokens or everything was kept")
    if s.fallback:
        lines.append(f"fallback: the speculator failed, full prompt kept ({s.fallback_reason})")
    return lines


def time_split(stats: Mapping[str, Any], load_seconds: float) -> dict[str, float | None]:
    """Where the time of ``ask`` went: model load, speculator, base prefill, decode, and the total.

    Decode is the base model's time after its prefill (``base_seconds - base_prefill_seconds``).
    """

    def seconds(key: str) -> float | None:
        value = stats.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    base, prefill = seconds("base_seconds"), seconds("base_prefill_seconds")
    total = seconds("total_seconds")
    return {
        "model_load_seconds": load_seconds,
        "speculator_seconds": seconds("speculator_seconds"),
        "base_prefill_seconds": prefill,
        "decode_seconds": max(base - prefill, 0.0) if base is not None and prefill is not None else None,
        "total_seconds": load_seconds + total if total is not None else None,
    }


def engine_stats_lines(stats: Mapping[str, Any], *, load_seconds: float, finish_reason: str | None) -> list[str]:
    """The stats of ``specprefill ask``: token counts, then the time split (model load to decode)."""

    def num(value: Any, fmt: str = "{:.2f}") -> str:
        return fmt.format(value) if isinstance(value, (int, float)) else "?"

    split = time_split(stats, load_seconds)
    lines = [
        f"tokens in: {num(stats.get('tokens_in'), '{}')}",
        f"tokens kept: {num(stats.get('tokens_kept'), '{}')}",
        f"keep ratio: {num(stats.get('keep_ratio'), '{:.3f}')}",
        f"model load seconds: {num(split['model_load_seconds'])}",
        f"speculator seconds: {num(split['speculator_seconds'])}",
        f"base prefill seconds: {num(split['base_prefill_seconds'])}",
        f"decode seconds: {num(split['decode_seconds'])}",
    ]
    if "ttft_seconds" in stats:
        lines.append(f"time to first token seconds: {num(stats['ttft_seconds'])}  (speculator + base prefill)")
    lines.append(f"total seconds: {num(split['total_seconds'])}  (model load included)")
    extra = []
    if stats.get("positions"):
        extra.append(f"positions: {stats['positions']}")
    if finish_reason:
        extra.append(f"finish reason: {finish_reason}")
    if stats.get("fallback"):
        extra.append("fallback: full prompt used")
    if extra:
        lines.append("; ".join(extra))
    return lines


class StepBar:
    """A tiny step progress bar (tqdm on stderr, hidden when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        disable = None if enabled is None else not enabled
        self._bar = tqdm(
            total=total,
            desc="loading",
            unit="model",
            disable=disable,
            file=sys.stderr,
            leave=False,
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]",
        )
        self._started = False

    def __call__(self, description: str) -> None:
        """Finish the previous step and start the next one, described."""
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(description)

    def close(self) -> None:
        """Finish the last step and remove the bar."""
        if self._started:
            self._bar.update(1)
        self._bar.close()


@contextlib.contextmanager
def steps(names: Sequence[str], *, enabled: bool | None = None) -> Iterator[StepBar]:
    """A :class:`StepBar` over ``names`` that is closed on exit."""
    bar = StepBar(len(names), enabled)
    try:
        yield bar
    finally:
        bar.close()
