"""GRPO-family RL with memento rollouts: the Hydra entry point and the single-controller loop.

    python -m rl.train                               # the default tiny CPU run (conf/config.yaml)
    python -m rl.train +experiment=qwen3_8b_memento  # the paper's RL run (3 nodes x 8 GPUs)
    python -m rl.train --cfg job                     # print the composed config and exit

The controller (this process) owns the order of one step (`Trainer.step`); Ray workers expose a
few verbs: rollout engines `generate` / `sleep` / `wake_up` and vLLM's weight-transfer verbs,
policy ranks `compute_logprobs` / `update` / `send_weights` / `save_checkpoint` /
`load_checkpoint`.
Rewards are scored here, in the reward manager's own process pool.

With `trainer.overlap_rollout` the engines generate step k+1's batch in a background thread while
the actor computes log-probs and updates on step k's batch, one step off-policy (verl's one-step
off-policy mode): see `Trainer.take_overlapped_batch`.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rewards.manager import RewardManager
from rl import advantages as adv
from rl.batch import RolloutBatch, make_micro_batches, make_mini_batches, pad_right
from rl.checkpoint import CheckpointManager, read_json, resolve_model_path, write_json
from rl.config import Config, run_hydra
from rl.data.prompts import PromptLoader, load_prompts
from rl.losses import reduce_metrics, rollout_mismatch, rollout_rejection_mask
from rl.sample_metrics import sample_stats
from rl.tracking import Tracker, timed
from rollout.layout import MementoConfig


class Trainer:
    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        from rl import cluster

        self.cfg = cfg
        self.run_dir = Path(cfg.trainer.default_local_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model_path = resolve_model_path(cfg.actor_rollout_ref.model.path, self.run_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.memento = memento_config(cfg, self.tokenizer)
        self.loader = PromptLoader(
            load_prompts(cfg.data.train_files, self.tokenizer, cfg.data.max_prompt_length,
                         self.run_dir / "data", verbose="console" in cfg.trainer.logger),
            batch_size=cfg.data.train_batch_size, shuffle=cfg.data.shuffle, seed=cfg.data.seed)
        self.reward = RewardManager(cfg.reward)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints",
                                             keep=cfg.trainer.max_checkpoints_to_keep)
        self.step_count = 0
        # overlap_rollout: the generation in flight and the loader position before its prompts
        self.rollout_thread = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
                               if cfg.trainer.overlap_rollout else None)
        self.pending: Future | None = None
        self.loader_state_before_pending: dict | None = None

        cluster.init_ray(cfg.trainer.ray_address)
        self.actor, self.ref, self.rollout = start_workers(cfg, self.model_path, self.memento)
        self.wandb_id = self._resume()
        self.tracker = Tracker(cfg.trainer.logger, cfg.trainer.project_name,
                               cfg.trainer.experiment_name, self.run_dir, asdict(cfg),
                               cfg.trainer.total_training_steps, resume_id=self.wandb_id)

    # ------------------------------------------------------------------ the loop

    def fit(self, on_step=None) -> list[dict[str, float]]:
        """Train to trainer.total_training_steps; `on_step(step, metrics)` after each step."""
        history = []
        try:
            while self.step_count < self.cfg.trainer.total_training_steps:
                metrics = self.step()
                history.append(metrics)
                self.tracker.log(self.step_count, metrics)
                if on_step is not None:
                    on_step(self.step_count, metrics)
                freq = self.cfg.trainer.save_freq
                last = self.step_count == self.cfg.trainer.total_training_steps
                if last or (freq > 0 and self.step_count % freq == 0):
                    self.save()
            self.export_hf(self.run_dir / "hf")
        finally:
            self.tracker.finish()
        return history

    def step(self) -> dict[str, float]:
        cfg, timing = self.cfg, {}
        with timed("step", timing):
            # 1. sample prompts and generate a group of n responses for each
            if cfg.trainer.overlap_rollout:
                batch, gen_metrics = self.take_overlapped_batch(timing)
            else:
                with timed("gen", timing):
                    batch, gen_metrics = self.generate_batch(self.step_count)
            # 2. the layout the engine used, for every sequence
            with timed("layout", timing):
                batch.compute_layout(self.memento)
                if cfg.algorithm.overlong_filter:  # DAPO: truncated responses carry no loss
                    cut = torch.tensor([f == "length" for f in batch.finish_reasons])
                    batch.response_mask[cut] = 0.0
            # 3. old-policy and reference log-probs under that layout (on the on-policy shortcut
            # the update's own forward gives the old ones); the old against the sampler's
            old_logprobs_from_update = self.old_logprobs_from_update()
            is_weights, correction_metrics = None, {}
            if not old_logprobs_from_update:
                with timed("old_logprob", timing):
                    batch.old_logprobs, entropy = self.logprobs(self.actor, batch, with_entropy=True)
                is_weights, correction_metrics = self.correct_rollout(batch)
            if self.ref is not None:
                with timed("ref_logprob", timing):
                    batch.ref_logprobs, _ = self.logprobs(self.ref, batch)
            # 4. advantages (reward shaping with KL first, when configured)
            with timed("adv", timing):
                adv_metrics = self.compute_advantages(batch)
            # 5. update the actor
            with timed("update_actor", timing):
                actor_metrics, update_entropy = self.update_actor(batch, is_weights,
                                                                  old_logprobs_from_update)
            if update_entropy is not None:
                entropy = update_entropy
            # 6. new weights to the rollout engines (overlapped: at the next step's start)
            if not cfg.trainer.overlap_rollout:
                with timed("sync_weights", timing):
                    self.sync_weights()
        self.step_count += 1
        metrics = {**gen_metrics, **correction_metrics, **adv_metrics, **actor_metrics, **timing,
                   **self.batch_metrics(batch, entropy)}
        tokens = sum(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
        metrics["perf/tokens_per_second"] = tokens / timing["time/step"]
        return metrics

    # ------------------------------------------------------------------ phases

    def take_overlapped_batch(self, timing: dict[str, float]) -> tuple[RolloutBatch, dict]:
        """This step's batch, then the next step's generation started in the background.

        The batch was generated during the previous step by the weights before its update (the
        first step after start or resume generates here, with the current weights). The engines
        get the actor's weights only here, when no generation is in flight; the next generation
        then runs on them while the actor trains. While it runs the rollout thread owns the
        loader (dynamic sampling draws a variable number of batches); checkpoints save the
        position before its prompts, so a resume generates them again.
        """
        pending, self.pending = self.pending, None
        with timed("gen", timing):  # the time the controller waited for the batch
            batch, metrics = (pending.result() if pending is not None
                              else self.generate_batch(self.step_count))
        if pending is not None:  # the actor has been updated since the engines' last weights
            with timed("sync_weights", timing):
                self.sync_weights()
        if self.step_count + 1 < self.cfg.trainer.total_training_steps:
            self.loader_state_before_pending = self.loader.state_dict()
            self.pending = self.rollout_thread.submit(self.generate_batch_timed, self.step_count + 1)
        return batch, metrics

    def generate_batch_timed(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """generate_batch plus its own wall time, `time/gen_background` (overlapped with training)."""
        timing: dict[str, float] = {}
        with timed("gen_background", timing):
            batch, metrics = self.generate_batch(step)
        return batch, {**metrics, **timing}

    def generate_batch(self, step: int) -> tuple[RolloutBatch, dict[str, float]]:
        """Rollouts and rewards for step `step`; with DAPO dynamic sampling, refill dropped groups."""
        algo, want = self.cfg.algorithm, self.cfg.data.train_batch_size
        kept: RolloutBatch | None = None
        metrics: dict[str, float] = {}
        rounds = 0
        while kept is None or len(np.unique(kept.group_ids)) < want:
            rounds += 1
            batch, metrics = self.rollout_and_score(self.loader.next_batch(), step,
                                                    group_offset=rounds * want)
            if algo.filter_groups.enable:
                keep, filter_metrics = adv.filter_zero_variance_groups(
                    batch.rewards, torch.as_tensor(batch.group_ids))
                metrics.update(filter_metrics)
                batch = batch.select(torch.nonzero(keep).flatten().tolist())
            kept = batch if kept is None else kept.concat(batch)
            limit = algo.filter_groups.max_num_gen_batches
            if not algo.filter_groups.enable or (0 < limit <= rounds):
                break
        groups = np.unique(kept.group_ids)[:want]
        kept = kept.select(np.flatnonzero(np.isin(kept.group_ids, groups)))
        metrics["gen/rounds"] = float(rounds)
        return kept, metrics

    def rollout_and_score(self, prompts, step: int, group_offset: int) -> tuple[RolloutBatch, dict]:
        from rollout.engine import Sampling

        cfg = self.cfg.actor_rollout_ref.rollout
        n = cfg.n
        # Seeds depend only on (seed, step, round, sample): rollouts replay exactly on resume.
        seed = (self.cfg.trainer.seed * 1_000_003 + step * 10_007 + group_offset) * 64
        shards = np.array_split(np.arange(len(prompts)), len(self.rollout))
        results = self.rollout.call_each("generate", [
            ([prompts[i].prompt_ids for i in shard],
             Sampling(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=max(cfg.top_k, 0),
                      max_tokens=self.cfg.data.max_response_length,
                      max_block_tokens=cfg.max_block_tokens, seed=seed + int(shard[0]) * n if len(shard) else seed))
            for shard in shards])
        samples = [s for shard in results for s in shard]

        batch = RolloutBatch(
            prompt_ids=[s.prompt_ids for s in samples],
            response_ids=[s.response_ids for s in samples],
            group_ids=np.repeat(np.arange(len(prompts)) + group_offset, n),
            sampler_logprobs=pad_right([s.sampler_logprobs for s in samples], 0.0, torch.float32),
            forced_mask=pad_right([s.forced_mask for s in samples], False, torch.bool),
            response_mask=pad_right([[1.0] * len(s.response_ids) for s in samples], 0.0,
                                    torch.float32),
            finish_reasons=[s.finish_reason for s in samples],
            engine_kv_peak_tokens=np.array([s.kv_peak_tokens for s in samples]),
            num_evictions=np.array([s.num_evictions for s in samples]),
            data_sources=[p.data_source for p in prompts for _ in range(n)],
            ground_truths=[p.ground_truth for p in prompts for _ in range(n)],
        )
        texts = self.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=False)
        scored = self.reward.score(texts, batch.data_sources, batch.ground_truths,
                                   [p.extra_info for p in prompts for _ in range(n)])
        batch.rewards = torch.tensor(scored.scores, dtype=torch.float32)
        metrics = {key: float(value) for key, value in scored.metrics.items()}
        metrics["reward/mean"] = batch.rewards.mean().item()
        metrics["reward/std"] = batch.rewards.std().item() if len(batch) > 1 else 0.0
        return batch, metrics

    def logprobs(self, group, batch: RolloutBatch, with_entropy: bool = False):
        """(B, T) log-probs of the response tokens (and entropy) from a policy worker group."""
        temperature = self.cfg.actor_rollout_ref.rollout.temperature
        per_rank = make_micro_batches(batch, self.cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu,
                                      num_ranks=len(group))
        results = group.call_each("compute_logprobs",
                                  [(mbs, temperature, with_entropy) for mbs in per_rank])
        return scatter_responses(batch, [mb for mbs in per_rank for mb in mbs],
                                 [out for outs in results for out in outs], with_entropy)

    def compute_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        algo, metrics = self.cfg.algorithm, {}
        rewards = batch.rewards
        if algo.overlong_buffer.enable:
            penalty, m = adv.overlong_penalty(torch.as_tensor(batch.response_lengths),
                                              self.cfg.data.max_response_length,
                                              algo.overlong_buffer.len,
                                              algo.overlong_buffer.penalty_factor)
            rewards, metrics = rewards + penalty, {**metrics, **m}
        if algo.use_kl_in_reward:
            rewards, m = adv.kl_in_reward(rewards, batch.old_logprobs, batch.ref_logprobs,
                                          batch.loss_mask, algo.kl_coef, algo.kl_penalty)
            metrics.update(m)
        batch.advantages, m = adv.compute_advantages(
            algo.adv_estimator, rewards, torch.as_tensor(batch.group_ids), batch.loss_mask,
            norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo)
        return {**metrics, **m}

    def old_logprobs_from_update(self) -> bool:
        """The on-policy shortcut (verl's actor takes it too): when the whole update is one
        optimizer step, the old policy is the current one, so the update's own forward gives the
        old log-probs and the separate pass is skipped; unless the reward's KL term or a rollout
        correction (TIS, masked IS) needs them before the update."""
        actor, algo = self.cfg.actor_rollout_ref.actor, self.cfg.algorithm
        return (actor.ppo_epochs == 1 and actor.ppo_mini_batch_size == self.cfg.data.train_batch_size
                and not algo.use_kl_in_reward and not algo.corrects_rollout)

    def correct_rollout(self, batch: RolloutBatch) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The old log-probs (scored under the layout) against the sampler's: mismatch metrics,
        TIS weights, and masked importance sampling, whose rejected tokens leave the loss mask
        here, before the advantages read it (verl's order)."""
        algo = self.cfg.algorithm
        is_weights, metrics = rollout_mismatch(batch.old_logprobs, batch.sampler_logprobs,
                                               batch.loss_mask, algo.tis_imp_ratio_cap)
        if algo.rollout_rs is not None:
            keep, rs_metrics = rollout_rejection_mask(
                batch.old_logprobs, batch.sampler_logprobs, batch.loss_mask, algo.rollout_rs,
                algo.rollout_rs_threshold, algo.rollout_rs_threshold_lower)
            batch.response_mask = torch.where(batch.loss_mask.bool() & ~keep, 0.0, batch.response_mask)
            metrics.update(rs_metrics)
        return is_weights, metrics

    def update_actor(self, batch: RolloutBatch, is_weights: torch.Tensor | None,
                     old_logprobs_from_update: bool) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics, and with old_logprobs_from_update (the on-policy shortcut) the entropy of the
        update's forward, whose log-probs then fill batch.old_logprobs."""
        cfg = self.cfg.actor_rollout_ref
        groups = np.unique(batch.group_ids)
        steps = [np.flatnonzero(np.isin(batch.group_ids, chunk))
                 for chunk in np.array_split(groups, len(groups) // cfg.actor.ppo_mini_batch_size)]
        per_rank = make_mini_batches(batch, steps, cfg.actor.ppo_max_token_len_per_gpu,
                                     len(self.actor), is_weights)
        if self.cfg.trainer.colocate:
            self.rollout.call("sleep")
        per_rank_args = [(minis * cfg.actor.ppo_epochs, cfg.rollout.temperature, old_logprobs_from_update)
                         for minis in per_rank]
        results = self.actor.call_each("update", per_rank_args)
        metrics = {f"actor/{key}": value
                   for key, value in reduce_metrics([rank_metrics for rank_metrics, _ in results]).items()}
        entropy = None
        if old_logprobs_from_update:  # one mini-batch (rows in batch order), one epoch
            micro = [tmb.packed for minis in per_rank for tmb in minis[0].micro_batches]
            batch.old_logprobs, entropy = scatter_responses(
                batch, micro, [out for _, outs in results for out in outs], with_entropy=True)
            metrics.update(rollout_mismatch(batch.old_logprobs, batch.sampler_logprobs,
                                            batch.loss_mask)[1])
        return metrics, entropy

    def sync_weights(self) -> None:
        """The actor's weights into every engine, bucket by bucket (rl/weight_sync.py)."""
        if self.cfg.trainer.colocate:
            self.rollout.call("wake_up")
        self.actor.call("send_weights")

    def batch_metrics(self, batch: RolloutBatch, entropy) -> dict[str, float]:
        lengths = batch.response_lengths
        stats = [sample_stats(p, r, self.memento, ev)
                 for p, r, ev in zip(batch.prompt_ids, batch.response_ids, batch.evict_at)]
        mask = batch.loss_mask.bool()
        metrics = {
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(np.mean([f == "length" for f in batch.finish_reasons])),
            "response/forced_tokens": float(batch.forced_mask.sum().item()),
            "kv/peak_tokens_mean": float(np.mean([k["peak_tokens"] for k in stats])),
            "kv/full_peak_tokens_mean": float(np.mean([k["full_peak_tokens"] for k in stats])),
            "kv/peak_ratio_mean": float(np.mean([k["peak_tokens"] / max(k["full_peak_tokens"], 1)
                                                 for k in stats])),
            "kv/area_ratio_mean": float(np.mean([k["area_tokens"] / max(k["full_area_tokens"], 1)
                                                 for k in stats])),
            "kv/engine_peak_tokens_mean": float(batch.engine_kv_peak_tokens.mean()),
            "kv/evictions_mean": float(batch.num_evictions.mean()),
            "actor/entropy_old": float(entropy[mask].mean().item()) if mask.any() else 0.0,
        }
        if self.memento:
            for key in ("blocks", "memento_tokens", "compression"):
                metrics[f"memento/{key}_mean"] = float(np.mean([k[key] for k in stats]))
        return metrics

    # ------------------------------------------------------------- checkpoints

    def save(self) -> Path:
        def write(tmp: Path) -> None:
            self.actor.call("save_checkpoint", str(tmp / "actor"))
            write_json(tmp / "trainer_state.json", {
                "step": self.step_count,
                "loader": self.loader_state(),
                "wandb_id": self.tracker.run_id,
            })
        return self.checkpoints.save(self.step_count, write)

    def loader_state(self) -> dict:
        """The loader position a resume continues from: before the prompts of a batch still in
        flight (overlap_rollout), which is not saved and is generated again on resume."""
        if self.pending is not None:
            return self.loader_state_before_pending
        return self.loader.state_dict()

    def _resume(self) -> str | None:
        """Restore the newest checkpoint when trainer.resume; returns the wandb run id.

        The resumed run is bit-identical to an uninterrupted one only without overlap_rollout:
        with it, the first step after a resume generates its batch with the updated weights,
        where the uninterrupted run used the weights one update older.
        """
        latest = self.checkpoints.latest() if self.cfg.trainer.resume else None
        if latest is None:
            return None
        state = read_json(latest / "trainer_state.json")
        self.actor.call("load_checkpoint", str(latest / "actor"))
        self.loader.load_state_dict(state["loader"])
        self.step_count = state["step"]
        self.sync_weights()
        print(f"resumed from {latest} at step {self.step_count}", flush=True)
        return state.get("wandb_id")

    def export_hf(self, path: Path) -> None:
        self.actor.call("save_hf", str(path))
        self.tokenizer.save_pretrained(path)

    def close(self) -> None:
        if self.rollout_thread is not None:
            # A generation still in flight fails once its workers are killed; nobody reads it.
            self.rollout_thread.shutdown(wait=False, cancel_futures=True)
        self.reward.close()
        for group in (self.actor, self.ref, self.rollout):
            if group is not None:
                group.kill()


def scatter_responses(batch: RolloutBatch, micro_batches: list, outputs: list,
                      with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs (and entropy) from per-micro-batch (m, W) outputs, back in batch rows."""
    width = batch.response_mask.shape[1]
    logprobs = torch.zeros(len(batch), width)
    entropy = torch.zeros(len(batch), width) if with_entropy else None
    for mb, (lp, ent) in zip(micro_batches, outputs, strict=True):
        for m, row in enumerate(mb.indices):
            length = mb.response_lengths[m]
            logprobs[row, :length] = lp[m, :length]
            if entropy is not None:
                entropy[row, :length] = ent[m, :length]
    return logprobs, entropy


def memento_config(cfg: Config, tokenizer) -> MementoConfig | None:
    opts = cfg.actor_rollout_ref.model.memento
    return opts.layout(tokenizer) if opts.enable else None


def start_workers(cfg: Config, model_path: str, memento: MementoConfig | None):
    """Actor ranks, reference ranks (only when a KL term needs them) and rollout replicas."""
    from rl import cluster
    from rl.weight_sync import ENGINE_BACKEND, choose_backend
    from rollout.worker import RolloutWorker

    arr, trainer = cfg.actor_rollout_ref, cfg.trainer
    weight_sync = choose_backend(trainer.weight_sync, trainer.device, trainer.colocate)
    gpu = 1.0 if trainer.device == "cuda" else 0.0
    share = 0.5 if trainer.colocate else 1.0  # colocated actor and engine split each device

    def policy_group(name: str, trainable: bool, actor_cfg) -> cluster.WorkerGroup:
        return cluster.spawn_policy_group(name, model_path, arr.model, actor_cfg, cfg.algorithm,
                                          trainable, trainer.device, trainer.seed,
                                          trainer.placement_strategy,
                                          gpu_share=share if trainable else 1.0)

    optim = arr.actor.optim
    if not optim.total_steps:  # a decaying schedule spans the whole run's optimizer steps
        updates = cfg.data.train_batch_size // arr.actor.ppo_mini_batch_size * arr.actor.ppo_epochs
        optim = dataclasses.replace(optim, total_steps=trainer.total_training_steps * updates)
    actor = policy_group("actor", True, dataclasses.replace(arr.actor, optim=optim))
    ref = None
    if cfg.needs_reference:
        ref = policy_group("ref", False, dataclasses.replace(
            arr.actor, cpus_per_worker=arr.ref.cpus_per_worker))
    if trainer.colocate:
        placement, cpus = actor.placement, 0.0
    else:
        placement = cluster.make_placement(
            "rollout", {"CPU": arr.rollout.cpus_per_replica,
                        "GPU": gpu * arr.rollout.tensor_model_parallel_size},
            arr.rollout.num_replicas, trainer.placement_strategy)
        cpus = arr.rollout.cpus_per_replica
    rollout = cluster.spawn_group(
        "rollout", RolloutWorker, placement, cpus,
        gpu * share * arr.rollout.tensor_model_parallel_size,
        lambda r: dict(model_path=model_path, memento=memento,
                       tensor_parallel_size=arr.rollout.tensor_model_parallel_size,
                       max_num_seqs=arr.rollout.max_num_seqs, block_size=arr.rollout.kv_block_size,
                       **kv_cache_size(arr.rollout),
                       enforce_eager=arr.rollout.enforce_eager, in_process=arr.rollout.in_process,
                       max_model_len=cfg.data.max_prompt_length + cfg.data.max_response_length,
                       dtype=arr.model.dtype, seed=trainer.seed + r,
                       weight_transfer_backend=ENGINE_BACKEND[weight_sync]))
    if trainer.colocate:
        rollout.placement = None  # owned (and removed) by the actor group
    actor.call("init_weight_sync", weight_sync, rollout.handles,
               arr.rollout.tensor_model_parallel_size, trainer.weight_sync_bucket_mb << 20)
    return actor, ref, rollout


def kv_cache_size(rollout) -> dict:
    if rollout.kv_cache_memory_bytes is not None:
        return {"kv_cache_memory_bytes": rollout.kv_cache_memory_bytes}
    return {"gpu_memory_utilization": rollout.gpu_memory_utilization}


def train(cfg: Config) -> None:
    trainer = Trainer(cfg)
    try:
        trainer.fit()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    run_hydra("config", Config, train, argv)


if __name__ == "__main__":
    main()
