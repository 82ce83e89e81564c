"""What travels between processes: the JSON of the prune endpoint, the stats object and ``vllm_xargs``.

- :mod:`.fields`: readers that check one JSON value each (:class:`~.fields.WireFormatError` names the field);
- :mod:`.stats`: the ``specprefill`` stats object, one schema for the server and every client;
- :mod:`.prune`: requests and replies of ``POST /specprefill/v1/prune`` and the scored-prompt form;
- :mod:`.xargs`: the per-request ``vllm_xargs`` keys, their validation, and the client helpers.
"""

from __future__ import annotations

__all__: list[str] = []
