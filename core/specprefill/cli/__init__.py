"""The ``specprefill`` console script: ``prune``, ``ask``, ``bench``, ``serve`` and ``info``.

Examples::

    specprefill prune report.txt --question "Who signed the lease?" --html report.html
    cat notes.txt | specprefill prune - --keep-rate 0.2 --json
    specprefill ask examples/documents "In which year was the stone bridge in Lanternfield completed?"
    specprefill bench overhead
    specprefill serve smollm2-135m --speculator smollm2-135m --keep-rate 0.3 --port 8000
    specprefill info

One module per subcommand (:mod:`~specprefill.cli.prune`, :mod:`~specprefill.cli.ask`,
:mod:`~specprefill.cli.bench`, :mod:`~specprefill.cli.serve`, :mod:`~specprefill.cli.info`), registered in
:mod:`~specprefill.cli.app`.
Every failure prints one ``error: ...`` line on stderr and exits with status 2: typed errors
(:class:`specprefill.SpecPrefillError`) with their message, ``MemoryError`` as "out of memory", anything
else as its type and a short reason; ``--verbose`` shows log messages and the traceback. Inputs above about
50,000 tokens stop with an estimate of the speculator's work unless ``--force`` is given. Heavy libraries
(torch, transformers) are imported only by the commands that load a model.
"""

from __future__ import annotations

from specprefill.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
