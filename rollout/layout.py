"""The memento layout: which earlier tokens each token can see.

This module is the single definition of the layout (DESIGN.md section 1). The vLLM engine feeds
sampled tokens one at a time to a `LayoutTracker` and evicts the spans it returns; the trainer,
the metrics and the KV accounting call `evict_at` on whole sequences, which runs the very same
tracker. Train/inference agreement therefore holds by construction. (The trainer packs several
sequences into one row with `rl.batch.pack`.)

A response looks like

    <think> ( <|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|> )*
    </think> answer

and the layout is one integer per token: `evict_at[j]` is the first query position that can no
longer see key j (the sequence length when never). Key j is visible to query i iff
`j <= i < evict_at[j]`. The rules mirror the paper's reference vLLM overlay token for token:

- When `<|summary_end|>` of block i arrives at position p, block i's content (strictly between its
  delimiters, or including them with `mask_delimiters`) is evicted at p: the memento saw its block,
  the `<|summary_end|>` query and everything after it do not.
- Completed blocks queue up; at each `<|summary_end|>` the oldest is evicted once more than
  `keep_last_n_blocks` are queued (-1: never evict).
- `keep_last_block_for_answer` (with `keep_last_n_blocks=0`) delays the eviction of the newest
  block to the next `<|block_start|>`, so an answer after `</think>` still sees the last block.
- Blocks nest as a stack; a memento pairs with the most recently opened block that is closed and
  has no memento yet. Anything that cannot be paired (an unclosed block, a memento without a
  block, a truncated memento) evicts nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

BLOCK_START = "<|block_start|>"
BLOCK_END = "<|block_end|>"
SUMMARY_START = "<|summary_start|>"
SUMMARY_END = "<|summary_end|>"
MEMENTO_TOKENS = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)


@dataclass(frozen=True)
class MementoConfig:
    """Token ids of the four memento delimiters and the eviction options.

    `keep_last_n_blocks`: 0 evicts each block at its own `<|summary_end|>` (the paper's memento
    attention), N > 0 keeps the newest N closed blocks visible, -1 never evicts (full causal
    attention). `mask_delimiters` (Phi-4 style) evicts the block's delimiters with its content.
    """

    block_start: int
    block_end: int
    summary_start: int
    summary_end: int
    mask_delimiters: bool = False
    keep_last_n_blocks: int = 0
    keep_last_block_for_answer: bool = False

    def __post_init__(self) -> None:
        ids = (self.block_start, self.block_end, self.summary_start, self.summary_end)
        if len(set(ids)) != 4 or any(not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"memento token ids must be four distinct non-negative ints, got {ids}")
        if self.keep_last_n_blocks < -1:
            raise ValueError(f"keep_last_n_blocks must be >= -1, got {self.keep_last_n_blocks}")
        if self.keep_last_block_for_answer and self.keep_last_n_blocks != 0:
            raise ValueError("keep_last_block_for_answer requires keep_last_n_blocks=0, "
                             f"got keep_last_n_blocks={self.keep_last_n_blocks}")

    @classmethod
    def from_tokenizer(cls, tokenizer, **options) -> "MementoConfig":
        """Resolve the delimiter ids from a tokenizer that has the four memento tokens."""
        ids = []
        for token in MEMENTO_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no {token!r} token; add the memento tokens first")
            ids.append(int(token_id))
        return cls(*ids, **options)

    def replace(self, **changes) -> "MementoConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Eviction:
    """Keys at original positions [start, end) become invisible from query position `at` on.

    The positions of the block's delimiters and memento start are carried for the engine's
    restart ablation, which evicts the whole block and recomputes the memento.
    """

    start: int
    end: int
    at: int
    block_start: int
    block_end: int
    summary_start: int


@dataclass
class Block:
    """Positions of one block's delimiters (None until seen)."""

    start: int
    end: int | None = None
    summary_start: int | None = None
    summary_end: int | None = None


