"""The ``specprefill`` console script: in-process ``main([...])`` calls and real subprocesses."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli_support import DOC, run_cli
from specprefill import cli
from specprefill.cli import ask, bench, errors, info, options
from specprefill.prompt import documents


# --- no model ----------------------------------------------------------------------------------------
def test_all_is_explicit() -> None:
    from specprefill.cli import app, output, prune

    for module in (cli, app, ask, bench, errors, info, options, output, prune, documents):
        assert set(module.__all__) <= set(dir(module)), module.__name__
    assert cli.__all__ == ["build_parser", "main"]


def test_every_subcommand_is_registered_explicitly() -> None:
    from specprefill.cli import app

    names = [m.__name__.rsplit(".", 1)[1] for m in app.COMMANDS]
    assert names == ["prune", "ask", "bench", "serve", "heads", "info"]
    assert list(bench.BENCHMARKS) == ["overhead"]
    assert bench.BENCHMARKS["overhead"].module == "specprefill.bench.overhead"


def test_cli_modules_stay_small() -> None:
    folder = Path(cli.__file__).parent
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in folder.glob("*.py")}
    assert sizes and max(sizes.values()) <= 400, sizes


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("prune", "ask", "info"):
        assert command in out
    assert cli.main(["--version"]) == 0
    assert "specprefill" in capsys.readouterr().out


def test_no_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_unknown_option_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prune", "--no-such-flag"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_bad_keep_rate_is_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    assert cli.main(["prune", str(doc), "--keep-rate", "1.5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "keep_rate" in lines[0]
    assert "Traceback" not in captured.err


def test_bad_keep_rate_subprocess(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    proc = run_cli("prune", str(doc), "--keep-rate", "0")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "keep_rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_verbose_error_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["prune", str(tmp_path / "missing.txt"), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "{tmp}/no-such-folder", "what?"], "does not exist"),
        (["ask", "{tmp}/empty", "what?"], "no non-empty text files"),
        (["ask", "{tmp}/a.txt", "what?"], "is not a folder"),
        (["prune", "{tmp}/no-such-file.txt"], "does not exist"),
        (["prune", "{tmp}/empty"], "is a folder"),
        (["prune", "{tmp}/blank.txt"], "is empty"),
        (["prune", "{tmp}/a.txt", "--importance"], "--importance"),
        (["ask", "{tmp}", "   "], "question is empty"),
        (["ask", "{tmp}", "what?", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["prune", "{tmp}/a.txt", "--chunk-size", "0"], "chunk_size"),
    ],
)
def test_user_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "blank.txt").write_text("  \n\t ")
    assert cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_bench_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "no-such-benchmark"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown benchmark") and "overhead" in err and "python -m benchmarks" in err
    assert cli.main(["bench", "quality"]) == 2  # the evaluation harness is not part of the library
    assert cli.main(["bench", "overhead", "--help"]) == 0  # the benchmark's own help; nothing is loaded
    assert "overhead" in capsys.readouterr().out


def test_info_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "specprefill" in out and "smollm2-135m" in out and "cache dir" in out and "extras" in out
    assert cli.main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= {"version", "extras", "embedded_models", "cache_dir"}
    assert set(data["extras"]) == {"hf", "openai", "vllm", "langchain", "llama-index"}
    assert "installed" in data["embedded_models"]["smollm2-135m"]
    # the packaged profile, unless a calibrated one in the cache comes first
    assert data["embedded_models"]["smollm2-135m"]["head_profile"].endswith("smollm2-135m.json")
    if data["embedded_models"]["smollm2-135m"]["installed"]:
        assert "retrieval-head profile: " in out
    from specprefill.speculator import loading as models

    chooser = getattr(models, "default_dtype", None)  # the loader's choice, where this specprefill has one
    if chooser is None or importlib.util.find_spec("torch") is None:
        assert data["default_dtype"] is None
    else:
        assert data["default_dtype"]["cpu"] == str(chooser("cpu")).removeprefix("torch.")


def test_cli_import_is_light() -> None:
    code = "import sys, specprefill.cli; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_decode_bytes_never_raises() -> None:
    assert documents.decode_bytes(b"caf\xc3\xa9 \xff\xfe ok") == "café \ufffd\ufffd ok"
    assert documents.decode_bytes(b"\xef\xbb\xbfhello") == "hello"


def test_load_documents_sorted_with_skips(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"second \xff file")
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\x00\x00data")
    (tmp_path / ".hidden.txt").write_text("secret")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("nested")
    docs = documents.load_documents(tmp_path)
    assert [d.name for d in docs] == ["a.txt", "b.txt", "sub/c.md"]
    assert docs[1].text == "second \ufffd file"
    assert [d.name for d in documents.load_documents(tmp_path, "*.txt")] == ["a.txt", "b.txt"]


def test_stream_answer_trims_white_space(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    final = SimpleNamespace(stats=None)
    pieces = [" ", "\nHello", " world", "\n", "\n", ""]

    class _Engine:
        def stream(self, messages: Any, **kwargs: Any) -> Any:
            assert kwargs == {"max_new_tokens": 4}
            for i, text in enumerate(pieces):
                yield SimpleNamespace(text=text, result=final if i == len(pieces) - 1 else None)

    assert ask.stream_answer(_Engine(), [], {"max_new_tokens": 4}) is final  # type: ignore[arg-type]
    assert capsys.readouterr().out == "Hello world\n"


def test_ask_messages_layout() -> None:
    docs = [documents.Document("a.txt", "Alpha text.\n"), documents.Document("b.txt", "Beta text.")]
    messages = documents.ask_messages(docs, " Who? ")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == documents.ASK_SYSTEM_PROMPT
    user = messages[1]["content"]
    assert user.index("[source: a.txt]\nAlpha text.") < user.index("[source: b.txt]\nBeta text.")
    assert user.endswith("\n\nQuestion: Who?")
    assert documents.question_messages("Doc.\n\n", "Why?") == [{"role": "user", "content": "Doc.\n\nQuestion: Why?"}]


# --- robustness: size guard, binary input, unexpected failures ---------------------------------------
def test_size_estimate_counts_windows_and_time() -> None:
    from specprefill.config import SpecPrefillConfig

    config = SpecPrefillConfig()
    assert options.size_estimate(4000, config) == (1000, 1, 4.0)
    tokens, windows, seconds = options.size_estimate(5 * 2**20, config)
    assert tokens == 1_310_720 and windows == -(-tokens // (8192 - 512 - 8)) and seconds == pytest.approx(5243, 1)


def test_large_input_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.txt"
    big.write_text("word " * (options.SIZE_LIMIT_TOKENS * options.CHARS_PER_TOKEN // 5 + 100))
    assert cli.main(["prune", str(big)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "tokens" in err and "window" in err
    assert "pass --force" in err and "CPU time" in err
    (tmp_path / "docs").mkdir()
    big.rename(tmp_path / "docs" / "big.txt")
    assert cli.main(["ask", str(tmp_path / "docs"), "what?"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_force_warns_with_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    from specprefill.config import SpecPrefillConfig
    from specprefill.errors import PromptTooLongError

    n_chars = (options.SIZE_LIMIT_TOKENS + 1) * options.CHARS_PER_TOKEN
    with pytest.raises(PromptTooLongError, match="--force"):
        options.check_size(n_chars, SpecPrefillConfig(), force=False, source="x.txt")
    with caplog.at_level("WARNING", logger="specprefill"):
        options.check_size(n_chars, SpecPrefillConfig(), force=True, source="x.txt")
    assert "x.txt is about 50,001 tokens" in caplog.text and "running anyway" in caplog.text
    options.check_size(n_chars - options.CHARS_PER_TOKEN, SpecPrefillConfig(), force=False, source="x.txt")


def test_endless_or_huge_input_stops_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"a" * (options.read_limit(argparse_namespace(force=False)) + 1))
    assert cli.main(["prune", str(huge)]) == 2  # a file: estimated from its size, nothing read
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "window" in err and "--force" in err
    import io

    class _Stdin:  # a pipe: no size known, reading stops at the cap
        buffer = io.BytesIO(huge.read_bytes())

    monkeypatch.setattr(sys, "stdin", _Stdin())
    assert cli.main(["prune", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: <stdin> is larger than") and "(stopped reading there)" in err and "--force" in err


def argparse_namespace(**values: Any) -> Any:
    import argparse

    return argparse.Namespace(**values)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_binary_input_is_reported_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blob = tmp_path / "image.png"
    blob.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    for path in (str(blob), "/dev/zero"):
        assert cli.main(["prune", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is a binary file" in err and len(err.strip().splitlines()) == 1


def test_binary_files_in_a_folder_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    with caplog.at_level("WARNING", logger="specprefill"):
        docs = documents.load_documents(tmp_path)
    assert [d.name for d in docs] == ["a.txt"] and "skipping binary file" in caplog.text


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), "error: out of memory; give a smaller input"),
        (RuntimeError("boom: secret prompt text\nsecond line " + "x" * 300), "error: unexpected RuntimeError: boom"),
    ],
)
def test_unexpected_failures_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    exc: BaseException,
    expected: str,
) -> None:
    from specprefill.cli import prune

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise exc

    monkeypatch.setattr(prune, "read_text_input", explode)
    assert cli.main(["prune", str(tmp_path / "a.txt")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected) and "Traceback" not in err
    assert "second line" not in err and len(lines[0]) < 260


def test_short_reason_and_full_message_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    exc = ValueError("first line\nsecond line with the prompt")
    assert errors.short_reason(exc) == "ValueError: first line"
    assert errors.short_reason(KeyError()) == "KeyError"
    assert errors.short_reason(ValueError("y" * 500)).endswith("…")
    with caplog.at_level("DEBUG", logger="specprefill"):
        assert errors.fail(exc, verbose=False) == 2
    debug = [r for r in caplog.records if r.levelname == "DEBUG"]
    assert debug and "second line with the prompt" in debug[0].getMessage()


def test_info_finds_models_shipped_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    for i, piece in enumerate((b"first half|", b"second half")):
        package = tmp_path / f"fake_model_part{i + 1}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"fake.gguf.part{i:02d}").write_bytes(piece)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SPECPREFILL_CACHE_DIR", str(tmp_path / "cache"))
    from specprefill.speculator import embedded

    entry = embedded.EmbeddedModel(
        name="fake-parts",
        module="fake_model_not_a_module",
        filename="fake.gguf",
        pip_install="pip install fake-model",
        description="a test model in two parts",
        parts=tuple((f"fake_model_part{i + 1}", f"data/fake.gguf.part{i:02d}") for i in range(2)),
    )
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake-parts", entry)
    status = info.embedded_model_status("fake-parts")
    assert status["installed"] is True and status["problem"] is None
    assert Path(status["path"]).read_bytes() == b"first half|second half"
    monkeypatch.setitem(
        embedded.EMBEDDED_MODELS,
        "fake-parts",
        entry.__class__(**{**entry.__dict__, "parts": (("fake_model_missing_part", "data/x"),)}),
    )
    missing = info.embedded_model_status("fake-parts")
    assert missing["installed"] is False and "pip install fake-model" in missing["problem"]


def test_python_dash_m_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "specprefill.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stdout.startswith("specprefill ")
