"""vLLM v1 logits processors of the memento engine (worker process).

- `BlockCapLogitsProcessor`: forces `<|block_end|>` once an open block holds `max_block_tokens`
  content tokens (rule in `rollout.block_cap`). Per request: `extra_args["max_block_tokens"]`.
- `ScriptLogitsProcessor`: the scripted-trace hook used by tests and the benchmark to impose
  block and memento lengths on a model that never learned to write them. Per request:
  `extra_args["script"] = [[response_index, token_id], ...]` forces those tokens;
  `extra_args["ban_token_ids"]` are never sampled elsewhere. Every other token is the model's own.

Both rely on sync scheduling (memento mode forces it): under async scheduling the live output
list lags one token behind. Neither is argmax invariant, so greedy requests see them too.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from rollout.block_cap import block_cap_due
from rollout.layout import LayoutTracker, MementoConfig
from rollout.vllm_plugin import read_config


def _force(logits: torch.Tensor, row: int, token_id: int) -> None:
    logits[row] = float("-inf")
    logits[row, token_id] = 0.0


class BlockCapLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory):
        conf = read_config(vllm_config)
        layout = conf.get("layout") if conf else None
        self.cfg = MementoConfig(**layout) if layout else None
        # row -> (tracker fed the prompt and the outputs so far, prompt length, live outputs, cap)
        self.rows: dict[int, tuple[LayoutTracker, int, list[int], int]] = {}

    @classmethod
    def validate_params(cls, params):
        cap = (params.extra_args or {}).get("max_block_tokens", 0)
        if not isinstance(cap, int) or cap < 0:
            raise ValueError(f"max_block_tokens must be an int >= 0, got {cap!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_row(self, params, prompt_ids, output_ids):
        cap = (params.extra_args or {}).get("max_block_tokens", 0)
        if not cap:
            return None
        if self.cfg is None:
            raise ValueError("max_block_tokens needs the memento token ids in the engine config")
        tracker = LayoutTracker(self.cfg)
        tracker.feed_many(prompt_ids or ())
        return tracker, tracker.position, output_ids, cap

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (tracker, prompt_len, output_ids, cap) in self.rows.items():
            tracker.feed_many(output_ids[tracker.position - prompt_len:])
            if block_cap_due(tracker, cap):
                _force(logits, row, self.cfg.block_end)
        return logits


class ScriptLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, tuple[dict[int, int], list[int], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    @staticmethod
    def _new_row(params, prompt_ids, output_ids):
        extra = params.extra_args or {}
        script, ban = extra.get("script"), extra.get("ban_token_ids")
        if not script and not ban:
            return None
        return {int(i): int(t) for i, t in script or ()}, list(ban or ()), output_ids

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (script, ban, output_ids) in self.rows.items():
            forced = script.get(len(output_ids))
            if forced is not None:
                _force(logits, row, forced)
            elif ban:
                logits[row, ban] = float("-inf")
        return logits
