"""Helpers shared by the CLI tests (unit and integration): the installed console script, run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("specprefill")

DOC = (
    "The Orchard Street community garden opened in 2011 with twelve raised beds. "
    "Volunteers meet every Sunday at nine to water the beds and turn the compost. "
    "The garden's apple tree, a Bramley planted by Edith Crane, gave 41 kilograms of fruit last year. "
    "A rain barrel collects water from the shed roof, and the tool shed key hangs behind the noticeboard. "
) * 2


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.exists():
        pytest.skip(f"console script not installed at {SCRIPT}")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return (
        subprocess.run([str(SCRIPT), *args], input=stdin, capture_output=True, timeout=timeout, env=env, check=False)
        if stdin is not None
        else subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    )
