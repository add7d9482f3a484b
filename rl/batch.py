"""The typed batch that flows through one GRPO step, and its packing into micro-batches.

Shapes: B samples (prompts x group size), T the longest response in the batch, N tokens of a
packed micro-batch. Per-token response tensors are right-padded to T; `response_mask` marks real
tokens and `loss_mask` the ones that carry loss (not padding, not engine-forced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels import IGNORE_INDEX
from rl.losses import group_normalisers
from rollout.layout import MementoConfig, evict_at as layout_evict_at


@dataclass
class RolloutBatch:
    # Trajectory (from the rollout engine)
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    group_ids: np.ndarray  # (B,) samples of one prompt share a group id
    sampler_logprobs: torch.Tensor  # (B, T) log pi_rollout at the sampling temperature
    forced_mask: torch.Tensor  # (B, T) bool, tokens the engine forced (block cap)
    response_mask: torch.Tensor  # (B, T) float, 1 on real response tokens
    finish_reasons: list[str]
    engine_kv_peak_tokens: np.ndarray  # (B,) live KV peak as the engine counted it
    num_evictions: np.ndarray  # (B,)
    # Task (from the data)
    data_sources: list[str]
    ground_truths: list
    # Layout (from rollout.layout, same code as the engine)
    evict_at: list[np.ndarray] = field(default_factory=list)  # per sample, (P_b + R_b,)
    # Outcome
    rewards: torch.Tensor | None = None  # (B,) scalar score per sample
    # Policy (from the actor / reference workers)
    old_logprobs: torch.Tensor | None = None  # (B, T) log pi_old (temperature-scaled)
    ref_logprobs: torch.Tensor | None = None  # (B, T) log pi_ref
    advantages: torch.Tensor | None = None  # (B, T)

    def __len__(self) -> int:
        return len(self.response_ids)

    @classmethod
    def from_sequences(cls, prompt_ids: list[list[int]], response_ids: list[list[int]],
                       group_ids=None) -> "RolloutBatch":
        """A batch of given token sequences with no sampler information (SFT, scoring)."""
        n = len(response_ids)
        zeros = [[0.0] * len(r) for r in response_ids]
        return cls(prompt_ids=prompt_ids, response_ids=response_ids,
                   group_ids=np.arange(n) if group_ids is None else np.asarray(group_ids),
                   sampler_logprobs=pad_right(zeros, 0.0, torch.float32),
                   forced_mask=pad_right([[False] * len(r) for r in response_ids], False, torch.bool),
                   response_mask=pad_right([[1.0] * len(r) for r in response_ids], 0.0, torch.float32),
                   finish_reasons=["stop"] * n, engine_kv_peak_tokens=np.zeros(n, dtype=np.int64),
                   num_evictions=np.zeros(n, dtype=np.int64), data_sources=[""] * n,
                   ground_truths=[None] * n)

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, T) float: response tokens that carry loss (forced tokens excluded)."""
        return self.response_mask * (~self.forced_mask).float()

    @property
    def response_lengths(self) -> np.ndarray:
        return np.array([len(r) for r in self.response_ids], dtype=np.int64)

    def compute_layout(self, cfg: MementoConfig | None) -> None:
        """evict_at for every sequence; None means full causal attention."""
        self.evict_at = []
        for p, r in zip(self.prompt_ids, self.response_ids):
            length = len(p) + len(r)
            if cfg is None:
                self.evict_at.append(np.full(length, length, dtype=np.int64))
            else:
                self.evict_at.append(layout_evict_at(p + r, cfg))

    def select(self, indices) -> "RolloutBatch":
        """Sub-batch of the given sample indices (all per-sample fields sliced)."""
        idx = list(int(i) for i in indices)
        tidx = torch.as_tensor(idx, dtype=torch.long)

        def pick(value):
            if value is None or (isinstance(value, list) and not value):  # e.g. no layout yet
                return value
            if isinstance(value, torch.Tensor):
                return value[tidx]
            if isinstance(value, np.ndarray):
                return value[idx]
            return [value[i] for i in idx]

        return RolloutBatch(**{name: pick(getattr(self, name))
                               for name in self.__dataclass_fields__})

    def concat(self, other: "RolloutBatch") -> "RolloutBatch":
        """Both batches' samples, self's first (per-token tensors re-padded to the wider one)."""
        merged = {}
        for name in self.__dataclass_fields__:
            x, y = getattr(self, name), getattr(other, name)
            if x is None:
                merged[name] = None
            elif isinstance(x, torch.Tensor) and x.dim() == 2:
                width = max(x.shape[1], y.shape[1])
                merged[name] = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]))
                                          for t in (x, y)])
            elif isinstance(x, torch.Tensor):
                merged[name] = torch.cat([x, y])
            elif isinstance(x, np.ndarray):
                merged[name] = np.concatenate([x, y])
            else:
                merged[name] = list(x) + list(y)
        return RolloutBatch(**merged)


