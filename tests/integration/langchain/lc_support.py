"""Shared fixtures for the LangChain adapter tests (imported by the test modules that use them).

There is deliberately no ``conftest.py`` in this folder: a second module named ``conftest`` would shadow
``tests/conftest.py`` for the ``from conftest import needs_model`` imports of every other test module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = ROOT / "examples" / "documents"
QUESTION = "In which year was the stone bridge in Lanternfield completed?"


@pytest.fixture(scope="session")
def lc_engine(speculator: Any) -> Any:
    """SmolLM2-135M as speculator and as base, sharing one copy of the weights (the session speculator)."""
    from specprefill.backends.transformers import TransformersBackend
    from specprefill.engine import SpecPrefillEngine

    base = TransformersBackend(speculator.model, speculator.tokenizer, name="smollm2-135m")
    return SpecPrefillEngine(speculator, base)


@pytest.fixture(scope="session")
def long_messages() -> list[tuple[str, str]]:
    """A system prompt and one ~950-token document with a question: long enough to be pruned."""
    document = (DOCUMENTS / "lanternfield_history.txt").read_text(encoding="utf-8")
    return [("system", "Answer briefly from the document."), ("human", f"{document}\n\nQuestion: {QUESTION}")]
