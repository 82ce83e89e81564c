"""Settings of the quality benchmark: presets, :class:`QualityOptions` and the command-line options.

Presets are saved with every result (``meta["preset_settings"]``), so the report never imports them.
A full run can be split into slices with ``--tasks``, ``--lengths`` and ``--seed`` (each with its own
``--out``) and merged with ``python -m benchmarks.merge``.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.catalog import ALL_METHODS
from benchmarks.corpus import SOURCES
from benchmarks.real_prose import SPLIT_CHOICES
from benchmarks.real_prose import TASK as REAL_PROSE
from benchmarks.tasks import NEEDLE_TASKS, TASKS
from benchmarks.variants import ABLATION_VARIANTS, VARIANTS, parse_variant

__all__ = [
    "BASELINES",
    "PRESETS",
    "TASK_CHOICES",
    "QualityOptions",
    "configure_parser",
    "options_from_args",
    "preset_settings",
]

BASELINES: tuple[str, ...] = tuple(m for m in ALL_METHODS if not m.startswith("specprefill"))
"""The peers and references every preset compares against."""

TASK_CHOICES: tuple[str, ...] = (*TASKS, REAL_PROSE)
"""What ``--tasks`` accepts: the generated tasks, then the fixed real-prose set (not in the presets' defaults)."""

_FULL_METHODS = ["full", "specprefill-lah8", "specprefill-lah1", *ABLATION_VARIANTS, *BASELINES[1:]]


@dataclass
class QualityOptions:
    """Settings of one quality run (see ``--help``); the defaults are the ``full`` preset."""

    out: str = "results"
    speculator: str = "smollm2-135m"
    tasks: list[str] = field(default_factory=lambda: [*TASKS, REAL_PROSE])
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    samples: int = 4
    keep_rates: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3])
    methods: list[str] = field(default_factory=lambda: list(_FULL_METHODS))
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Custom SpecPrefill variants, ``{name: config overrides}`` (``--variants NAME=JSON``)."""
    bases: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m"])
    accuracy_samples: int = 1
    accuracy_lengths: list[int] = field(default_factory=lambda: [1024, 2048])
    accuracy_tasks: list[str] = field(default_factory=lambda: list(TASKS))
    accuracy_keep_rates: list[float] | None = field(default_factory=lambda: [0.1, 0.3])
    """Keep rates answered by the base models (None: all of ``keep_rates``)."""
    accuracy_methods: list[str] | None = field(
        default_factory=lambda: [
            "full",
            "specprefill-lah8",
            "specprefill-default",
            "head-tail",
            "rag",
        ]
    )
    """Methods whose selections the base models answer (None: all)."""
    llmlingua_samples: int = 1
    llmlingua_lengths: list[int] = field(default_factory=lambda: [1024])
    llmlingua_tasks: list[str] = field(default_factory=lambda: list(NEEDLE_TASKS))
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    seed: int = 0
    split: str = "all"
    """Which half of the ``real_prose`` set runs (``dev``, ``heldout`` or ``all``); other tasks ignore it."""
    preset: str = "full"
    plots: bool = True
    threads: int | None = None
    """torch CPU threads (default: torch's choice); 1 is faster when other jobs oversubscribe the CPU."""


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "smoke": {
        "tasks": list(TASKS),
        "lengths": [384],
        "samples": 1,
        "keep_rates": [0.1, 0.5],
        "accuracy_samples": 1,
        "accuracy_lengths": [384],
        "accuracy_tasks": ["niah_single"],
        "accuracy_keep_rates": None,
        "accuracy_methods": None,
        "bases": ["smollm2-135m"],
        "methods": ["full", "specprefill-lah8", "specprefill-lah1", "random", "head-tail", "rag"],
        "llmlingua_samples": 0,
        "llmlingua_lengths": [384],
    },
}
"""Named settings: ``full`` (the defaults of :class:`QualityOptions`: 7 generated tasks x 1k/2k/4k tokens x 4
samples plus both halves of ``real_prose``, keep 5/10/20/30%, the paper's look-ahead 8 and 1, the library
defaults with one ablation row per rule, every baseline; hours of CPU, run it in slices) and ``smoke`` (CI)."""


