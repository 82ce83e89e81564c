"""Captured queries and keys to importance: the torch side of steps 3-5 (see :mod:`specprefill.scoring`).

A :class:`Recorder` holds, per layer, the queries the speculator's attention recorded (the observation window
during prefill, then each look-ahead token) and the layer's newest keys. :func:`prompt_importance` turns them
into one score per prompt token without any ``[L, H, Q, N]`` tensor: one KV head's group of query heads at a
time, float32 softmax over the prompt keys, average pooling, then running maxima.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from specprefill.config import SpecPrefillConfig
from specprefill.errors import SpeculatorError
from specprefill.scoring import reduce_queries

if TYPE_CHECKING:
    import torch

__all__ = ["LayersDone", "Recorder", "head_scores", "prefill", "prompt_importance", "row_view"]


class LayersDone(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by :meth:`Recorder.record` after its deepest wanted layer: the rest of the forward pass is unused."""


class Recorder:
    """Per-call store of the newest query of each layer and its newest keys."""

    def __init__(
        self,
        total_length: int,
        query_tail: int = 1,
        layers: Collection[int] | None = None,
        *,
        stop_early: bool = False,
    ) -> None:
        self.total_length = total_length
        self.query_tail = query_tail
        """How many of the newest query positions the next forward pass records (then 1 for look-ahead)."""
        self.layers = None if layers is None else frozenset(layers)
        """Only these layers are recorded (None: every layer)."""
        self.stop_after: int | None = max(self.layers) if stop_early and self.layers else None
        """With ``stop_early`` and a layer list: the deepest listed layer; :meth:`record` raises
        :class:`LayersDone` once it has seen it, so a prefill whose logits nobody reads (no look-ahead step
        follows) skips the deeper layers, the final norm and the head."""
        self.queries: dict[int, list[torch.Tensor]] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self.scaling: dict[int, float] = {}
        self.softcap: dict[int, float | None] = {}
        self.excluded: set[int] = set()

    def record(self, module: Any, query: torch.Tensor, key: torch.Tensor, kwargs: dict[str, Any]) -> None:
        """Store one attention call's newest queries and its keys (skipped for unlisted or short-window layers)."""
        layer = int(module.layer_idx)
        if self.stop_after is not None and layer > self.stop_after:
            raise LayersDone
        if self.layers is not None and layer not in self.layers:
            return
        window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
        if window is not None and int(window) < self.total_length:
            self.excluded.add(layer)
            return
        self.queries.setdefault(layer, []).append(query[:, :, -self.query_tail :, :].detach().clone())
        self.keys[layer] = key.detach()
        scaling = kwargs.get("scaling") or getattr(module, "scaling", None)
        self.scaling[layer] = float(scaling) if scaling else query.shape[-1] ** -0.5
        self.softcap[layer] = kwargs.get("softcap")
        if layer == self.stop_after:
            raise LayersDone


def prefill(model: Any, **inputs: Any) -> Any | None:
    """``model(**inputs)``, or None when the active recorder stopped it after its deepest wanted layer."""
    try:
        return model(**inputs)
    except LayersDone:
        return None


def prompt_importance(
    recorder: Recorder,
    n_prompt: int,
    config: SpecPrefillConfig,
    window_queries: int = 0,
    heads: Mapping[int, Sequence[int]] | None = None,
) -> npt.NDArray[np.float32]:
    """Steps 3-5 from recorded queries and keys: ``[N]`` float32 importance.

    For each layer: logits of every query head against the prompt keys (GQA groups share a KV head), the
    first ``window_queries`` queries (the prompt's last tokens, in order) causally masked so that a query at
    prompt position p sees only keys <= p, float32 softmax over the N prompt keys, average pooling of every
    row, max over heads folded into a running ``[Q, N]`` max over layers; finally the query reduction of
    ``config`` (mean, max or mix). ``heads`` (``{layer: head indices}``, e.g. from a retrieval-head profile)
    restricts the max to those heads; None uses every head of every recorded layer.
    """
    import torch

    running: torch.Tensor | None = None
    for layer in sorted(recorder.queries):
        if heads is not None and layer not in heads:
            continue
        wanted = None if heads is None else heads[layer]
        for _, probs in _head_blocks(recorder, layer, n_prompt, config.pool_kernel, window_queries, wanted):
            block_max = probs.amax(dim=0)
            running = block_max if running is None else torch.maximum(running, block_max)
    if running is None:
        raise SpeculatorError(
            "no attention layer could see the whole prompt (all are sliding-window layers shorter than it); "
            "set SpecPrefillConfig.max_speculator_tokens to the window size so the prompt is scored in windows"
        )
    return reduce_queries(running.cpu().numpy(), config.query_reduction, config.query_mix)


