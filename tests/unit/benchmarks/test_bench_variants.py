"""Ablation support without a model: variants as config overrides, shared scoring, plan, options, tables."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from benchmarks import ablation, plan, quality_options, runinfo, variants
from benchmarks.catalog import build_method
from benchmarks.methods import ImportanceCache, SpecPrefillMethod, prepare_sample
from benchmarks.metrics import ModelShape
from benchmarks.tasks import Sample
from specprefill.config import SpecPrefillConfig
from specprefill.errors import ConfigurationError

Span = tuple[int, int]


def _char_encode(text: str) -> tuple[list[int], list[Span]]:
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]


def _sample(sample_id_seed: int = 0, context: str = "x" * 64) -> Sample:
    return Sample(
        task="niah_single",
        target_tokens=128,
        seed=sample_id_seed,
        instruction="I",
        context=context,
        question="Q?",
        answer_prefix="A",
        answers=("x",),
        answer_spans=((0, 1),),
    )


@dataclass
class _Scored:
    importance: Any


class _CountingSpeculator:
    """Scores by position (later = more important) and counts the passes per look-ahead."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, input_ids: list[int], config: SpecPrefillConfig) -> _Scored:
        self.calls.append(config.lookahead)
        return _Scored(np.arange(len(input_ids), dtype=np.float32))


