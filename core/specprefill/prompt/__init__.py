"""From what the caller passed to speculator tokens with protection marks and segments, and back to text.

- :mod:`.prepared`: what a prompt is (:func:`~.prepared.prompt_kind`), :class:`~.prepared.PreparedPrompt` and
  :class:`~.prepared.ScoredPrompt`;
- :mod:`.messages`: chat messages: validation, where each content sits in the rendering, cutting them down;
- :mod:`.protect`: what is never dropped (template, system prompt, the question);
- :mod:`.segments`: where the chunk grid restarts, and the final paragraph (the question);
- :mod:`.assemble`: a :class:`~specprefill.result.PruneResult` from a scored prompt and the kept tokens;
- :mod:`.passages`: several retrieved passages pruned together against a question;
- :mod:`.documents`: reading text files and laying them out as question prompts.
"""

from __future__ import annotations

__all__: list[str] = []
