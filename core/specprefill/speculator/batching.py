"""Several prompts in one speculator forward pass (the scoring service's micro-batches).

The prompts are left-padded to the longest, with an attention mask and per-row positions, so every prompt
ends at the same column: its observation-window queries are the last ones of the prefill, and the
look-ahead steps append one column for all rows at once. A row that reached end-of-sequence keeps being fed
a pad token (in its own row, so no other prompt sees it) and its later queries are dropped. Each row's
recorder is then cut out with :func:`specprefill.speculator.capture.row_view` and scored as an unbatched run would be.

On a 2-core CPU the batch measured 1.10x faster than one by one for 1,024-token prompts but 0.90x for four
4,096-token ones (``benchmarks/batch_scoring.py``), so :class:`~specprefill.speculator.hf.HFSpeculator` batches by
default only on CUDA (:attr:`~specprefill.speculator.hf.HFSpeculator.batch_forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from specprefill.speculator.capture import Recorder, prefill, row_view
from specprefill.speculator.checkpoints import checkpoint

__all__ = ["PADDING_SLACK", "BatchCapture", "capture_batch", "length_buckets"]

PADDING_SLACK = 1.25
"""A padded batch may hold at most this many times its real tokens (else it is split by length)."""


def length_buckets(
    items: Sequence[int],
    lengths: Sequence[int],
    slack: float = PADDING_SLACK,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Split ``items`` into batches of similar prompt length (longest first) with bounded padding and size.

    A batch of ``b`` prompts padded to its longest, ``L``, computes ``b * L`` positions; an item joins the
    current batch only while that stays within ``slack`` times the batch's real tokens and within
    ``max_tokens`` (a prompt longer than that is a batch of its own). Pure.

    Args:
        items: Anything identifying the prompts (indices).
        lengths: Their prompt lengths, in the same order.
        slack: Allowed padded positions per real token (>= 1).
        max_tokens: Most padded positions in one batch (None: no limit).

    """
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    longest = real = 0
    for i in order:
        n = lengths[i]
        size = (len(buckets[-1]) + 1) * longest if buckets else 0
        if buckets and size <= slack * (real + n) and (max_tokens is None or size <= max_tokens):
            buckets[-1].append(items[i])
            real += n
        else:
            buckets.append([items[i]])
            longest = real = n
    return buckets


@dataclass(frozen=True)
class BatchCapture:
    """What one batched prefill and look-ahead recorded."""

    recorder: Recorder
    starts: list[int]
    """Each row's left padding (where its prompt starts)."""
    decoded: list[list[int]]
    """Each row's greedy look-ahead tokens (up to its end-of-sequence token)."""

    def row(self, index: int, n_prompt: int, window: int) -> Recorder:
        """Row ``index``'s recorder, as an unbatched run of its prompt leaves it."""
        return row_view(
            self.recorder,
            index,
            start=self.starts[index],
            n_prompt=n_prompt,
            window=window,
            steps=len(self.decoded[index]),
        )


def capture_batch(
    model: Any,
    rows: Sequence[Sequence[int]],
    *,
    lookahead: int,
    query_tail: int,
    layers: Collection[int] | None,
    eos_ids: Collection[int],
    pad_id: int,
    recording: Callable[[Recorder], AbstractContextManager[Recorder]],
) -> BatchCapture:
    """Prefill ``rows`` left-padded in one batch with capture, then the greedy look-ahead steps together.

    Args:
        model: A transformers causal LM using the capturing attention.
        rows: The prompts' token ids (none empty).
        lookahead: ``SpecPrefillConfig.lookahead`` (1 = no decode steps).
        query_tail: Prefill queries to record: the longest observation window of the rows (at least 1).
        layers: Layers to record (None: all).
        eos_ids: Tokens that end a row's look-ahead.
        pad_id: Token fed in padding and to finished rows (never attended to by a live row).
        recording: Installs the recorder for the model's attention calls (:func:`specprefill.speculator.hf._recording`).

    """
    import torch

    device = model.device
    width = max(len(r) for r in rows)
    starts = [width - len(r) for r in rows]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, start:] = torch.tensor(list(row), dtype=torch.long, device=device)
        mask[i, start:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    recorder = Recorder(
        total_length=width + lookahead - 1, query_tail=max(query_tail, 1), layers=layers, stop_early=lookahead == 1
    )
    decoded: list[list[int]] = [[] for _ in rows]
    live = [True] * len(rows)
    with torch.inference_mode(), recording(recorder):
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        out = prefill(model, **inputs, use_cache=True, logits_to_keep=1)
        if out is None:  # no look-ahead: the layers after the deepest recorded one never ran
            return BatchCapture(recorder, starts, decoded)
        cache = out.past_key_values
        recorder.query_tail = 1
        step_positions = positions[:, -1:] + 1
        for _ in range(lookahead - 1):
            checkpoint("step")
            picks = out.logits[:, -1].argmax(dim=-1).tolist()
            for i, token in enumerate(picks):
                live[i] = live[i] and int(token) not in eos_ids
                if live[i]:
                    decoded[i].append(int(token))
            if not any(live):
                break
            feed = torch.tensor([[t if ok else pad_id] for t, ok in zip(picks, live, strict=True)], device=device)
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(
                input_ids=feed,
                attention_mask=mask,
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            step_positions = step_positions + 1
    return BatchCapture(recorder, starts, decoded)
