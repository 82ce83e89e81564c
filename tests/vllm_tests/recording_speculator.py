"""A ``module:callable`` speculator factory that records what the server keeps (``SPECPREFILL_SERVER_SPECULATOR``).

:func:`recording` wraps the embedded SmolLM2 (float32). For every chat prompt it scores, it re-runs the
server's selection (:func:`specprefill.prompts.select_scored` with the same config, exactly as
``specprefill.server.pruning.score_tokens`` does) and appends one JSON line to
``$SPECPREFILL_TEST_RECORD_DIR/kept.jsonl``: the rendered text, each token's character offsets, the
protected mask and the kept indices. Tests compare ``len(kept)`` with the response's ``tokens_kept`` (so the
record is the server's own decision) and then check which characters of the prompt survived.

The server process imports this module by name, so it stays light (no pytest).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from speculator_factories import FailOnMarker

from specprefill import load_speculator
from specprefill.config import SpecPrefillConfig
from specprefill.prompts import PreparedPrompt, ScoredPrompt, select_scored
from specprefill.speculator import Speculator

RECORD_DIR_ENV = "SPECPREFILL_TEST_RECORD_DIR"
_LOCK = threading.Lock()


class Recording(FailOnMarker):
    """SmolLM2 that writes the kept indices of every chat prompt it scores to ``kept.jsonl``."""

    def score_prompt(self, prompt: Any, config: SpecPrefillConfig | None = None, **kwargs: Any) -> ScoredPrompt:
        scored = self.inner.score_prompt(prompt, config, **kwargs)
        if isinstance(prompt, PreparedPrompt) and prompt.text is not None and config is not None:
            kept = select_scored(scored, config, budget_protected=config.protected_count_toward_budget)
            record = {
                "text": prompt.text,
                "offsets": [list(span) for span in prompt.offsets or []],
                "protected": [int(i) for i, flag in enumerate(scored.protected) if flag],
                "kept": [int(i) for i in kept],
                "n_tokens": len(prompt.input_ids),
            }
            with _LOCK, (Path(os.environ[RECORD_DIR_ENV]) / "kept.jsonl").open("a") as out:
                out.write(json.dumps(record) + "\n")
        return scored


def recording() -> Speculator:
    """The recording SmolLM2-135M speculator (float32)."""
    return Recording(load_speculator("smollm2-135m", dtype="float32"))
