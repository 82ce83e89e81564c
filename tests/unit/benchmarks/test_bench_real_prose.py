"""The real-prose development set: data integrity, the split, samples, harness rows, merging and the report."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import merge, quality, report
from benchmarks.corpus import load_corpus
from benchmarks.metrics import span_retention, spans_kept
from benchmarks.plan import RunSubsets
from benchmarks.quality_options import QualityOptions, configure_parser, options_from_args
from benchmarks.real_prose import (
    DATA_DIR,
    MAX_TOKENS,
    MIN_TOKENS,
    POSITIONS,
    SPLITS,
    TASK,
    RealProse,
    check,
    load_real_prose,
    occurrences,
    position_of,
    propose_split,
    real_prose_samples,
)
from benchmarks.real_prose_report import real_prose_figures, split_quality
from benchmarks.tasks import TASKS, render_prompt
from specprefill.errors import ConfigurationError


@pytest.fixture(scope="module")
def data() -> RealProse:
    return load_real_prose()


# --- the data -----------------------------------------------------------------------------------------------
def test_data_loads_with_enough_questions_and_two_fact_share(data: RealProse) -> None:
    assert len(data.documents) >= 10
    assert len(data.questions) >= 60
    two = sum(q.facts == 2 for q in data.questions)
    assert two * 3 >= len(data.questions)
    assert all(q.facts in (1, 2) for q in data.questions)
    assert len({q.id for q in data.questions}) == len(data.questions)
    assert check(data) == []


def test_every_answer_occurs_exactly_once_and_its_span_and_position_match(data: RealProse) -> None:
    for q in data.questions:
        text = data.documents[q.document].text
        assert len(q.spans) == len(q.answers) == len(q.positions)
        for answer, (start, end), where in zip(q.answers, q.spans, q.positions, strict=True):
            assert text.count(answer) == 1 and len(occurrences(text, answer)) == 1, (q.id, answer)
            assert text[start:end] == answer, (q.id, answer)
            assert where == POSITIONS[min(2, 3 * start // len(text))]
            assert answer.casefold() not in q.question.casefold()
        if q.facts == 2:
            assert q.spans[0] != q.spans[1]


def test_answers_are_spread_over_the_documents(data: RealProse) -> None:
    positions = [p for q in data.questions for p in q.positions]
    for p in POSITIONS:
        assert positions.count(p) >= len(positions) // 5, p


def test_documents_are_snapshotted_with_source_licence_and_length(data: RealProse) -> None:
    files = sorted(p.name for p in (DATA_DIR / "docs").glob("*.txt"))
    assert files == sorted(d.file for d in data.documents.values())
    size = sum((DATA_DIR / "docs" / f).stat().st_size for f in files) + (DATA_DIR / "real_prose.json").stat().st_size
    assert size < 1_000_000
    for doc in data.documents.values():
        assert doc.source and doc.licence and doc.title and doc.kind
        assert MIN_TOKENS <= doc.tokens <= MAX_TOKENS
        # the recorded count fits the text (a code-heavy README runs near 2 characters a token: digits split)
        assert 2.0 <= len(doc.text) / doc.tokens <= 6.0
        assert any(q.document == doc.id for q in data.questions)
    assert len({d.kind for d in data.documents.values()}) >= 3


def test_check_reports_broken_data(data: RealProse, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    raw = json.loads((DATA_DIR / "real_prose.json").read_text(encoding="utf-8"))
    for d in raw["documents"]:
        (tmp_path / "docs" / d["file"]).write_text((DATA_DIR / "docs" / d["file"]).read_text(encoding="utf-8"))
    first = raw["questions"][0]
    first["spans"][0] = [first["spans"][0][0] + 1, first["spans"][0][1] + 1]
    raw["questions"][1]["answers"] = ["the"]
    raw["questions"][1]["spans"] = [[0, 3]]
    raw["questions"][1]["positions"] = ["start"]
    (tmp_path / "real_prose.json").write_text(json.dumps(raw), encoding="utf-8")
    problems = check(load_real_prose(tmp_path))
    assert any(first["id"] in p and "does not hold" in p for p in problems)
    assert any("occurs" in p and "'the'" in p for p in problems)
    with pytest.raises(ConfigurationError, match="missing"):
        load_real_prose(tmp_path / "nowhere")


def test_position_of_uses_character_thirds() -> None:
    assert [position_of(i, 9) for i in range(9)] == ["start"] * 3 + ["middle"] * 3 + ["end"] * 3
    assert position_of(99, 100) == "end"
    assert occurrences("aaa", "aa") == [0, 1] and occurrences("abc", "") == []


# --- the split ----------------------------------------------------------------------------------------------
def test_split_is_by_document_with_balanced_halves(data: RealProse) -> None:
    assert {d.split for d in data.documents.values()} == set(SPLITS)
    halves = {s: data.select(s) for s in SPLITS}
    docs = {s: {q.document for q in qs} for s, qs in halves.items()}
    assert docs["dev"] and docs["heldout"] and not docs["dev"] & docs["heldout"]
    assert len(halves["dev"]) + len(halves["heldout"]) == len(data.select("all")) == len(data.questions)
    n = {s: len(qs) for s, qs in halves.items()}
    two = {s: sum(q.facts == 2 for q in qs) for s, qs in halves.items()}
    assert abs(n["dev"] - n["heldout"]) <= 0.1 * len(data.questions)
    assert abs(two["dev"] / n["dev"] - two["heldout"] / n["heldout"]) <= 0.1
    assert all(two[s] * 3 >= n[s] for s in SPLITS)
    assert abs(len(docs["dev"]) - len(docs["heldout"])) <= 1
    with pytest.raises(ConfigurationError, match="unknown split"):
        data.select("test")


def test_split_procedure_is_deterministic_and_reproduces_the_recorded_split(data: RealProse) -> None:
    recorded = {d.id: d.split for d in data.documents.values()}
    newest = max(d.since for d in data.documents.values())
    first = {i for i, d in data.documents.items() if d.since == 1}
    original = RealProse(
        documents={i: data.documents[i] for i in first},
        questions=tuple(q for q in data.questions if q.document in first),
        meta=data.meta,
    )
    assert propose_split(original) == propose_split(original) == {i: recorded[i] for i in first}
    older = {i: s for i, s in recorded.items() if data.documents[i].since < newest}
    proposed = propose_split(data, older)
    assert proposed == recorded
    assert all(proposed[i] == s for i, s in older.items())


def test_split_keeps_fixed_documents_and_balances_the_rest(data: RealProse) -> None:
    # the search is exhaustive over each kind's halves: run it on the first version's 15 documents
    first = {i for i, d in data.documents.items() if d.since == 1}
    data = RealProse(
        documents={i: data.documents[i] for i in first},
        questions=tuple(q for q in data.questions if q.document in first),
        meta=data.meta,
    )
    docs = sorted(data.documents)
    fixed = {docs[0]: "heldout", docs[1]: "heldout"}
    proposed = propose_split(data, fixed)
    assert proposed[docs[0]] == proposed[docs[1]] == "heldout"
    assert abs(sum(s == "dev" for s in proposed.values()) - sum(s == "heldout" for s in proposed.values())) <= 1


# --- samples ------------------------------------------------------------------------------------------------
def test_samples_are_deterministic_and_hold_their_answers(data: RealProse) -> None:
    dev = real_prose_samples("dev", data)
    assert dev == real_prose_samples("dev", data) == real_prose_samples("dev")
    every = real_prose_samples("all", data)
    assert len(every) == len(data.questions)
    assert [s.sample_id for s in every] == [f"{TASK}/{q.id}" for q in data.questions]
    by_id = {s.sample_id: s for s in every}
    for s in dev:  # the same question is the same sample in every selection
        assert {k: v for k, v in vars(by_id[s.sample_id]).items() if k != "seed"} == {
            k: v for k, v in vars(s).items() if k != "seed"
        }
    assert [s.seed for s in dev] == list(range(len(dev)))
    for s in every:
        assert s.task == TASK and s.split in SPLITS and s.answer_prefix == ""
        assert s.question.startswith("Question: ")
        assert len(s.answer_positions) == len(s.answers) == len(s.answer_spans)
        for answer, (start, end) in zip(s.answers, s.answer_spans, strict=True):
            assert s.context[start:end] == answer
        prompt = render_prompt(s)
        assert all(prompt.text[a:b] == ans for (a, b), ans in zip(prompt.gold_spans, s.answers, strict=True))
        assert prompt.text.endswith("\nAnswer: ")


def test_build_samples_mixes_generated_tasks_and_real_prose() -> None:
    opts = QualityOptions(tasks=["niah_single", TASK], lengths=[256], samples=1, split="heldout")
    samples = quality.build_samples(opts, load_corpus(["documents"]), lambda t: max(1, len(t) // 4))
    assert samples[0].task == "niah_single" and samples[0].sample_id == "niah_single/256/0"
    rest = samples[1:]
    assert rest and all(s.task == TASK and s.split == "heldout" for s in rest)
    assert TASK not in TASKS  # the presets' default task list stays the generated tasks


def test_accuracy_subset_of_real_prose_ignores_lengths() -> None:
    opts = QualityOptions(tasks=[TASK], accuracy_samples=2, accuracy_tasks=[TASK], accuracy_lengths=[1024])
    subsets = RunSubsets(opts, [], [argparse.Namespace(name="smollm2-135m")])
    samples = real_prose_samples("dev")
    assert [subsets.accuracy(s) for s in samples[:3]] == [True, True, False]
    assert quality.max_new_tokens_for(TASK) >= 24


def test_command_line_selects_a_split() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    opts = options_from_args(parser.parse_args(["--tasks", TASK, "--split", "heldout", "--bases"]))
    assert opts.tasks == [TASK] and opts.split == "heldout" and opts.bases == []
    assert options_from_args(parser.parse_args([])).split == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["--split", "test"])


# --- rows, metrics, merging ---------------------------------------------------------------------------------
def test_spans_kept_flags_each_span() -> None:
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert spans_kept(offsets, np.array([0, 1]), [(0, 5), (7, 10), (20, 25)]) == [True, False, False]
    assert span_retention(offsets, [0, 1], [(0, 5), (7, 10)]) == (0.5, False)
    assert span_retention(offsets, [], []) == (1.0, True)


def test_rows_carry_real_prose_fields_only_for_real_prose() -> None:
    base: dict[str, Any] = {
        "sample_id": "x",
        "task": "niah_single",
        "length": 1,
        "tokens": 1,
        "method": "full",
        "keep_rate": 1.0,
        "kept_tokens": 1,
        "keep_ratio": 1.0,
        "context_keep_ratio": 1.0,
        "retention": 1.0,
        "retained_all": True,
        "method_seconds": 0.0,
    }
    plain = quality.row_dict(quality.RetentionRow(**base))
    assert set(plain) == {*base, "note"}  # the generated tasks' rows keep their old shape
    real = quality.row_dict(
        quality.RetentionRow(
            **{**base, "task": TASK}, split="dev", spans_kept=(True, False), answer_positions=("start", "end")
        )
    )
    assert real["spans_kept"] == [True, False] and real["answer_positions"] == ["start", "end"]
    assert real["split"] == "dev"


def _real_row(qid: str, split: str, method: str, rate: float, kept: list[bool], where: list[str]) -> dict[str, Any]:
    return {
        "sample_id": f"{TASK}/{qid}",
        "task": TASK,
        "length": 3000,
        "tokens": 3050,
        "method": method,
        "keep_rate": rate,
        "kept_tokens": int(3000 * rate),
        "keep_ratio": rate,
        "context_keep_ratio": rate,
        "retention": sum(kept) / len(kept),
        "retained_all": all(kept),
        "method_seconds": 0.5,
        "note": "",
        "split": split,
        "spans_kept": kept,
        "answer_positions": where,
    }


def _real_result(splits: tuple[str, ...] = ("dev", "heldout")) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for split in splits:
        p = split[0]
        rows += [
            _real_row(f"{p}1", split, "full", 1.0, [True], ["start"]),
            _real_row(f"{p}2", split, "full", 1.0, [True, True], ["start", "end"]),
            _real_row(f"{p}3", split, "full", 1.0, [True], ["middle"]),
        ]
        for rate in (0.1, 0.3):
            rows += [
                _real_row(f"{p}1", split, "specprefill-lah8", rate, [True], ["start"]),
                _real_row(f"{p}2", split, "specprefill-lah8", rate, [True, rate > 0.2], ["start", "end"]),
                _real_row(f"{p}3", split, "specprefill-lah8", rate, [split == "dev"], ["middle"]),
            ]
    options = {
        "tasks": [TASK],
        "lengths": [1024],
        "samples": 4,
        "seed": 0,
        "keep_rates": [0.1, 0.3],
        "split": "all" if len(splits) == 2 else splits[0],
        "speculator": "smollm2-135m",
        "methods": ["full", "specprefill-lah8"],
        "bases": [],
        "sources": ["stdlib"],
        "llmlingua_samples": 0,
        "llmlingua_lengths": [1024],
        "accuracy_samples": 0,
        "accuracy_lengths": [1024],
    }
    meta = {
        "bench": "quality",
        "preset": "full",
        "samples": len({r["sample_id"] for r in rows}),
        "speculator": "smollm2-135m",
        "bases": [],
        "needle_tasks": ["niah_single"],
        "ruler_tasks": ["niah_single"],
        "real_prose": {
            "fingerprint": "rp1",
            "split": options["split"],
            "questions": 3 * len(splits),
            "documents": {"doc-a": {"split": "dev"}, "doc-b": {"split": "heldout"}},
        },
        "skipped": {},
        "options": options,
        "corpus": {"description": "test corpus", "tokens": 100, "fingerprint": "abc"},
        "versions": {"python": "3.x"},
        "machine": {"cpus": 2, "load_average_1m": 1.0},
        "wall": {"total_seconds": 60.0, "load_seconds": 5.0, "selection_seconds": 55.0, "accuracy_seconds": 0.0},
        "finished": "now",
        "command": "python -m benchmarks.quality --tasks real_prose",
    }
    return {"meta": meta, "rows": rows, "accuracy": []}


def test_figures_per_split_method_and_rate() -> None:
    rows = _real_result()["rows"]
    dev = real_prose_figures(rows, "specprefill-lah8", 0.1, "dev")
    assert dev["single"] == 1.0 and dev["two_all"] == 0.0 and dev["two_spans"] == 0.5
    assert (dev["start"], dev["middle"], dev["end"]) == (1.0, 1.0, 0.0)
    assert dev["n_single"] == 2 and dev["n_two"] == 1
    held = real_prose_figures(rows, "specprefill-lah8", 0.3, "heldout")
    assert held["single"] == 0.5 and held["two_all"] == 1.0 and held["middle"] == 0.0
    full = real_prose_figures(rows, "full", 0.1, "heldout")  # the full prompt counts at every keep rate
    assert full["single"] == full["two_all"] == full["end"] == 1.0


def test_report_shows_the_real_prose_tables(tmp_path: Path) -> None:
    result = _real_result()
    text = report.render_report({"quality": result}, [], None)
    assert "## Facts kept in real documents" in text
    assert "Answer-span retention on the needle tasks" not in text  # no generated task ran
    assert "### Single-fact questions: answer kept (dev / heldout)" in text
    assert "### Two-fact questions: both facts kept (dev / heldout)" in text
    assert "position in the document, dev" in text and "position in the document, heldout" in text
    assert "| SpecPrefill (look-ahead 8) | 100% / 50% | 100% / 50% |" in text  # single-fact, dev / heldout
    assert "| SpecPrefill (look-ahead 8) | 0% / 0% | 100% / 100% |" in text  # two-fact, both kept
    assert "| SpecPrefill (look-ahead 8) | 100% / 100% / 0% | 100% / 100% / 100% |" in text  # dev positions
    assert "Wall time: 1.0 min" in text and "never tune on it" in text
    assert "- Documents: dev: `doc-a`; heldout: `doc-b`." in text
    summary = report.quality_summary(result)
    assert "Real prose, two-fact questions: both facts kept (dev / heldout)" in summary
    (tmp_path / "quality.json").write_text(json.dumps(result))
    files = report.rebuild(tmp_path, plots=True)  # no generated rows: no quality plots, no error
    assert (tmp_path / "report.md").read_text().count("Facts kept in real documents") == 1
    assert not [f for f in files if f.name == "retention.png"]


def test_generated_tasks_keep_their_report_next_to_real_prose() -> None:
    result = _real_result(("dev",))
    generated = {
        **result["rows"][0],
        "sample_id": "niah_single/1024/0",
        "task": "niah_single",
        "length": 1024,
        "split": "",
    }
    for key in ("split", "spans_kept", "answer_positions"):
        generated.pop(key)
    result["rows"] += [generated, {**generated, "method": "specprefill-lah8", "keep_rate": 0.1, "retention": 0.0}]
    result["meta"]["options"]["tasks"] = ["niah_single", TASK]
    result["meta"]["preset_settings"] = {**result["meta"]["options"], "tasks": ["niah_single", TASK]}
    only_generated, real = split_quality(result)
    assert only_generated is not None and real
    assert {r["task"] for r in only_generated["rows"]} == {"niah_single"}
    assert only_generated["meta"]["options"]["tasks"] == ["niah_single"] and only_generated["meta"]["samples"] == 1
    text = report.render_report({"quality": result}, [], None)
    assert "Retention on the needle tasks" in text and "Facts kept in real documents" in text
    assert text.index("Retention on the needle tasks") < text.index("Facts kept in real documents")
    assert "Settings changed" not in text  # the preset's real-prose task is not reported as dropped
    plain, none = split_quality(only_generated)
    assert plain == only_generated and none == []


def test_real_prose_slices_merge_and_must_share_their_data() -> None:
    dev, held = _real_result(("dev",)), _real_result(("heldout",))
    held["meta"]["command"] = "heldout slice"
    merged = merge.merge_results([dev, held], command="merge")
    meta = merged["meta"]
    assert meta["options"]["split"] == "all" and meta["real_prose"]["split"] == "all"
    assert meta["real_prose"]["questions"] == 6 and meta["real_prose"]["two_fact"] == 2
    assert meta["samples"] == 6 and meta["options"]["tasks"] == [TASK]
    assert report.render_report({"quality": merged}, [], None).count("100% / 50%") >= 1
    other = copy.deepcopy(held)
    other["meta"]["real_prose"]["fingerprint"] = "rp2"
    with pytest.raises(ConfigurationError, match="real_prose data"):
        merge.merge_results([dev, other])
