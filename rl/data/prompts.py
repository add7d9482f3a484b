"""RL prompt data: verl-format files -> tokenised prompts -> an exactly resumable batch stream.

A row holds `prompt` (chat messages `{role, content}`), `data_source` (str), `reward_model`
(`{"ground_truth": ..., "style": ...}`) and optionally `extra_info` (dict), as in verl's
`RLHFDataset`. Files are `.parquet` or `.jsonl`. Every row is validated and tokenised when the
dataset is built, so a malformed row fails (or is skipped and counted, `on_bad_row="skip"`) before
training starts, never in the middle of a run.

    dataset = load_prompts(["train.parquet"], tokenizer, max_prompt_length=1024)
    loader = PromptLoader(dataset, batch_size=240, seed=0)
    prompts = loader.next_batch()            # list[PromptExample]
    state = loader.state_dict()              # JSON-able; load_state_dict(state) resumes exactly

`builtin:arith` and `builtin:arith_val` in a file list stand for the built-in arithmetic task
(`rl.data.arith`), generated into `data_dir`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rl.data.arith import resolve_files
from rl.data.chat import prompt_token_ids
from rl.data.rows import DataError, OnBadRow, parse_files


@dataclass(frozen=True)
class PromptRow:
    """One validated verl row, before tokenisation."""

    messages: list[dict[str, str]]  # chat messages, each {"role": ..., "content": ...}
    data_source: str
    ground_truth: Any  # as stored: a str for math, a test spec for code (rewards/ parses it)
    extra_info: dict[str, Any]


@dataclass(frozen=True)
class PromptExample:
    """A tokenised prompt ready for rollout or evaluation.

    `index` is its position in its dataset (in evaluation: over all benchmark files in order,
    which fixes the sampling seeds); `id`, where set, is "<file stem>/<row>", stable across reruns
    (evaluation resumes by it).
    """

    index: int
    prompt_ids: list[int]
    data_source: str
    ground_truth: Any
    extra_info: dict[str, Any]
    id: str = ""


def parse_prompt_row(row: dict[str, Any], where: str) -> PromptRow:
    """Validate one verl row; `where` ("file: row i") prefixes every error."""
    messages = row.get("prompt")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of chat messages, "
                        f"got {type(messages).__name__}")
    for k, m in enumerate(messages):
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)):
            raise DataError(f"{where}: prompt[{k}] must be {{'role': str, 'content': str}}, got {m!r}")
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise DataError(f"{where}: 'data_source' must be a non-empty string, got {data_source!r}")
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise DataError(f"{where}: 'reward_model' must be a dict with a 'ground_truth', "
                        f"got {reward_model!r}")
    extra_info = row.get("extra_info") or {}
    if not isinstance(extra_info, dict):
        raise DataError(f"{where}: 'extra_info' must be a dict, got {type(extra_info).__name__}")
    return PromptRow(
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        data_source=data_source, ground_truth=reward_model["ground_truth"], extra_info=extra_info)


# --------------------------------------------------------------------------- dataset


class PromptDataset:
    """Validated, chat-templated, length-filtered prompts, all tokenised at construction.

    Args:
        files: .parquet / .jsonl paths in verl format.
        tokenizer: a Hugging Face tokenizer with a chat template.
        max_prompt_length: prompts longer than this (in tokens, template included) are dropped
            when `filter_overlong`, else raise DataError.
        on_bad_row: "raise" stops at the first malformed row naming file and row; "skip" drops
            it and counts it in `num_skipped`.

    Attributes:
        num_filtered: prompts dropped for length. num_skipped: malformed rows dropped, with
        their errors in `skipped`.
    """

    def __init__(self, files: Sequence[str | Path], tokenizer, max_prompt_length: int,
                 filter_overlong: bool = True, on_bad_row: OnBadRow = "raise"):
        self.files = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
        self.max_prompt_length = max_prompt_length
        self.num_filtered = 0

        rows, self.skipped = parse_files(self.files, parse_prompt_row, on_bad_row)
        self.num_skipped = len(self.skipped)
        if not rows:
            raise DataError(f"no valid prompt rows in {[str(f) for f in self.files]}")

        all_ids = prompt_token_ids(tokenizer, [r.messages for r in rows])
        self.examples: list[PromptExample] = []
        for row, ids in zip(rows, all_ids):
            if len(ids) > max_prompt_length:
                if not filter_overlong:
                    raise DataError(f"a prompt has {len(ids)} tokens > max_prompt_length="
                                    f"{max_prompt_length} (filter_overlong=False): "
                                    f"{row.messages[-1]['content'][:80]!r}")
                self.num_filtered += 1
                continue
            self.examples.append(PromptExample(len(self.examples), ids, row.data_source,
                                               row.ground_truth, row.extra_info))
        if not self.examples:
            raise DataError(f"all {len(rows)} prompts exceed max_prompt_length={max_prompt_length}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PromptExample:
        return self.examples[i]

    def summary(self) -> str:
        """One line for the log: kept, filtered for length, skipped as malformed."""
        return (f"{len(self)} prompts from {len(self.files)} file(s); {self.num_filtered} longer "
                f"than {self.max_prompt_length} tokens filtered; {self.num_skipped} malformed "
                "rows skipped")


def load_prompts(files: Sequence[str], tokenizer, max_prompt_length: int,
                 data_dir: str | Path | None = None, filter_overlong: bool = True,
                 on_bad_row: OnBadRow = "raise", verbose: bool = True) -> PromptDataset:
    """PromptDataset over `files` (builtin:* resolved into data_dir); prints its summary."""
    dataset = PromptDataset(resolve_files(files, data_dir), tokenizer, max_prompt_length,
                            filter_overlong=filter_overlong, on_bad_row=on_bad_row)
    if verbose:
        print(dataset.summary(), flush=True)
    return dataset


# ---------------------------------------------------------------------------- loader


class PromptLoader:
    """Endless batches over epochs, reshuffled per epoch from (seed, epoch), exactly resumable.

    The state is (epoch, batches already taken in that epoch). After the last batch of an epoch
    the state moves to (epoch + 1, 0), so a checkpoint taken at an epoch boundary resumes with the
    next epoch's first batch: nothing is skipped or repeated. With `drop_last` the tail of each
    epoch's permutation (len % batch_size prompts, a different set each epoch) is not used that
    epoch; without it the last batch of an epoch is smaller.
    """

    def __init__(self, dataset: Sequence[PromptExample], batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"dataset has {len(dataset)} prompts, fewer than batch_size="
                             f"{batch_size} (with drop_last=True no batch could be formed)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.batch_in_epoch = 0
        self._order = self._epoch_order(0)

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.dataset)))
        if self.shuffle:
            # A str seed is hashed (sha512) by random.Random: stable across Python versions.
            random.Random(f"prompt-loader:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self) -> list[PromptExample]:
        start = self.batch_in_epoch * self.batch_size
        batch = [self.dataset[i] for i in self._order[start:start + self.batch_size]]
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
            self._order = self._epoch_order(self.epoch)
        return batch

    def state_dict(self) -> dict[str, int | bool]:
        """JSON-able position plus what it depends on (checked on load)."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "dataset_size": len(self.dataset), "batch_size": self.batch_size,
                "seed": self.seed, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Resume at `state`; refuses a state from a different dataset size or batching, which
        would silently skip or repeat prompts."""
        for key in ("dataset_size", "batch_size", "seed", "shuffle", "drop_last"):
            mine = len(self.dataset) if key == "dataset_size" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{mine!r}; resuming would not continue the same data stream")
        if not 0 <= state["batch_in_epoch"] < self.batches_per_epoch:
            raise ValueError(f"loader state batch_in_epoch={state['batch_in_epoch']} is outside "
                             f"[0, {self.batches_per_epoch})")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._order = self._epoch_order(self.epoch)
