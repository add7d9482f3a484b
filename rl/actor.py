"""One rank of the policy: log-probs under the memento layout, and DeepSpeed updates.

The same class serves the actor (trainable, wrapped by DeepSpeed ZeRO 0-3 with optional CPU
offload) and the reference policy (frozen, forward only). It knows nothing about Ray: the
controller wraps it with `ray.remote` (rl/cluster.py) and tests can use it directly.

Every log-prob goes through `kernels.compute_logprobs` with the packed micro-batch's `evict_at`,
so the trainer scores each token under exactly the attention the rollout engine used.
Gradient accumulation is caller-owned (`managed_gradient_accumulation: false`): each micro-batch
loss is already normalised by the global token/sequence count (rl.losses.agg_loss), backward
accumulates, and one `step()` per mini-batch reduces across ranks and updates.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from rl.algo_config import AlgoConfig
from rl.batch import MicroBatch, MiniBatch, TrainMicroBatch
from rl.config import ActorConfig, ModelConfig, OptimConfig
from rl.losses import actor_loss, combine_micro_batches, reduce_metrics, sft_loss


def lr_factor(optim: OptimConfig, step: int) -> float:
    """Multiplier of optim.lr before optimizer step `step` (0-based): linear warmup over
    warmup_steps, then constant, or a cosine from 1 down to min_lr_ratio at total_steps."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.lr_scheduler_type == "constant" or optim.total_steps <= optim.warmup_steps:
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / (optim.total_steps - optim.warmup_steps))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(cfg: ActorConfig, dtype: str) -> dict:
    zero = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg.offload_param:
        zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # keep torch AdamW (no CPUAdam JIT build) with offload
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class PolicyWorker:
    """Holds one rank's policy. `trainable=False` gives the frozen reference."""

    def __init__(self, model_path: str, model_cfg: ModelConfig, actor_cfg: ActorConfig,
                 algo: AlgoConfig, trainable: bool = True, rank: int = 0, world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: int = 29500, device: str = "cpu",
                 seed: int = 0):
        from transformers import AutoModelForCausalLM

        from kernels import enable_memento_attention

        torch.manual_seed(seed + rank)
        self.cfg, self.algo, self.trainable = actor_cfg, algo, trainable
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
            if device == "cuda" else torch.device("cpu")
        dtype = getattr(torch, model_cfg.dtype)
        model = enable_memento_attention(AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype))
        model.config.use_cache = False
        if actor_cfg.gradient_checkpointing and trainable:
            model.gradient_checkpointing_enable()
        self.engine = None
        if trainable:
            self.engine = self._init_deepspeed(model, model_cfg.dtype, master_addr, master_port)
            self.model = self.engine.module
        else:
            model.requires_grad_(False)
            self.model = model.to(self.device).eval()

    def _init_deepspeed(self, model, dtype: str, master_addr: str, master_port: int):
        import deepspeed

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port),
                          RANK=str(self.rank), WORLD_SIZE=str(self.world_size),
                          LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        optim = self.cfg.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                      weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, optim))
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                          config=deepspeed_config(self.cfg, dtype))
        return engine

    # ----------------------------------------------------------------- log-probs

    def _forward(self, mb: MicroBatch, temperature: float, with_entropy: bool):
        """(m, W) response log-probs (and entropy, or None) of one packed micro-batch."""
        from kernels import compute_logprobs

        if mb.num_tokens == 0:  # padding micro-batch: keeps collective calls in step across ranks
            ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
            logprobs, _ = compute_logprobs(self.model, ids, ids, ids + 1, ids, temperature)
            empty = logprobs[:0, :0]  # (0, 0), still attached to the graph
            return empty, (empty if with_entropy else None)
        row = (lambda t: t.to(self.device).unsqueeze(0))  # (N,) -> (1, N): one packed row
        logprobs, entropy = compute_logprobs(self.model, row(mb.input_ids), row(mb.position_ids),
                                             row(mb.evict_at), row(mb.targets), temperature)
        width = max(mb.response_lengths, default=0)
        logprobs = mb.gather_responses(logprobs[0], width)
        entropy = mb.gather_responses(entropy[0], width) if with_entropy else None
        return logprobs, entropy

    @torch.no_grad()
    def compute_logprobs(self, micro_batches: list[MicroBatch], temperature: float,
                         with_entropy: bool = False) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per micro-batch: (m, W) log-probs of each member's response tokens, and entropy."""
        self.model.eval()
        out = []
        for mb in micro_batches:
            logprobs, entropy = self._forward(mb, temperature, with_entropy)
            out.append((logprobs.cpu(), entropy.cpu() if entropy is not None else None))
        return out

    # ------------------------------------------------------------------- update

    def update(self, mini_batches: list[MiniBatch], temperature: float,
               old_logprobs_from_forward: bool = False
               ) -> tuple[dict[str, float], list[tuple[torch.Tensor, torch.Tensor]]]:
        """RL: one optimizer step per mini-batch with the configured policy loss.

        old_logprobs_from_forward: the on-policy shortcut, for an update that is one optimizer
        step (one mini-batch): the old log-probs are this very forward's, detached, as verl's
        actor does, saving the separate pass; the micro-batches then carry none. Each
        micro-batch's (m, W) log-probs and entropy from that forward come back in order, as
        compute_logprobs would return them; otherwise the list is empty.
        """
        for mini in mini_batches:
            for tmb in mini.micro_batches:
                if (tmb.old_logprobs is None) != old_logprobs_from_forward:
                    raise ValueError("update: micro-batches carry old_logprobs exactly when "
                                     f"old_logprobs_from_forward is False (it is {old_logprobs_from_forward})")
        if old_logprobs_from_forward and len(mini_batches) != 1:
            raise ValueError(f"update: old_logprobs_from_forward needs one optimizer step, got {len(mini_batches)}")

        def loss_fn(tmb: TrainMicroBatch, logprobs, entropy, mini: MiniBatch):
            device = logprobs.device
            old = logprobs.detach() if old_logprobs_from_forward else tmb.old_logprobs.to(device)
            return actor_loss(
                self.algo, logprobs, old, tmb.advantages.to(device),
                tmb.loss_mask.to(device), ref_logprobs=_to(tmb.ref_logprobs, device),
                entropy=entropy, is_weights=_to(tmb.is_weights, device),
                dp_size=self.world_size, batch_num_tokens=mini.num_loss_tokens,
                global_batch_size=mini.num_loss_sequences,
                group_num_tokens=_to(tmb.group_num_tokens, device), num_groups=mini.num_loss_groups)

        return self._train(mini_batches, temperature,
                           self.algo.entropy_coeff != 0 or old_logprobs_from_forward, loss_fn,
                           keep_forward=old_logprobs_from_forward)

    def sft_update(self, mini_batches: list[MiniBatch]) -> dict[str, float]:
        """SFT: token-mean negative log-likelihood of the completion tokens."""
        def loss_fn(tmb: TrainMicroBatch, logprobs, entropy, mini: MiniBatch):
            return sft_loss(logprobs, tmb.loss_mask.to(logprobs.device), dp_size=self.world_size,
                            batch_num_tokens=mini.num_loss_tokens)

        return self._train(mini_batches, 1.0, False, loss_fn)[0]

    def _train(self, mini_batches: list[MiniBatch], temperature: float, with_entropy: bool,
               loss_fn, keep_forward: bool = False
               ) -> tuple[dict[str, float], list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Backward every micro-batch, one `step()` per mini-batch.

        Metrics combine as rl.losses.METRIC_AGGREGATION declares them, over micro-batches and
        then steps. With keep_forward, each micro-batch's detached (m, W) log-probs and entropy
        from its forward come back too, in order.
        """
        assert self.engine is not None, "training called on a frozen (reference) worker"
        self.model.train()
        steps: list[dict[str, float]] = []
        forward: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for mini in mini_batches:
            per_micro = []
            for tmb in mini.micro_batches:
                logprobs, entropy = self._forward(tmb.packed, temperature, with_entropy)
                if keep_forward:
                    forward.append((logprobs.detach().cpu(),
                                    entropy.detach().cpu() if entropy is not None else None))
                if logprobs.numel() == 0:  # padding or all-empty responses: nothing carries loss
                    loss = logprobs.sum()  # zero, with a graph through the model
                else:
                    loss, metrics = loss_fn(tmb, logprobs, entropy, mini)
                    per_micro.append((metrics, tmb.loss_mask.sum().item() / max(mini.num_loss_tokens, 1)))
                self.engine.backward(loss, scale_wrt_gas=False)
            local_norm = self._local_grad_norm() if self.cfg.zero_stage == 0 else None
            self.engine.step()
            step = combine_micro_batches(per_micro, self.world_size)
            step["grad_norm"] = local_norm if local_norm is not None else \
                float(self.engine.get_global_grad_norm() or 0.0)
            step["lr"] = self.engine.get_lr()[0]
            steps.append(step)
        return reduce_metrics(steps), forward

    def _local_grad_norm(self) -> float:
        """Stage 0 has no ZeRO optimizer to report a norm: this rank's norm before reduction."""
        grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    # ---------------------------------------------------------------- weights out

    def init_weight_sync(self, backend: str, replicas: list, ranks_per_replica: int,
                         bucket_bytes: int) -> None:
        """Connect to the rollout replicas over `backend` (rl/weight_sync.py; all ranks call)."""
        from rl.weight_sync import ActorWeights, make_broadcast

        gather = None
        if self.engine is not None and self.cfg.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters
        self.weight_broadcast = make_broadcast(backend, ActorWeights(self.model, bucket_bytes, gather),
                                               replicas, ranks_per_replica, self.rank, bucket_bytes)

    def send_weights(self) -> None:
        """Push the current weights into every replica, bucket by bucket (all ranks call)."""
        self.weight_broadcast.send()

    def named_weights(self) -> dict[str, torch.Tensor] | None:
        """Full CPU weights for the Hugging Face export (on rank 0; None elsewhere).

        Under ZeRO-3 every rank must call this: the gather is a collective.
        """
        params = list(self.model.named_parameters())
        if self.engine is not None and self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in params]):
                weights = {n: p.detach().cpu().clone() for n, p in params} if self.rank == 0 else None
            return weights
        return {n: p.detach().cpu().clone() for n, p in params} if self.rank == 0 else None

    def save_hf(self, path: str) -> None:
        """Export Hugging Face weights (rank 0 writes; all ranks call under ZeRO-3)."""
        weights = self.named_weights()
        if self.rank == 0:
            self.model.save_pretrained(path, state_dict=weights)

    # --------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: str) -> None:
        """Model, optimizer, scheduler and RNG state of this rank (all ranks call)."""
        self.engine.save_checkpoint(directory, tag="state", save_latest=False,
                                    client_state={"torch_rng": torch.get_rng_state()})

    def load_checkpoint(self, directory: str) -> None:
        _, client = self.engine.load_checkpoint(directory, tag="state")
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        torch.set_rng_state(client["torch_rng"])

    def ping(self) -> int:
        return self.rank

    def weights_checksum(self) -> float:
        """Sum of all parameters (gathered under ZeRO-3): ranks in sync report the same value."""
        weights = self.named_weights() if self.rank == 0 or self.cfg.zero_stage == 3 else None
        if weights is None:
            weights = {n: p.detach() for n, p in self.model.named_parameters()}
        return float(sum(w.double().sum() for w in weights.values()))


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)
