"""Report aggregation, tables, markdown and plots from synthetic results (no model)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import quality, report, ttft

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _retention(method: str, rate: float, task: str, value: float, length: int = 1024) -> dict[str, Any]:
    return {
        "sample_id": f"{task}/{length}/0",
        "task": task,
        "length": length,
        "tokens": length + 20,
        "method": method,
        "keep_rate": rate,
        "kept_tokens": int(rate * length),
        "keep_ratio": rate,
        "context_keep_ratio": rate,
        "retention": value,
        "retained_all": value == 1.0,
        "method_seconds": 0.5,
        "note": "",
    }


def _accuracy(base: str, method: str, rate: float, score: float) -> dict[str, Any]:
    return {
        "sample_id": "niah_single/1024/0",
        "task": "niah_single",
        "length": 1024,
        "tokens": 1044,
        "base": base,
        "method": method,
        "keep_rate": rate,
        "score": score,
        "answer": " 1234567.",
        "base_prompt_tokens": 100,
        "method_seconds": 0.5,
        "base_prefill_seconds": 0.2,
        "ttft_seconds": 0.7,
        "positions": "original",
    }


def _quality_result() -> dict[str, Any]:
    rows = [_retention("full", 1.0, t, 1.0) for t in ("niah_single", "qa_multidoc")]
    for rate in (0.1, 0.5):
        rows += [
            _retention("specprefill-lah8", rate, "niah_single", 1.0),
            _retention("specprefill-lah8", rate, "qa_multidoc", 0.0),
            _retention("random", rate, "niah_single", rate),
            _retention("random", rate, "qa_multidoc", 0.0),
        ]
    acc = [_accuracy("smollm2-135m", "full", 1.0, 1.0)]
    acc += [
        _accuracy("smollm2-135m", m, r, s) for m, s in (("specprefill-lah8", 1.0), ("random", 0.0)) for r in (0.1, 0.5)
    ]
    meta = {
        "bench": "quality",
        "samples": 2,
        "speculator": "smollm2-135m",
        "bases": ["smollm2-135m"],
        "needle_tasks": ["niah_single"],
        "skipped": {"longllmlingua": "not installed"},
        "options": {
            "tasks": ["niah_single", "qa_multidoc"],
            "lengths": [1024],
            "samples": 1,
            "seed": 0,
            "keep_rates": [0.1, 0.5],
            "llmlingua_samples": 1,
            "llmlingua_lengths": [1024],
            "accuracy_samples": 1,
            "accuracy_lengths": [1024],
        },
        "corpus": {"description": "test corpus", "tokens": 100, "fingerprint": "abc"},
        "versions": {"python": "3.x"},
        "machine": {"cpus": 2, "load_average_1m": 5.0},
        "wall": {"total_seconds": 60.0, "load_seconds": 5.0, "selection_seconds": 40.0, "accuracy_seconds": 15.0},
        "finished": "now",
    }
    return {"meta": meta, "rows": rows, "accuracy": acc}


def _ttft_result() -> dict[str, Any]:
    base = {
        "tokens": 2048,
        "kept_tokens": 2048,
        "keep_ratio": 1.0,
        "method_seconds": 0.0,
        "runs": 2,
        "flop_ratio": 0.0,
        "ceiling": 1.0,
        "fraction_of_ceiling": 1.0,
        "ceiling_achieved": 1.0,
    }
    rows = [
        {
            **base,
            "method": "full",
            "keep_rate": 1.0,
            "base_prefill_seconds": 40.0,
            "ttft_seconds": 40.0,
            "full_ttft_seconds": 40.0,
            "speedup": 1.0,
        }
    ]
    for rate, t in ((0.1, 10.0), (0.3, 16.0)):
        rows.append(
            {
                **base,
                "method": "specprefill-lah8",
                "keep_rate": rate,
                "kept_tokens": int(2048 * rate),
                "keep_ratio": rate,
                "method_seconds": 4.0,
                "base_prefill_seconds": t - 4,
                "ttft_seconds": t,
                "full_ttft_seconds": 40.0,
                "speedup": 40 / t,
                "flop_ratio": 0.09,
                "ceiling": 1 / (rate + 0.09),
                "fraction_of_ceiling": (40 / t) * (rate + 0.09),
                "ceiling_achieved": 1 / (rate + 0.09),
            }
        )
    meta = {
        "bench": "ttft",
        "options": {"repeats": 2},
        "base_shape": {
            "name": "smollm2-1.7b (random weights)",
            "hidden": 2048,
            "layers": 24,
            "heads": 32,
            "kv_heads": 32,
            "intermediate": 8192,
            "vocab": 49152,
        },
        "base_parameters": 1.71e9,
        "speculator": "smollm2-135m",
        "speculator_parameters": 1.35e8,
        "dtype": "torch.bfloat16",
        "torch_threads": 2,
        "skipped": {},
        "flop_formula": "F",
        "versions": {},
        "machine": {"cpus": 2},
        "finished": "now",
        "wall": {"total_seconds": 300.0, "build_base_seconds": 5.0},
    }
    return {"meta": meta, "rows": rows}


def test_aggregate_and_markdown_table() -> None:
    rows = [{"m": "a", "v": 1.0}, {"m": "a", "v": 3.0}, {"m": "b", "v": 5.0}]
    assert report.aggregate(rows, ["m"], "v") == {("a",): (2.0, 2), ("b",): (5.0, 1)}
    assert report.aggregate(rows, ["m"], lambda r: 2 * r["v"], where=lambda r: r["m"] == "b") == {("b",): (10.0, 1)}
    assert report.markdown_table(["x", "y"], [[1, 2]]) == "| x | y |\n|---|---|\n| 1 | 2 |"
    assert report.method_order(["rag", "zzz", "full", "random"]) == ["full", "random", "rag", "zzz"]


def test_quality_tables_and_headline() -> None:
    result = _quality_result()
    table = report.retention_table(result, needle_only=True)
    assert "| SpecPrefill (look-ahead 8) | 100% | 100% | 1 |" in table
    assert "| random chunks | 10% | 50% | 1 |" in table
    assert report.needle_headline(result, 0.1) == {"full": 1.0, "specprefill-lah8": 1.0, "random": 0.1}
    assert "| SpecPrefill (look-ahead 8) | 100% | 0% |" in report.retention_by(result, "task", 0.1)
    assert "| random chunks | 0% | 0% |" in report.accuracy_table(result, "smollm2-135m")
    assert "smollm2-135m" in report.quality_summary(result)


def test_render_report_mentions_what_could_not_run() -> None:
    text = report.render_report({"quality": _quality_result(), "ttft": _ttft_result()}, [], "plots skipped")
    assert "**Headline:** at 10% keep on the needle tasks SpecPrefill (look-ahead 8) keeps" in text
    assert "**Headline (SpecPrefill, look-ahead 8):** 2048 tokens @ 10%: 4.00×" in text
    assert "Random weights: timing only" in text
    assert "**llmlingua-2**" in text and "**longllmlingua**: not installed" in text
    assert "python -m benchmarks.quality --out examples/report" in text
    assert "_plots skipped_" in text


def test_save_and_report_merges_results(tmp_path: Path) -> None:
    files = report.save_and_report(tmp_path, "quality", _quality_result(), plots=False)
    assert files[0] == tmp_path / "quality.json" and files[1] == tmp_path / "report.md"
    report.save_and_report(tmp_path, "ttft", _ttft_result(), plots=False)
    text = (tmp_path / "report.md").read_text()
    assert "## Answer-span retention" in text and "## Time to first token" in text
    assert json.loads((tmp_path / "ttft.json").read_text())["meta"]["bench"] == "ttft"


@pytest.mark.skipif(not HAS_MPL, reason='plots need matplotlib: pip install "specprefill[bench]"')
def test_plots_are_written(tmp_path: Path) -> None:
    files, note = report.write_plots(tmp_path, {"quality": _quality_result(), "ttft": _ttft_result()})
    assert note is None
    assert [f.name for f in files] == ["retention.png", "accuracy.png", "ttft_speedup.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)


def _parse(configure: Any, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_options_start_from_the_preset() -> None:
    opts = quality.options_from_args(_parse(quality.configure_parser, ["--preset", "smoke", "--keep-rates", "0.2"]))
    assert opts.keep_rates == [0.2] and opts.lengths == quality.PRESETS["smoke"]["lengths"]
    topts = ttft.options_from_args(_parse(ttft.configure_parser, ["--preset", "smoke", "--repeats", "3"]))
    assert topts.base_shape == "tiny" and topts.repeats == 3
    full = ttft.options_from_args(_parse(ttft.configure_parser, []))
    assert full.base_shape == "smollm2-1.7b" and full.lengths == [2048, 4096] and full.keep_rates == [0.1, 0.3]


def test_report_reads_the_preset_from_the_saved_result() -> None:
    result = _quality_result()
    result["meta"]["preset_settings"] = {**result["meta"]["options"], "samples": 4}
    text = report.render_report({"quality": result}, [], None)
    assert "Settings changed from `--preset full` for this run: samples 1 (preset 4)." in text
    result["meta"].pop("preset_settings")
    assert "Settings changed" not in report.render_report({"quality": result}, [], None)


def test_saved_commands_are_shown_in_todays_spelling() -> None:
    assert report.current_command("specprefill bench quality --out x") == "python -m benchmarks.quality --out x"
    assert report.current_command("specprefill bench ttft --repeats 2") == "python -m benchmarks.ttft --repeats 2"
    assert report.current_command("python -m benchmarks.quality") == "python -m benchmarks.quality"


def test_module_exports_resolve() -> None:
    from benchmarks import (
        ablation,
        catalog,
        corpus,
        llmlingua,
        merge,
        methods,
        metrics,
        plan,
        plots,
        quality_options,
        runinfo,
        tables,
        tasks,
        variants,
    )

    for module in (
        corpus,
        tasks,
        methods,
        catalog,
        llmlingua,
        metrics,
        runinfo,
        quality,
        quality_options,
        ttft,
        report,
        merge,
        plan,
        plots,
        tables,
        ablation,
        variants,
    ):
        assert module.__doc__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_presets_and_answer_caps() -> None:
    assert set(quality.PRESETS) == {"full", "smoke"}
    assert quality.max_new_tokens_for("niah_multivalue") >= 4 * 8
    assert quality.max_new_tokens_for("niah_single") == 10


@pytest.mark.parametrize(
    ("measured", "verdict"),
    [
        ((6.0, 6.0), "more than its FLOP share"),
        ((2.0, 2.0), "no more than its FLOP share in this run"),
        ((6.0, 2.0), "about its FLOP share, more at some lengths and less at others"),
    ],
)
def test_the_speculator_share_sentence_follows_the_numbers(measured: tuple[float, float], verdict: str) -> None:
    rows = [
        {"tokens": n, "method_seconds": s, "full_ttft_seconds": 40.0, "flop_ratio": 0.09}
        for n, s in zip((2048, 4096), measured, strict=True)
    ]
    sentence = report.speculator_share_sentence(rows)
    assert verdict in sentence
    assert f"2048 tokens: measured r = {measured[0] / 40:.3f} vs FLOP model 0.090" in sentence
    assert ("uses the CPU less efficiently" in sentence) == (verdict == "more than its FLOP share")