def preset_settings(preset: str) -> dict[str, Any]:
    """Every option a preset implies (saved with each result, so the report needs no harness import)."""
    return asdict(QualityOptions(**PRESETS[preset], preset=preset))


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the quality benchmark's options to a parser."""
    known = ", ".join([*ALL_METHODS[:1], *VARIANTS, *BASELINES[1:]])
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="full",
        help="starting settings: 'full' (7 tasks x 1k/2k/4k x 4 samples and real_prose, the ablation "
        "variants; hours of CPU: run it in slices) or 'smoke' (CI, about a minute); other options override it",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder (default results/)")
    parser.add_argument("--speculator", default=None, metavar="NAME", help="speculator (default smollm2-135m)")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=TASK_CHOICES,
        default=None,
        metavar="TASK",
        help="tasks (default: every one; the smoke preset: the generated ones): "
        + ", ".join(TASK_CHOICES)
        + f"; {REAL_PROSE} is a fixed set of questions over real documents: it ignores --lengths, "
        "--samples and --seed and runs every question of --split",
    )
    parser.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default=None,
        help=f"half of the {REAL_PROSE} set to run (default all; never tune on heldout)",
    )
    parser.add_argument("--lengths", nargs="+", type=int, default=None, metavar="N", help="prompt lengths in tokens")
    parser.add_argument("--samples", type=int, default=None, metavar="K", help="samples per task x length")
    parser.add_argument("--keep-rates", nargs="+", type=float, default=None, metavar="R")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=f"methods: {known}, specprefill-lahN, or a name defined with --variants",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="NAME=JSON",
        help='custom SpecPrefill variants, e.g. ow64=\'{"observation_window": 64, '
        '"query_reduction": "max"}\' (config overrides on the paper preset; "preset": "default" '
        "starts from the library defaults); they are added to --methods",
    )
    parser.add_argument(
        "--bases",
        nargs="*",
        default=None,
        metavar="NAME",
        help="base models for answer accuracy (default smollm2-135m gemma3-270m; none: skip)",
    )
    parser.add_argument(
        "--accuracy-samples",
        type=int,
        default=None,
        metavar="K",
        help="samples per task x length answered by the base models",
    )
    parser.add_argument("--accuracy-lengths", nargs="+", type=int, default=None, metavar="N")
    parser.add_argument("--accuracy-tasks", nargs="+", choices=TASK_CHOICES, default=None, metavar="TASK")
    parser.add_argument(
        "--accuracy-keep-rates",
        nargs="+",
        type=float,
        default=None,
        metavar="R",
        help="keep rates answered by the base models",
    )
    parser.add_argument(
        "--accuracy-methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="methods whose selections the base models answer",
    )
    parser.add_argument(
        "--llmlingua-samples",
        type=int,
        default=None,
        metavar="K",
        help="samples per task x length compressed by LongLLMLingua (it is slow on CPU)",
    )
    parser.add_argument("--llmlingua-lengths", nargs="+", type=int, default=None, metavar="N")
    parser.add_argument("--llmlingua-tasks", nargs="+", choices=TASK_CHOICES, default=None, metavar="TASK")
    parser.add_argument(
        "--sources", nargs="+", choices=SOURCES, default=None, help="haystack text sources (default: both)"
    )
    parser.add_argument("--seed", type=int, default=None, help="first sample seed (slices: 0, then 2, ...)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--estimate-only",
        action="store_true",
        help="print the plan and the CPU-time estimate, then stop (loads the speculator)",
    )
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of a table")


_OVERRIDABLE = (
    "out", "speculator", "tasks", "lengths", "samples", "keep_rates", "methods", "bases", "accuracy_samples",
    "accuracy_lengths", "accuracy_tasks", "accuracy_keep_rates", "accuracy_methods", "llmlingua_samples",
    "llmlingua_lengths", "llmlingua_tasks", "sources", "seed", "threads", "split",
)  # fmt: skip


def options_from_args(args: argparse.Namespace) -> QualityOptions:
    """Preset values overridden by whatever was given on the command line.

    Raises:
        ConfigurationError: A ``--variants`` entry is not ``NAME=JSON``.

    """
    values: dict[str, Any] = dict(PRESETS[args.preset])
    for key in _OVERRIDABLE:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    opts = QualityOptions(**values, preset=args.preset, plots=not getattr(args, "no_plots", False))
    for spec in getattr(args, "variants", None) or []:
        variant = parse_variant(spec)
        opts.variants[variant.name] = {**variant.overrides, "preset": variant.preset}
        if variant.name not in opts.methods:
            opts.methods.append(variant.name)
    return opts