# --- variants -------------------------------------------------------------------------------------------
def test_parse_variant() -> None:
    v = variants.parse_variant('ow64={"observation_window": 64, "preset": "default"}')
    assert (v.name, dict(v.overrides), v.preset) == ("ow64", {"observation_window": 64}, "default")
    assert variants.parse_variant("plain={}").describe() == "paper"
    for bad, match in (
        ("noequals", "NAME="),
        ("x=[1]", "JSON object"),
        ("x={bad", "not valid JSON"),
        ('x={"preset": "fast"}', "preset must be"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            variants.parse_variant(bad)


def test_variant_lookup_and_validation() -> None:
    assert variants.variant_for("rag") is None
    assert variants.variant_for("specprefill-lah8") is variants.VARIANTS["specprefill-lah8"]
    lah3 = variants.variant_for("specprefill-lah3")
    assert lah3 is not None and variants.build_config(lah3).lookahead == 3
    custom = variants.variant_for("mine", {"mine": {"chunk_size": 16, "preset": "default"}})
    assert custom is not None and custom.preset == "default" and variants.build_config(custom).chunk_size == 16
    with pytest.raises(ConfigurationError, match="no_such_field"):
        variants.build_config(variants.Variant("bad", {"no_such_field": 1}))
    with pytest.raises(ConfigurationError, match="keep_rate"):
        variants.build_config(variants.Variant("bad", {"keep_rate": 2.0}))
    assert set(variants.ABLATION_VARIANTS) < set(variants.VARIANTS)


def test_scoring_key_ignores_selection_fields_only() -> None:
    base = SpecPrefillConfig()
    key = variants.scoring_key(base)
    assert variants.scoring_key(base.with_overrides(keep_rate=0.1, chunk_size=16, max_kept_tokens=5)) == key
    assert variants.scoring_key(base.with_overrides(lookahead=1)) != key
    assert variants.scoring_key(base.with_overrides(pool_kernel=7)) != key
    assert "keep_rate" in variants.SELECTION_FIELDS and "lookahead" not in variants.SELECTION_FIELDS


def test_segment_starts_come_from_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    seen: list[tuple[Any, ...]] = []

    def fake_segment_starts(offsets: Any, text: str, level: str, *, content_spans: Any = ()) -> list[int] | None:
        seen.append((len(offsets), text, level, content_spans))
        return [3, 7]

    module = types.ModuleType("specprefill.prompt.segments")
    module.segment_starts = fake_segment_starts  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "specprefill.prompt.segments", module)
    offsets = [(i, i + 1) for i in range(10)]
    assert variants.segment_starts("0123456789", offsets, [(2, 8)], "sentences") == [3, 7]
    assert seen == [(10, "0123456789", "sentences", [(2, 8)])]
    assert variants.segment_starts("0123456789", offsets, [(2, 8)], "none") == []
    with pytest.raises(ConfigurationError, match="unknown segment level"):
        variants.segment_starts("x", [(0, 1)], [], "words")
    monkeypatch.setitem(sys.modules, "specprefill.prompt.segments", None)  # a library without segment-aware selection
    with pytest.raises(ConfigurationError, match=r"need specprefill\.prompt\.segments"):
        variants.segment_starts("x", [(0, 1)], [], "paragraphs")


# --- shared scoring -------------------------------------------------------------------------------------
def test_variants_share_one_speculator_pass_per_sample_and_scoring_setting() -> None:
    speculator = _CountingSpeculator()
    cache = ImportanceCache()
    custom = {"lah8-c16": {"chunk_size": 16}, "lah8-c8": {"chunk_size": 8}}
    methods = [
        build_method(n, speculator=speculator, cache=cache, variants=custom)
        for n in ("specprefill-lah8", "lah8-c16", "lah8-c8", "specprefill-lah1")
    ]
    assert all(isinstance(m, SpecPrefillMethod) for m in methods)
    for seed in (0, 1):
        prepared = prepare_sample(_sample(seed), _char_encode)
        cache.clear()
        for method in methods:
            selections = method.select(prepared, [0.1, 0.3])
            assert [s.method for s in selections] == [method.name] * 2
            assert all(s.seconds >= 0 for s in selections)
    assert speculator.calls == [8, 1, 8, 1]  # per sample: one look-ahead-8 pass, one look-ahead-1 pass
    assert (cache.computed, cache.reused) == (4, 4)


def test_without_a_cache_every_select_scores_again() -> None:
    speculator = _CountingSpeculator()
    method = build_method("specprefill-lah8", speculator=speculator)
    prepared = prepare_sample(_sample(), _char_encode)
    method.select(prepared, [0.1])
    method.select(prepared, [0.1])
    assert speculator.calls == [8, 8]
    assert isinstance(method, SpecPrefillMethod) and method.segments(prepared) is None


def test_the_defaults_rank_fuse_the_question_words_and_the_ablation_row_does_not() -> None:
    speculator = _CountingSpeculator()
    sample = dataclasses.replace(_sample(context="a zebra here\n" + "x y " * 12), question="Where is the zebra?")
    prepared = prepare_sample(sample, _char_encode)
    fused = build_method("specprefill-default", speculator=speculator)
    plain = build_method("specprefill-no-fusion", speculator=speculator)
    assert isinstance(fused, SpecPrefillMethod) and isinstance(plain, SpecPrefillMethod)
    words = fused.ranking_options(prepared)["words"]
    assert words.shape == (prepared.n_tokens,) and words.max() > 0
    assert plain.ranking_options(prepared) == {} and variants.build_config(plain.variant).lexical_fusion == 0
    assert "lexical_fusion" in variants.SELECTION_FIELDS  # the ablation row shares the defaults' speculator pass


def test_the_stop_words_ablation_row_counts_function_words_and_shares_the_speculator_pass() -> None:
    speculator = _CountingSpeculator()
    sample = dataclasses.replace(_sample(context="what a zebra here\n" + "x y " * 12), question="What is the zebra?")
    prepared = prepare_sample(sample, _char_encode)
    default = build_method("specprefill-default", speculator=speculator)
    counted = build_method("specprefill-no-stop-words", speculator=speculator)
    assert isinstance(default, SpecPrefillMethod) and isinstance(counted, SpecPrefillMethod)
    assert "specprefill-no-stop-words" in variants.ABLATION_VARIANTS
    assert not variants.build_config(counted.variant).lexical_stop_words
    assert variants.scoring_key(default.config) == variants.scoring_key(counted.config)
    with_stop = default.ranking_options(prepared)["words"]
    without = counted.ranking_options(prepared)["words"]
    assert (without > 0).sum() > (with_stop > 0).sum() > 0  # "what" counts only in the ablation row


# --- options, presets, command line ----------------------------------------------------------------------
class _WindowSpeculator(_CountingSpeculator):
    def __init__(self) -> None:
        super().__init__()
        self.windows: list[int] = []

    def score(self, input_ids: list[int], config: SpecPrefillConfig) -> _Scored:
        self.windows.append(config.observation_window)
        return super().score(input_ids, config)


def test_window_is_cut_to_the_final_paragraph_as_the_library_does() -> None:
    speculator = _WindowSpeculator()
    cut = build_method("specprefill-default", speculator=speculator)
    lastw = {"lastw": {"preset": "default", "window_in_final_paragraph": False}}
    whole = build_method("lastw", speculator=speculator, variants=lastw)
    prepared = prepare_sample(_sample(), _char_encode)  # "I\n\n<context>\n\nQ?\nAnswer: A"
    tail = len("Q?\nAnswer: A")
    assert isinstance(cut, SpecPrefillMethod) and isinstance(whole, SpecPrefillMethod)
    assert cut.scoring_config(prepared).observation_window == tail < SpecPrefillConfig().observation_window
    cut.select(prepared, [0.1])
    whole.select(prepared, [0.1])
    assert speculator.windows == [tail, SpecPrefillConfig().observation_window]


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    quality_options.configure_parser(parser)
    return parser.parse_args(argv)


def test_full_preset_is_the_ablation() -> None:
    full = quality_options.preset_settings("full")
    assert full["keep_rates"] == [0.05, 0.1, 0.2, 0.3]
    assert full["lengths"] == [1024, 2048, 4096] and full["samples"] >= 4
    assert "niah_multianswer" in full["tasks"] and full["tasks"][-1] == "real_prose" and len(full["tasks"]) == 8
    assert full["split"] == "all"
    ablation = {
        "specprefill-no-complete",
        "specprefill-no-lexical",
        "specprefill-no-fusion",
        "specprefill-default-lah8",
    }
    assert ablation | {"specprefill-lah8", "specprefill-lah1", "specprefill-default"} <= set(full["methods"])
    assert "rag" in full["methods"] and "longllmlingua" in full["methods"]
    assert "real_prose" not in quality_options.preset_settings("smoke")["tasks"]


def test_custom_variants_join_the_methods_and_the_command() -> None:
    opts = quality_options.options_from_args(
        _args(
            ["--preset", "smoke", "--tasks", "niah_single", "--seed", "4", "--variants", 'w={"observation_window": 8}']
        )
    )
    assert opts.tasks == ["niah_single"] and opts.seed == 4 and opts.methods[-1] == "w"
    assert opts.variants == {"w": {"observation_window": 8, "preset": "paper"}}
    command = runinfo.command_line("python -m benchmarks.quality", opts)
    assert "--preset smoke" in command and """--variants w='{"observation_window":8,"preset":"paper"}'""" in command
    with pytest.raises(ConfigurationError):
        quality_options.options_from_args(_args(["--variants", "broken"]))


# --- plan ---------------------------------------------------------------------------------------------------
def test_plan_counts_work_and_scales_the_calibration() -> None:
    samples = [_sample(0), _sample(1)]
    shape = ModelShape(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=32)
    made = plan.plan_run(
        samples,
        [8, 1],
        lambda s: 5,
        lambda s: [("smollm2-135m", 0.1)] if s.seed == 0 else [],
        lambda s: 0,
        calibration=(1.0, shape),
        answer_tokens=lambda s: 4,
    )
    assert (made.samples, made.speculator_passes, made.selections, made.answers) == (2, 4, 10, 1)
    assert made.estimated_seconds is not None and made.estimated_seconds > 0
    text = plan.describe(made)
    assert "4 speculator passes" in text and "estimated CPU time: about" in text
    unknown = plan.plan_run(
        samples, [8], lambda s: 1, lambda s: [], lambda s: 0, calibration=None, answer_tokens=lambda s: 1
    )
    assert unknown.estimated_seconds is None and "unknown" in plan.describe(unknown)


# --- ablation tables ------------------------------------------------------------------------------------
def _row(method: str, task: str, retention: float, rate: float = 0.1) -> dict[str, Any]:
    return {
        "sample_id": f"{task}/1024/0",
        "task": task,
        "length": 1024,
        "method": method,
        "keep_rate": rate,
        "retention": retention,
        "retained_all": retention == 1.0,
        "method_seconds": 2.0,
    }


def _ablation_result() -> dict[str, Any]:
    ruler = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking", "qa_multidoc"]
    rows = [_row("specprefill-lah8", t, 1.0) for t in ruler] + [_row("specprefill-lah8", "niah_multianswer", 2 / 3)]
    rows += [_row("specprefill-max", t, 0.5) for t in ruler] + [_row("specprefill-max", "niah_multianswer", 1.0)]
    rows += [_row("rag", t, 0.75) for t in ruler]
    meta = {
        "needle_tasks": ruler[:4],
        "ruler_tasks": ruler,
        "scoring": {"computed": 2, "reused": 0},
        "variants": {
            "specprefill-lah8": {"describe": "paper", "scoring_group": 0},
            "specprefill-max": {"describe": "paper + query_reduction=max", "scoring_group": 1},
        },
    }
    return {"meta": meta, "rows": rows}


def test_target_figures() -> None:
    result = _ablation_result()
    lah8 = ablation.target_figures(result, "specprefill-lah8", 0.1)
    assert lah8["needle"] == 1.0 and lah8["niah_multianswer"] == pytest.approx(2 / 3)
    assert lah8["multianswer_all"] == 0.0 and lah8["ruler"] == 1.0
    assert lah8["ruler_vs_rag"] == pytest.approx(25) and lah8["worst_task_vs_rag"] == pytest.approx(25)
    worse = ablation.target_figures(result, "specprefill-max", 0.1)
    assert worse["multianswer_all"] == 1.0 and worse["worst_task_vs_rag"] == pytest.approx(-25)
    assert math.isnan(ablation.target_figures(result, "specprefill-max", 0.3)["needle"])


def test_ablation_section_reads_the_saved_variants() -> None:
    result = _ablation_result()
    text = "\n".join(ablation.ablation_section(result))
    assert "| SpecPrefill, max over queries | `paper + query_reduction=max` | 1 | 57% |" in text
    assert "### Targets at 10% keep" in text and "| embedding retrieval (MiniLM) | 75% |" in text
    assert "computed 2 passes" in text
    result["meta"]["variants"].pop("specprefill-max")
    assert ablation.ablation_section(result) == []