class LayoutTracker:
    """Incremental form of the layout: feed tokens in order, get the evictions due now.

    `feed(token)` treats the token as being at position `self.position` (the number of tokens fed
    before it) and returns the evictions that take effect at that position, i.e. before the token
    itself is attended. The engine applies them before the token's forward pass.
    """

    def __init__(self, cfg: MementoConfig):
        self.cfg = cfg
        self.position = 0
        self._blocks: list[Block] = []  # every block seen, in opening order
        self._open: list[Block] = []  # stack of open blocks
        self._summary_of: Block | None = None  # block whose memento is being written
        self._pending: list[Block] = []  # closed blocks with a finished memento, oldest first
        self.evictions: list[Eviction] = []

    def feed(self, token_id: int) -> list[Eviction]:
        cfg, pos = self.cfg, self.position
        self.position += 1
        due: list[Eviction] = []
        if token_id == cfg.block_start:
            if cfg.keep_last_block_for_answer and self._pending:
                due.append(self._evict_oldest(pos))
            block = Block(start=pos)
            self._blocks.append(block)
            self._open.append(block)
        elif token_id == cfg.block_end:
            if self._open:
                self._open.pop().end = pos
        elif token_id == cfg.summary_start:
            # The memento belongs to the newest closed block that has none yet.
            for block in reversed(self._blocks):
                if block.end is not None and block.summary_start is None:
                    block.summary_start = pos
                    self._summary_of = block
                    break
        elif token_id == cfg.summary_end:
            if self._summary_of is not None:
                self._summary_of.summary_end = pos
                self._pending.append(self._summary_of)
                self._summary_of = None
                keep = cfg.keep_last_n_blocks
                if keep >= 0 and not cfg.keep_last_block_for_answer and len(self._pending) > keep:
                    due.append(self._evict_oldest(pos))
        self.evictions.extend(due)
        return due

    def feed_many(self, token_ids: Iterable[int]) -> list[Eviction]:
        due: list[Eviction] = []
        for token_id in token_ids:
            due.extend(self.feed(int(token_id)))
        return due

    @property
    def completed_blocks(self) -> list[Block]:
        """Blocks with a finished memento, in opening order."""
        return [b for b in self._blocks if b.summary_end is not None]

    @property
    def open_block_start(self) -> int | None:
        """Position of the innermost open block's `<|block_start|>`, or None."""
        return self._open[-1].start if self._open else None

    def _evict_oldest(self, at: int) -> Eviction:
        block = self._pending.pop(0)
        if self.cfg.mask_delimiters:
            start, end = block.start, block.end + 1
        else:
            start, end = block.start + 1, block.end
        return Eviction(start, end, at, block.start, block.end, block.summary_start)


def evict_at(token_ids: Sequence[int] | np.ndarray, cfg: MementoConfig) -> np.ndarray:
    """Layout of one sequence (prompt + response, positions 0..T-1).

    Returns:
        int64 array (T,): the first query position that cannot see each key; T when never.
    """
    token_ids = np.asarray(token_ids).reshape(-1)
    out = np.full(len(token_ids), len(token_ids), dtype=np.int64)
    tracker = LayoutTracker(cfg)
    for ev in tracker.feed_many(token_ids.tolist()):
        out[ev.start:ev.end] = np.minimum(out[ev.start:ev.end], ev.at)
    return out


def memento_stats(token_ids: Sequence[int], cfg: MementoConfig, start: int = 0) -> dict[str, float]:
    """Blocks with a memento that open at or after `start` (e.g. the prompt length).

    Returns blocks (count), block_tokens and memento_tokens (means over those blocks, content
    only, delimiters excluded) and compression (block tokens over memento tokens, summed).
    """
    tracker = LayoutTracker(cfg)
    tracker.feed_many(int(t) for t in token_ids)
    blocks = [b for b in tracker.completed_blocks if b.start >= start]
    block_tokens = [b.end - b.start - 1 for b in blocks]
    memento_tokens = [b.summary_end - b.summary_start - 1 for b in blocks]
    n = len(blocks)
    return {"blocks": n,
            "block_tokens": sum(block_tokens) / n if n else 0.0,
            "memento_tokens": sum(memento_tokens) / n if n else 0.0,
            "compression": sum(block_tokens) / max(sum(memento_tokens), 1) if n else 0.0}


def live_tokens(evict_at: np.ndarray) -> np.ndarray:
    """Live KV tokens after each query position t: #{j <= t : evict_at[j] > t}.

    O(T) with a difference array: key j is live for t in [j, evict_at[j]).
    """
    evict_at = np.asarray(evict_at, dtype=np.int64)
    T = len(evict_at)
    delta = np.zeros(T + 1, dtype=np.int64)
    np.add.at(delta, np.arange(T), 1)
    np.add.at(delta, np.minimum(evict_at, T), -1)
    return np.cumsum(delta[:T])


def kv_stats(evict_at: np.ndarray, prompt_len: int) -> dict[str, int]:
    """Peak and area (token-steps) of live KV over query positions prompt_len..T-1.

    `full_*` are the same numbers for full causal attention (t + 1 live tokens at step t).
    Multiply by `kv_bytes_per_token` for bytes.
    """
    live = live_tokens(evict_at)[prompt_len:]
    full = np.arange(prompt_len, len(evict_at), dtype=np.int64) + 1
    if len(live) == 0:
        return {"peak_tokens": 0, "area_tokens": 0, "full_peak_tokens": 0, "full_area_tokens": 0}
    return {"peak_tokens": int(live.max()), "area_tokens": int(live.sum()),
            "full_peak_tokens": int(full.max()), "full_area_tokens": int(full.sum())}


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Bytes of K and V one token holds across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
