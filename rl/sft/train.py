"""Two-stage memento SFT (MEMENTO paper section 4): format first, then the masking constraint.

Stage 1 ("full") trains with plain causal attention; stage 2 ("memento") starts from the best
stage-1 checkpoint and trains with the memento layout, with the same loss: negative log-likelihood
of every completion token (blocks, mementos, delimiters, answer), prompt tokens masked. Sequences
are packed into token-budgeted micro-batches and trained by the same DeepSpeed PolicyWorker ranks
as RL (`sft_update`), so multi-rank SFT needs nothing extra. The checkpoint with the lowest
validation loss (under the stage's own layout) is exported in Hugging Face format to
`<output_dir>/best`, tokenizer and chat template included.

    python -m rl.sft                  # conf/sft.yaml: stage 1 of the tiny model, built-in task

`builtin:arith_sft` / `builtin:arith_sft_val` in the file lists stand for the built-in task's
traces, generated into `<output_dir>/data`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rl.algo_config import AlgoConfig
from rl.batch import RolloutBatch, make_micro_batches, make_mini_batches
from rl.checkpoint import resolve_model_path
from rl.config import ActorConfig, ModelConfig, OptimConfig
from rl.data.arith import resolve_files
from rl.data.sft_dataset import SFTDataset, SFTSample
from rollout.layout import MementoConfig


def sft_actor() -> ActorConfig:
    return ActorConfig(optim=OptimConfig(lr=8e-5))


@dataclass
class SFTConfig:
    """One SFT stage. `model` and `actor` are the RL trainer's sections of the same name
    (`actor_rollout_ref.model` / `.actor`): the checkpoint to start from ("tiny" builds the
    tiny model), its dtype and memento options (stage 2's layout); the DeepSpeed ranks, the token
    budget of one packed micro-batch (`actor.ppo_max_token_len_per_gpu`) and the optimizer. The
    actor's PPO keys (ppo_mini_batch_size, ppo_epochs) play no part here: batch_size and epochs do.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=sft_actor)
    stage: Literal["full", "memento"] = "full"
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    output_dir: str = "outputs/sft"
    max_length: int = 512
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: run every epoch)
    batch_size: int = 16  # sequences per optimizer step
    eval_every: int = 20  # optimizer steps between validations (and at the end)
    device: Literal["cpu", "cuda"] = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.train_files:
            raise ValueError("train_files must list at least one SFT file")
        for key in ("max_length", "epochs", "batch_size", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.actor.ppo_max_token_len_per_gpu < self.max_length:
            raise ValueError(f"actor.ppo_max_token_len_per_gpu ({self.actor.ppo_max_token_len_per_gpu})"
                             f" must hold one sequence of max_length ({self.max_length})")


@dataclass
class SFTResult:
    best_dir: Path
    best_val_loss: float
    history: list[dict[str, float]]


def to_batch(samples: list[SFTSample], layout: MementoConfig | None) -> RolloutBatch:
    batch = RolloutBatch.from_sequences([s.input_ids[:s.prompt_length] for s in samples],
                                        [s.input_ids[s.prompt_length:] for s in samples])
    batch.compute_layout(layout)
    return batch


def run_sft(cfg: SFTConfig, log=print, on_step=None) -> SFTResult:
    """Train one stage; `log` takes messages, and each step's record (step, loss, lr, val_loss
    when validated) goes to `on_step(record, steps_total)` if given, else to `log` as a line."""
    from transformers import AutoTokenizer

    from rl import cluster

    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(cfg.model.path, out)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    layout = cfg.model.memento.layout(tokenizer) if cfg.stage == "memento" else None
    train = SFTDataset(resolve_files(cfg.train_files, out / "data"), tokenizer, cfg.max_length)
    val = (SFTDataset(resolve_files(cfg.val_files, out / "data"), tokenizer, cfg.max_length)
           if cfg.val_files else None)
    log(f"sft[{cfg.stage}]: {len(train)} train / {len(val) if val else 0} val sequences")

    steps_total = cfg.epochs * (len(train) // cfg.batch_size)
    if cfg.max_steps:
        steps_total = min(steps_total, cfg.max_steps)
    actor = cfg.actor
    if not actor.optim.total_steps:  # a decaying schedule spans this stage's optimizer steps
        actor = dataclasses.replace(actor, optim=dataclasses.replace(actor.optim,
                                                                     total_steps=steps_total))
    cluster.init_ray(None)
    group = cluster.spawn_policy_group(f"sft-{cfg.stage}", model_path,
                                       dataclasses.replace(cfg.model, path=model_path), actor,
                                       AlgoConfig(), True, cfg.device, cfg.seed)
    rng = random.Random(cfg.seed)
    best_dir, best, history, step = out / "best", float("inf"), [], 0
    try:
        for _ in range(cfg.epochs):
            order = list(range(len(train)))
            rng.shuffle(order)
            for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                if step == steps_total:
                    break
                batch = to_batch([train[i] for i in order[start:start + cfg.batch_size]], layout)
                per_rank = make_mini_batches(batch, [np.arange(len(batch))],
                                             cfg.actor.ppo_max_token_len_per_gpu, len(group))
                metrics = group.call_each("sft_update", [(minis,) for minis in per_rank])
                step += 1
                record = {"step": step, "loss": float(np.mean([m["sft_loss"] for m in metrics])),
                          "lr": metrics[0]["lr"]}
                if val is not None and (step % cfg.eval_every == 0 or step == steps_total):
                    record["val_loss"] = validation_loss(group, val, layout, cfg)
                    if record["val_loss"] < best:
                        best = record["val_loss"]
                        group.call("save_hf", str(best_dir))
                        tokenizer.save_pretrained(best_dir)
                if on_step is not None:
                    on_step(record, steps_total)
                else:
                    log(f"sft[{cfg.stage}] step {step}/{steps_total} " +
                        " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step"))
                history.append(record)
        if val is None:  # no validation data: the last weights are the result
            group.call("save_hf", str(best_dir))
            tokenizer.save_pretrained(best_dir)
    finally:
        group.kill()
    return SFTResult(best_dir, best, history)


def validation_loss(group, data: SFTDataset, layout: MementoConfig | None, cfg: SFTConfig) -> float:
    """Token-mean NLL of the completion tokens under the stage's layout."""
    batch = to_batch([data[i] for i in range(len(data))], layout)
    per_rank = make_micro_batches(batch, cfg.actor.ppo_max_token_len_per_gpu, len(group))
    results = group.call_each("compute_logprobs", [(mbs, 1.0) for mbs in per_rank])
    total, count = 0.0, 0
    for mbs, outs in zip(per_rank, results):
        for mb, (logprobs, _) in zip(mbs, outs):
            for m, length in enumerate(mb.response_lengths):
                total -= float(logprobs[m, :length].sum())
                count += length
    return total / max(count, 1)

