"""ServerSettings (env, JSON/TOML file) and the ``specprefill serve`` launcher: no vLLM, no model, no sockets."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from specprefill import cli
from specprefill.cli import serve
from specprefill.errors import ConfigurationError
from specprefill.server.settings import ServerSettings


def test_nothing_set_means_pruning_off_with_defaults() -> None:
    settings = ServerSettings.load({})
    assert not settings.enabled
    assert settings.device == "cpu" and settings.queue_size >= 1 and settings.deadline_seconds > 0
    assert settings.prune_config().keep_rate == 0.3


def test_environment_variables_and_shortcuts() -> None:
    settings = ServerSettings.load(
        {
            "SPECPREFILL_SERVER_SPECULATOR": "smollm2-135m",
            "SPECPREFILL_SERVER_CONFIG_JSON": '{"keep_rate": 0.5, "min_prompt_tokens": 10, "chunk_size": 16}',
            "SPECPREFILL_SERVER_KEEP_RATE": "0.2",
            "SPECPREFILL_SERVER_DEADLINE_SECONDS": "1.5",
            "SPECPREFILL_SERVER_PRELOAD": "false",
            "PATH": "/usr/bin",
        }
    )
    assert settings.enabled and settings.speculator == "smollm2-135m"
    assert settings.deadline_seconds == 1.5 and settings.preload is False
    config = settings.prune_config()
    assert (config.keep_rate, config.min_prompt_tokens, config.chunk_size) == (0.2, 10, 16)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_file_settings_and_environment_wins(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"server{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"speculator": "a", "device": "cuda:0", "config": {"keep_rate": 0.1}}))
    else:
        path.write_text('speculator = "a"\ndevice = "cuda:0"\n[config]\nkeep_rate = 0.1\n')
    settings = ServerSettings.load({"SPECPREFILL_SERVER_CONFIG": str(path), "SPECPREFILL_SERVER_SPECULATOR": "b"})
    assert (settings.speculator, settings.device) == ("b", "cuda:0")
    assert settings.prune_config().keep_rate == 0.1


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SPECPREFILL_SERVER_KEEP_RATE": "1.5"}, "SPECPREFILL_SERVER_KEEP_RATE"),
        ({"SPECPREFILL_SERVER_QUEUE_SIZE": "0"}, "SPECPREFILL_SERVER_QUEUE_SIZE"),
        ({"SPECPREFILL_SERVER_DEADLINE_SECONDS": "soon"}, "SPECPREFILL_SERVER_DEADLINE_SECONDS"),
        ({"SPECPREFILL_SERVER_CONFIG_JSON": "[1, 2]"}, "JSON object"),
        ({"SPECPREFILL_SERVER_CONFIG_JSON": '{"keep_rte": 0.2}'}, "keep_rte"),
        ({"SPECPREFILL_SERVER_CONFIG": "/no/such/file.json"}, "cannot be read"),
        ({"SPECPREFILL_SERVER_CONFIG": "settings.yaml"}, ".json or .toml"),
    ],
)
def test_bad_settings_name_the_fix(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle.replace(".", r"\.")):
        ServerSettings.load(env)


def test_broken_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("speculator = \n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        ServerSettings.load({"SPECPREFILL_SERVER_CONFIG": str(path)})


def test_unknown_variable_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="specprefill.server"):
        settings = ServerSettings.load({"SPECPREFILL_SERVER_SPECULATR": "x"})
    assert not settings.enabled
    assert "SPECPREFILL_SERVER_SPECULATR" in caplog.text


def _args(**kwargs: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "model": "org/base",
        "speculator": "org/small",
        "keep_rate": 0.1,
        "min_prompt_tokens": None,
        "device": "cuda:0",
        "deadline": None,
        "config": None,
        "host": "0.0.0.0",
        "port": 9000,
    }
    return argparse.Namespace(**{**defaults, **kwargs})


def test_launch_command_sets_environment_and_passes_vllm_options() -> None:
    argv, env = serve.launch_command(_args(), ["--tensor-parallel-size", "8"], environ={"HOME": "/h"})
    assert argv[1:5] == ["-m", "specprefill.server.vllm_serve", "--model", "org/base"]
    assert argv[-2:] == ["--tensor-parallel-size", "8"]
    assert argv[argv.index("--port") + 1] == "9000" and argv[argv.index("--host") + 1] == "0.0.0.0"
    assert env["SPECPREFILL_SERVER_SPECULATOR"] == "org/small"
    assert env["SPECPREFILL_SERVER_KEEP_RATE"] == "0.1" and env["SPECPREFILL_SERVER_DEVICE"] == "cuda:0"
    assert "SPECPREFILL_SERVER_DEADLINE_SECONDS" not in env and env["HOME"] == "/h"
    middlewares = [argv[i + 1] for i, flag in enumerate(argv) if flag == "--middleware"]
    assert middlewares == [serve.MIDDLEWARE, serve.BODY_LIMIT_MIDDLEWARE]  # the body limit is the outermost


def test_serve_dry_run_prints_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["serve", "org/base", "--speculator", "org/small", "--keep-rate", "0.2", "--dry-run", "--max-num-seqs", "4"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "SPECPREFILL_SERVER_KEEP_RATE=0.2" in out
    assert "specprefill.server.vllm_serve --model org/base" in out and "--max-num-seqs 4" in out


def test_serve_refuses_bad_settings_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "org/base", "--speculator", "s", "--keep-rate", "1.5", "--dry-run"]) == 2
    assert "SPECPREFILL_SERVER_KEEP_RATE" in capsys.readouterr().err
