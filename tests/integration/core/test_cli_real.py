"""The ``specprefill`` console script with the packaged model: prune and ask, in process and as subprocesses."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_support import DOC, run_cli
from conftest import needs_model
from specprefill import cli
from specprefill.cli import options


@pytest.fixture
def use_fixture_speculator(monkeypatch: pytest.MonkeyPatch, speculator: Any) -> Any:
    """Make in-process ``prune`` reuse the session speculator instead of loading its own."""
    monkeypatch.setattr(options, "load_speculator", lambda name, verbose: speculator)
    return speculator


# --- with the packaged model -------------------------------------------------------------------------
@needs_model
def test_prune_text_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str], use_fixture_speculator: Any) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    assert cli.main(["prune", str(doc), "--keep-rate", "0.5", "--lookahead", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "…" in captured.out
    for label in ("tokens in:", "tokens kept:", "keep ratio:", "speculator seconds:"):
        assert label in captured.err
    assert "tokens in" not in captured.out


@needs_model
def test_prune_question_json_and_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], use_fixture_speculator: Any
) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_bytes(b"<script>alert(1)</script> R&D notes. " + DOC.encode())
    page = tmp_path / "out.html"
    question = "Who planted the apple tree?"
    code = cli.main(
        [
            "prune",
            str(doc),
            "--question",
            question,
            "--keep-rate",
            "0.25",
            "--lookahead",
            "2",
            "--json",
            "--importance",
            "--html",
            str(page),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout holds exactly one JSON object
    assert data["question"] == question
    stats = data["stats"]
    assert stats["tokens_in"] == data["original_length"] > stats["tokens_kept"] > 0
    assert stats["pruned"] is True
    assert len(data["importance"]) == data["original_length"]
    assert data["kept_indices"] == sorted(data["kept_indices"])
    assert data["messages"][-1]["content"].endswith(f"Question: {question}")  # the question is protected
    assert data["config"]["min_prompt_tokens"] == 0
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text  # escaped everywhere ...
    shown = html.unescape(re.sub(r"<[^>]+>", "", text.split('id="prompt">', 1)[1]))
    assert "<script>alert(1)</script> R&D notes." in shown  # ... and shown verbatim
    assert 'class="t kept"' in text and 'class="t dropped"' in text
    assert "importance" in text and "token 0 · importance" in text


@needs_model
def test_prune_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, use_fixture_speculator: Any
) -> None:
    import io

    class _Stdin:
        buffer = io.BytesIO(DOC.encode() + b"\xc3(")

    monkeypatch.setattr(sys, "stdin", _Stdin())
    assert cli.main(["prune", "-", "--json", "--lookahead", "1", "--min-prompt-tokens", "100000"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "<stdin>"
    assert data["stats"]["pruned"] is False  # shorter than --min-prompt-tokens: passed through
    assert data["stats"]["tokens_kept"] == data["original_length"]


@needs_model
def test_prune_invalid_utf8_subprocess(tmp_path: Path) -> None:
    doc = tmp_path / "bad.txt"
    doc.write_bytes(b"Invalid bytes \xff\xfe\xc3( here. " + DOC.encode("latin-1") + b"\xe9t\xe9 caf\xe9")
    proc = run_cli("prune", str(doc), "--keep-rate", "0.3", "--lookahead", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["source"] == str(doc)
    assert "\ufffd" in data["text"] or data["stats"]["tokens_kept"] < data["original_length"]
    assert 0 < data["stats"]["tokens_kept"] < data["stats"]["tokens_in"]
    assert "Traceback" not in proc.stderr


@needs_model
def test_ask_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "garden.txt").write_text(DOC)
    (folder / "bakery.txt").write_bytes(b"The Lindqvist bakery opens at six and sells rye bread for 4 euros. \xff" * 3)
    code = cli.main(
        [
            "ask",
            str(folder),
            "How much is the rye bread?",
            "--max-new-tokens",
            "8",
            "--keep-rate",
            "0.5",
            "--lookahead",
            "2",
        ]
    )  # streamed (the default)
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip()  # the answer
    for label in (
        "tokens in:",
        "tokens kept:",
        "keep ratio:",
        "model load seconds:",
        "speculator seconds:",
        "base prefill seconds:",
        "decode seconds:",
        "total seconds:",
        "documents: 2 (bakery.txt, garden.txt)",
    ):
        assert label in captured.err
    assert "Traceback" not in captured.err


@needs_model
def test_ask_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], use_fixture_speculator: Any) -> None:
    (tmp_path / "garden.txt").write_text(DOC)
    (tmp_path / "notes.txt").write_text("The shed was painted blue in May. " * 8)
    code = cli.main(
        [
            "ask",
            str(tmp_path),
            "Who planted the apple tree?",
            "--max-new-tokens",
            "6",
            "--lookahead",
            "2",
            "--glob",
            "*.txt",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sources"] == ["garden.txt", "notes.txt"]
    assert isinstance(data["answer"], str) and data["finish_reason"] in ("stop", "length")
    stats = data["stats"]
    assert stats["tokens_in"] > stats["tokens_kept"] > 0
    for key in ("speculator_seconds", "base_prefill_seconds", "total_seconds"):
        assert stats[key] >= 0
    split = data["time_split"]
    assert set(split) == {
        "model_load_seconds",
        "speculator_seconds",
        "base_prefill_seconds",
        "decode_seconds",
        "total_seconds",
    }
    assert split["total_seconds"] >= split["model_load_seconds"] + split["speculator_seconds"]
    assert data["prune"]["messages"][-1]["content"].endswith("Question: Who planted the apple tree?")
