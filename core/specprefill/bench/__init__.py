"""``specprefill bench overhead``: the speculator's cost next to a plain prefill, measured side by side.

Only what the installed command needs lives here. The evaluation harness (RULER-style tasks, baselines,
quality and TTFT runners, the report) is the top-level ``benchmarks`` package of the repository, run from a
checkout with ``python -m benchmarks.<module>``; it is not part of the installed library.
"""

from __future__ import annotations

__all__: list[str] = []
