"""Position restoration in pure torch (no vLLM import): the device-side half of :mod:`.positions`.

Both model-runner hooks use these functions. They never synchronise with the host, so they are safe in
asynchronous scheduling and cheap next to a forward pass: a few gathers and two ``searchsorted`` calls
over the batch's tokens.

* :class:`RunTable` keeps the position maps of all requests in slots (Model Runner V2 request-state
  indices) as flat device tensors and restores a whole batch at once.
* :func:`restore_request` restores one request's slice (Model Runner V1 hook).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from specprefill.vllm_plugin.positions import PositionMap

if TYPE_CHECKING:
    import torch

__all__ = ["KEY_STRIDE", "RunTable", "restore_request"]

KEY_STRIDE = 1 << 40
"""Run keys are ``slot * KEY_STRIDE + kv_start``: one sorted array serves every slot (KV indices < 2**40)."""


def _torch() -> Any:
    import torch

    return torch


class RunTable:
    """Position maps of the requests in a batch, by slot, as device tensors.

    Changes are staged with :meth:`stage` and written by :meth:`commit` (once per step, only when something
    changed). A slot without a map restores to the identity, so unpruned requests are untouched.

    Args:
        num_slots: Number of request slots (``max_num_seqs``).
        max_tokens: Most tokens in one batch (``max_num_batched_tokens``).
        device: Device of the batch tensors.
        max_position: Largest position the model accepts; results are clamped to it, so even a garbage
            dummy batch can never index past the rotary table.

    """

    def __init__(self, num_slots: int, max_tokens: int, device: Any, max_position: int | None = None) -> None:
        th = _torch()
        self.num_slots = int(num_slots)
        self.device = device
        self.max_position = max_position
        self.n_kept = th.zeros(self.num_slots, dtype=th.int64, device=device)
        self.delta = th.zeros(self.num_slots, dtype=th.int64, device=device)
        self.keys = th.zeros(0, dtype=th.int64, device=device)
        self.kv_starts = th.zeros(0, dtype=th.int64, device=device)
        self.orig_starts = th.zeros(0, dtype=th.int64, device=device)
        self.arange = th.arange(max(int(max_tokens), 1), dtype=th.int32, device=device)
        self._maps: dict[int, PositionMap] = {}
        self._staged: dict[int, PositionMap | None] = {}

    # --- host-side bookkeeping --------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether any slot holds a map (after the last :meth:`commit`)."""
        return bool(self._maps)

    def __len__(self) -> int:
        """Number of slots holding a map (after the last :meth:`commit`)."""
        return len(self._maps)

    @property
    def pending(self) -> bool:
        """Whether staged changes wait for :meth:`commit`."""
        return bool(self._staged)

    def get(self, slot: int) -> PositionMap | None:
        """The committed map of ``slot`` (None: identity)."""
        return self._maps.get(slot)

    def stage(self, slot: int, pmap: PositionMap | None) -> None:
        """Set (or with None clear) the map of ``slot`` at the next :meth:`commit`."""
        if not 0 <= slot < self.num_slots:
            raise IndexError(f"slot {slot} is outside [0, {self.num_slots})")
        if pmap is None and slot not in self._maps and slot not in self._staged:
            return  # already identity: nothing to write (the common unpruned case)
        self._staged[slot] = None if pmap is None or pmap.is_identity else pmap

    def commit(self) -> None:
        """Write staged changes to the device tensors (no-op when nothing is staged)."""
        if not self._staged:
            return
        th = _torch()
        staged, self._staged = self._staged, {}
        slots = sorted(staged)
        kept = []
        delta = []
        for slot in slots:
            pmap = staged[slot]
            if pmap is None:
                self._maps.pop(slot, None)
                kept.append(0)
                delta.append(0)
            else:
                self._maps[slot] = pmap
                kept.append(pmap.n_kept)
                delta.append(pmap.delta)
        index = th.tensor(slots, dtype=th.int64, device=self.device)
        self.n_kept.index_copy_(0, index, th.tensor(kept, dtype=th.int64, device=self.device))
        self.delta.index_copy_(0, index, th.tensor(delta, dtype=th.int64, device=self.device))
        self._rebuild_runs()

    def _rebuild_runs(self) -> None:
        th = _torch()
        keys: list[np.ndarray[Any, Any]] = []
        kv: list[np.ndarray[Any, Any]] = []
        orig: list[np.ndarray[Any, Any]] = []
        for slot in sorted(self._maps):
            pmap = self._maps[slot]
            kv_starts = np.asarray(pmap.kv_starts, dtype=np.int64)
            keys.append(kv_starts + slot * KEY_STRIDE)
            kv.append(kv_starts)
            orig.append(np.asarray(pmap.orig_starts, dtype=np.int64))

        def upload(parts: list[np.ndarray[Any, Any]]) -> torch.Tensor:
            flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            tensor: torch.Tensor = th.from_numpy(flat).to(self.device)
            return tensor

        self.keys = upload(keys)
        self.kv_starts = upload(kv)
        self.orig_starts = upload(orig)

    # --- device-side restoration --------------------------------------------------------------------
    def restore(self, kv: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Positions for tokens at KV indices ``kv`` belonging to request ``slots`` (same shape, int64).

        Args:
            kv: KV indices (the positions vLLM computed), int64.
            slots: Slot of each token, int64.

        Returns:
            A new int64 tensor: original positions for kept prompt tokens, ``kv + delta`` after them,
            ``kv`` for slots without a map.

        """
        th = _torch()
        kv = kv.to(th.int64)
        kept = self.n_kept[slots]
        out: torch.Tensor = kv + self.delta[slots]
        if self.keys.numel():
            run = th.searchsorted(self.keys, slots * KEY_STRIDE + kv, right=True) - 1
            run.clamp_(min=0)
            in_prompt = self.orig_starts[run] + (kv - self.kv_starts[run])
            out = th.where(kv < kept, in_prompt, out)
        if self.max_position is not None:
            out.clamp_(min=0, max=self.max_position)
        return out

    def restore_batch(
        self,
        kv: torch.Tensor,
        idx_mapping: torch.Tensor,
        query_start_loc: torch.Tensor,
        num_reqs: int,
    ) -> torch.Tensor:
        """Restore the first ``len(kv)`` tokens of a batch laid out by ``query_start_loc``.

        Args:
            kv: KV-index positions of the batch's real (unpadded) tokens.
            idx_mapping: Slot of each request in the batch (``[num_reqs]``).
            query_start_loc: Token offset of each request (``[num_reqs + 1]`` or longer, padded).
            num_reqs: Real requests in the batch.

        Returns:
            The restored positions (int64, same length as ``kv``).

        """
        th = _torch()
        n = int(kv.shape[0])
        if n == 0 or num_reqs <= 0:
            return kv.to(th.int64)
        ends = query_start_loc[1 : num_reqs + 1]
        tokens = self.arange[:n] if n <= self.arange.numel() else th.arange(n, device=kv.device)
        if tokens.dtype != ends.dtype:
            tokens = tokens.to(ends.dtype)
        request = th.searchsorted(ends.contiguous(), tokens, right=True)
        request.clamp_(max=num_reqs - 1)
        slots = idx_mapping[:num_reqs].to(th.int64)[request]
        return self.restore(kv, slots)


def restore_request(
    kv: torch.Tensor, pmap: PositionMap, cache: dict[str, Any] | None = None, max_position: int | None = None
) -> torch.Tensor:
    """Positions for one request's tokens at KV indices ``kv`` (device tensor in, new int64 tensor out).

    Args:
        kv: KV-index positions of the request's scheduled tokens.
        pmap: The request's position map.
        cache: Optional dict in which the map's device tensors are kept between steps.
        max_position: Clamp the results to this position (the model's last valid one).

    Returns:
        The restored positions.

    """
    th = _torch()
    kv = kv.to(th.int64)
    tensors = cache.get("tensors") if cache is not None else None
    if tensors is None or tensors[0].device != kv.device:
        tensors = (
            th.tensor(pmap.kv_starts, dtype=th.int64, device=kv.device),
            th.tensor(pmap.orig_starts, dtype=th.int64, device=kv.device),
        )
        if cache is not None:
            cache["tensors"] = tensors
    kv_starts, orig_starts = tensors
    run = th.searchsorted(kv_starts, kv, right=True) - 1
    run.clamp_(min=0)
    out: torch.Tensor = th.where(kv < pmap.n_kept, orig_starts[run] + (kv - kv_starts[run]), kv + pmap.delta)
    if max_position is not None:
        out.clamp_(min=0, max=max_position)
    return out