def pad_right(rows: list, pad, dtype=None) -> torch.Tensor:
    """(B, max len) tensor from ragged rows."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=dtype)
    for i, r in enumerate(rows):
        if len(r):
            out[i, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out


@dataclass
class MicroBatch:
    """Several sequences packed end to end in one row, with original position ids.

    `targets[k]` is the token at k + 1 of the same sequence (IGNORE_INDEX at each sequence's
    last token, which predicts nothing). The log-prob of response token t of member m is read at flat index
    `response_starts[m] + t`.
    """

    indices: list[int]  # batch rows packed here, in order
    input_ids: torch.Tensor  # (N,) long
    position_ids: torch.Tensor  # (N,) long, restarting at 0 per sequence (RoPE)
    evict_at: torch.Tensor  # (N,) long, packed coordinates, capped at each sequence end
    targets: torch.Tensor  # (N,) long
    response_starts: list[int]  # flat index predicting each member's first response token
    response_lengths: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def gather_responses(self, flat: torch.Tensor, width: int) -> torch.Tensor:
        """(N,) per-token values -> (members, width) right-padded response values."""
        out = flat.new_zeros((len(self.indices), width))
        for m, (start, length) in enumerate(zip(self.response_starts, self.response_lengths)):
            out[m, :length] = flat[start:start + length]
        return out


def balance_token_bins(lengths: np.ndarray, max_tokens: int, num_bins_multiple: int = 1
                       ) -> list[list[int]]:
    """Greedy longest-first packing of sequences into bins of at most `max_tokens` tokens.

    A sequence longer than the budget gets a bin of its own. The number of bins is rounded up to
    a multiple of `num_bins_multiple` (data-parallel ranks must run equal numbers of micro-batches),
    which can leave some bins empty.
    """
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        n = int(lengths[i])
        fits = [b for b in range(len(bins)) if loads[b] + n <= max_tokens]
        if fits:
            b = min(fits, key=lambda k: loads[k])  # least-loaded bin that fits
            bins[b].append(int(i))
            loads[b] += n
        else:
            bins.append([int(i)])
            loads.append(n)
    while len(bins) % num_bins_multiple:
        bins.append([])
    for b in bins:
        b.sort()
    return bins


def pack(batch: RolloutBatch, indices: list[int]) -> MicroBatch:
    """Pack the given samples of `batch` (whose layout is computed) end to end into one row.

    evict_at moves to packed coordinates and stays capped at each key's own sequence end (a
    sequence's layout is at most its length), so `j <= i < evict_at[j]` alone keeps the packed
    sequences from seeing each other (DESIGN.md section 1); position ids restart at 0 per sequence.
    """
    ids, pos, ev, tgt, starts, lens = [], [], [], [], [], []
    offset = 0
    for i in indices:
        seq = batch.prompt_ids[i] + batch.response_ids[i]
        n, p = len(seq), len(batch.prompt_ids[i])
        ids.append(torch.as_tensor(seq, dtype=torch.long))
        pos.append(torch.arange(n))
        ev.append(torch.as_tensor(batch.evict_at[i], dtype=torch.long) + offset)
        tgt.append(torch.as_tensor(seq[1:] + [IGNORE_INDEX], dtype=torch.long))
        starts.append(offset + p - 1)
        lens.append(len(batch.response_ids[i]))
        offset += n
    cat = (lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long))
    return MicroBatch(list(indices), cat(ids), cat(pos), cat(ev), cat(tgt), starts, lens)


def make_micro_batches(batch: RolloutBatch, max_tokens: int, num_ranks: int = 1
                       ) -> list[list[MicroBatch]]:
    """Token-budgeted micro-batches for each data-parallel rank (equal counts per rank)."""
    lengths = np.array([len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)])
    bins = balance_token_bins(lengths, max_tokens, num_bins_multiple=num_ranks)
    bins.sort(key=lambda b: -int(lengths[b].sum()) if b else 0)
    # Deal bins round-robin by size so every rank gets a similar token load.
    return [[pack(batch, b) for b in bins[r::num_ranks]] for r in range(num_ranks)]


@dataclass
class TrainMicroBatch:
    """A packed micro-batch plus the per-member (m, W) tensors the loss needs (SFT: loss_mask)."""

    packed: MicroBatch
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None
    group_num_tokens: torch.Tensor | None = None  # (m,) loss tokens of each member's group


@dataclass
class MiniBatch:
    """One optimizer step's share for one rank, with the global normalisers of the whole step."""

    micro_batches: list[TrainMicroBatch]
    num_loss_tokens: int  # over the whole mini-batch, all ranks
    num_loss_sequences: int
    num_loss_groups: int = 0


def make_mini_batches(batch: RolloutBatch, steps: list[np.ndarray], max_tokens: int,
                      num_ranks: int, is_weights: torch.Tensor | None = None
                      ) -> list[list[MiniBatch]]:
    """Per rank, one MiniBatch per optimizer step; steps[k] holds the batch rows of step k."""
    per_rank: list[list[MiniBatch]] = [[] for _ in range(num_ranks)]
    for rows in steps:
        mini = batch.select(rows)
        mask = mini.loss_mask
        weights = None if is_weights is None else is_weights[torch.as_tensor(rows, dtype=torch.long)]
        group_tokens, num_groups = group_normalisers(mask, torch.as_tensor(mini.group_ids))
        for rank, mbs in enumerate(make_micro_batches(mini, max_tokens, num_ranks)):
            per_rank[rank].append(MiniBatch(
                micro_batches=[_train_micro_batch(mb, mini, weights, group_tokens) for mb in mbs],
                num_loss_tokens=int(mask.sum().item()),
                num_loss_sequences=int((mask.sum(-1) > 0).sum().item()),
                num_loss_groups=num_groups))
    return per_rank


def _train_micro_batch(mb: MicroBatch, mini: RolloutBatch, is_weights, group_tokens) -> TrainMicroBatch:
    idx = torch.as_tensor(mb.indices, dtype=torch.long)
    width = max(mb.response_lengths, default=0)

    def take(t):
        return None if t is None else t[idx, :width]

    return TrainMicroBatch(packed=mb, loss_mask=take(mini.loss_mask),
                           old_logprobs=take(mini.old_logprobs), advantages=take(mini.advantages),
                           ref_logprobs=take(mini.ref_logprobs), is_weights=take(is_weights),
                           group_num_tokens=group_tokens[idx])