def head_scores(
    recorder: Recorder, n_prompt: int, config: SpecPrefillConfig, n_layers: int, window_queries: int = 0
) -> npt.NDArray[np.float32]:
    """``[layers, heads, N]``: each head's pooled probabilities, max over queries (0 for unrecorded layers)."""
    import torch

    table: npt.NDArray[np.float32] | None = None
    for layer in sorted(recorder.queries):
        for members, probs in _head_blocks(recorder, layer, n_prompt, config.pool_kernel, window_queries):
            if table is None:
                n_heads = recorder.queries[layer][0].shape[1]
                table = np.zeros((n_layers, n_heads, n_prompt), dtype=np.float32)
            table[layer, members] = probs.amax(dim=1).to(torch.float32).cpu().numpy()
    if table is None:
        raise SpeculatorError("no attention layer could see the whole prompt (all are sliding-window layers)")
    return table


def _head_blocks(
    recorder: Recorder,
    layer: int,
    n_prompt: int,
    pool_kernel: int,
    window_queries: int,
    heads: Sequence[int] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Per KV head: the query heads that share it (only those in ``heads``) and their pooled ``[m, Q, N]`` rows.

    One KV head's group at a time keeps the working set at ``group x Q x N`` floats (with a long observation
    window and prompt still bounded by one group).
    """
    import torch

    q = torch.cat(recorder.queries[layer], dim=2)[0].float()  # [H, Q, D]
    k = recorder.keys[layer][0, :, :n_prompt, :].float()  # [KVH, N, D]
    n_heads, n_queries, dim = q.shape
    kv_heads = k.shape[0]
    if n_heads % kv_heads:
        raise SpeculatorError(f"layer {layer}: {n_heads} query heads do not divide into {kv_heads} KV heads")
    group = n_heads // kv_heads
    wanted = sorted(set(range(n_heads) if heads is None else heads))
    if wanted and not 0 <= wanted[0] <= wanted[-1] < n_heads:
        raise SpeculatorError(f"layer {layer}: head indices {wanted} outside 0..{n_heads - 1}")
    future = _future_mask(n_queries, n_prompt, window_queries, q.device)
    for kv in range(kv_heads):
        members = [h for h in wanted if h // group == kv]
        if not members:
            continue
        rows = q[kv * group : (kv + 1) * group] if len(members) == group else q[members]
        logits = torch.matmul(rows.reshape(1, -1, dim), k[kv : kv + 1].transpose(1, 2))
        probs = _pooled_probs(logits * recorder.scaling[layer], recorder.softcap[layer], future, pool_kernel)
        yield members, probs.reshape(len(members), n_queries, n_prompt)


def _future_mask(n_queries: int, n_prompt: int, window_queries: int, device: Any) -> torch.Tensor | None:
    """``[Q, N]`` True where a window query (the first ``window_queries``) would see a later prompt key."""
    import torch

    if window_queries <= 1:  # a lone window query is the last prompt token: it sees every prompt key
        return None
    positions = torch.full((n_queries,), n_prompt, device=device)
    positions[:window_queries] = torch.arange(n_prompt - window_queries, n_prompt, device=device)
    return torch.arange(n_prompt, device=device)[None, :] > positions[:, None]


def _pooled_probs(
    logits: torch.Tensor, softcap: float | None, future: torch.Tensor | None, pool_kernel: int
) -> torch.Tensor:
    """``[KV, G*Q, N]`` logits to pooled float32 probabilities over the prompt keys (causal mask applied)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    kv, rows, n_prompt = logits.shape
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if future is not None:
        logits = logits.reshape(kv, -1, future.shape[0], n_prompt).masked_fill(future, float("-inf"))
    probs = torch.softmax(logits, dim=-1).reshape(kv * rows, 1, n_prompt)
    if pool_kernel > 1:
        probs = F.avg_pool1d(probs, pool_kernel, stride=1, padding=pool_kernel // 2)
    return probs


def row_view(recorder: Recorder, row: int, *, start: int, n_prompt: int, window: int, steps: int) -> Recorder:
    """One prompt's recorder out of a left-padded batch (see :func:`specprefill.speculator.batching.capture_batch`).

    Args:
        recorder: The batch's recorder: prefill queries of the batch's longest window, then one query per
            look-ahead step, and keys ``[B, KV, L + steps, D]``.
        row: The prompt's batch row.
        start: Where its prompt starts (its left padding).
        n_prompt: Its prompt length.
        window: Its observation-window queries: the last ``max(window, 1)`` prefill queries are its own.
        steps: Its look-ahead steps (queries after the prefill that belong to it).

    Returns:
        A recorder as an unbatched run of that prompt would leave it (batch row 0, keys from position 0).

    """
    own = max(window, 1)
    view = Recorder(total_length=recorder.total_length, query_tail=own, layers=recorder.layers)
    for layer, queries in recorder.queries.items():
        prefill, *decode = queries
        tail = prefill.shape[2]
        view.queries[layer] = [prefill[row : row + 1, :, tail - own :, :]] + [q[row : row + 1] for q in decode[:steps]]
        view.keys[layer] = recorder.keys[layer][row : row + 1, :, start : start + n_prompt, :]
    view.scaling, view.softcap, view.excluded = dict(recorder.scaling), dict(recorder.softcap), set(recorder.excluded)
    return view
