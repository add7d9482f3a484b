"""The trainer's config schema: typed dataclasses validated before any worker starts.

Hydra composes the YAML in `conf/` (groups, presets, command-line overrides); `load_config`
then builds this schema from the result. `run_hydra` is the one command-line front end of every
entry point (rl.train, rl.sft, rl.eval, rl.demo), each with its YAML in `conf/`. An unknown key, a wrong type or a bad combination stops
the run with a message naming the key (`data.train_batch_size must be int, got 'eight' (str)`).
Defaults live here, not in the code that reads them. Key names follow verl
(`actor_rollout_ref.rollout.n`, `data.max_response_length`, ...); the policy-loss keys verl keeps
under `actor_rollout_ref.actor` live in `algorithm` here (see `rl.algo_config`).

    python -m rl.train --cfg job        # print the composed config and exit (dry run)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from rewards.manager import RewardConfig
from rl.algo_config import AlgoConfig
from rollout.layout import MementoConfig

Dtype = Literal["float32", "bfloat16", "float16"]  # weights and compute of a policy


@dataclass
class MementoOptions:
    """Layout options (rollout.layout.MementoConfig); token ids come from the tokenizer.

    enable=False trains and generates with plain causal attention (the control).
    """

    enable: bool = True
    mask_delimiters: bool = False
    keep_last_n_blocks: int = 0
    keep_last_block_for_answer: bool = False

    def __post_init__(self) -> None:
        MementoConfig(0, 1, 2, 3, **self.layout_options())  # its checks, on stand-in token ids

    def layout_options(self) -> dict[str, bool | int]:
        """The eviction options as MementoConfig (and the engine) take them."""
        return {"mask_delimiters": self.mask_delimiters,
                "keep_last_n_blocks": self.keep_last_n_blocks,
                "keep_last_block_for_answer": self.keep_last_block_for_answer}

    def layout(self, tokenizer) -> MementoConfig:
        """The layout these options give with the tokenizer's memento token ids."""
        return MementoConfig.from_tokenizer(tokenizer, **self.layout_options())


@dataclass
class ModelConfig:
    """path: a Hugging Face checkpoint directory, or "tiny" to build the in-repo tiny model."""

    path: str = "tiny"
    dtype: Dtype = "float32"
    memento: MementoOptions = field(default_factory=MementoOptions)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # after warmup: "constant", or "cosine" from lr down to lr * min_lr_ratio over total_steps
    # optimizer steps (the SFT runner and the trainer fill total_steps from their step counts)
    lr_scheduler_type: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0
    total_steps: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_scheduler_type not in ("constant", "cosine"):
            raise ValueError(f"lr_scheduler_type must be 'constant' or 'cosine', got "
                             f"{self.lr_scheduler_type!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must have two values, got {self.betas}")


@dataclass
class ActorConfig:
    """The trained policy: data-parallel DeepSpeed ranks, one Ray actor each.

    ppo_mini_batch_size counts prompts (each with rollout.n samples) per optimizer step, as in verl.
    ppo_max_token_len_per_gpu is the token budget of one packed micro-batch.
    """

    num_workers: int = 1
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    ppo_mini_batch_size: int = 4
    ppo_epochs: int = 1
    ppo_max_token_len_per_gpu: int = 4096
    gradient_checkpointing: bool = False
    cpus_per_worker: float = 1.0  # Ray CPUs per rank; Ray sets its torch threads to floor(this)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param requires zero_stage=3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer requires zero_stage >= 1")
        for key in ("num_workers", "ppo_mini_batch_size", "ppo_epochs", "ppo_max_token_len_per_gpu"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@dataclass
class RefConfig:
    """Frozen reference policy; started only when a KL term needs it. Its micro-batches take the
    actor's token budget (actor.ppo_max_token_len_per_gpu)."""

    cpus_per_worker: float = 1.0


@dataclass
class SamplingConfig:
    """How responses are sampled: in RL (`actor_rollout_ref.rollout`) and in evaluation."""

    n: int = 4  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    max_block_tokens: int = 0  # force <|block_end|> when an open block reaches this (0: off)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1 or self.max_block_tokens < 0:
            raise ValueError(f"top_k must be >= -1 and max_block_tokens >= 0, got {self.top_k} "
                             f"and {self.max_block_tokens}")


@dataclass
class RolloutConfig(SamplingConfig):
    """Sampling (the SamplingConfig keys) and the memento engine (one vLLM engine per replica)."""

    num_replicas: int = 1
    tensor_model_parallel_size: int = 1
    gpu_memory_utilization: float = 0.1  # on the CPU build: share of RAM for the KV cache
    kv_cache_memory_bytes: int | None = None  # fixed KV cache size instead (preferred on CPU)
    max_num_seqs: int = 64
    kv_block_size: int = 32  # tokens per KV page; the CPU attention kernel needs a multiple of 32
    enforce_eager: bool = True
    cpus_per_replica: float = 1.0
    # Run vLLM's engine core inside the rollout worker's process (executor "uni") instead of an
    # EngineCore process and a worker process that hand each decode step to each other; faster
    # for small models. Tensor parallelism needs the separate processes: set it to false then.
    in_process: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:  # the trainer scores log-probs at this temperature
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got "
                             f"{self.gpu_memory_utilization}")
        if self.in_process and self.tensor_model_parallel_size > 1:
            raise ValueError("in_process runs one engine process: it needs "
                             "tensor_model_parallel_size 1 (set in_process=false)")


@dataclass
class ActorRolloutRefConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    ref: RefConfig = field(default_factory=RefConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass
class DataConfig:
    """verl-format parquet/jsonl prompt files; "builtin:arith" generates the built-in task."""

    train_files: list[str] = field(default_factory=lambda: ["builtin:arith"])
    val_files: list[str] = field(default_factory=list)
    train_batch_size: int = 4  # prompts per step
    max_prompt_length: int = 256
    max_response_length: int = 256
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("train_batch_size", "max_prompt_length", "max_response_length"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.train_files:
            raise ValueError("train_files must list at least one file")


@dataclass
class TrainerConfig:
    total_training_steps: int = 4
    save_freq: int = 2  # steps between checkpoints; 0 = only at the end
    max_checkpoints_to_keep: int = 2
    default_local_dir: str = "outputs/grpo"
    resume: bool = True  # continue from the newest checkpoint in default_local_dir
    project_name: str = "memento-rl"
    experiment_name: str = "tiny-grpo"
    logger: list[str] = field(default_factory=lambda: ["console", "wandb"])
    ray_address: str | None = None  # None: start a local Ray; "auto" or "host:port": attach
    device: Literal["cpu", "cuda"] = "cpu"
    colocate: bool = False  # actor and rollout share devices; the engine sleeps while training
    overlap_rollout: bool = False  # generate step k+1 during step k's update (one step off-policy)
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # how worker bundles fill the nodes
    seed: int = 0
    # How new weights reach the engines (rl/weight_sync.py): auto = ipc when colocated on GPUs,
    # nccl across GPUs, object_store on CPU; each sync moves buckets of weight_sync_bucket_mb.
    weight_sync: Literal["auto", "object_store", "nccl", "ipc"] = "auto"
    weight_sync_bucket_mb: int = 1024

    def __post_init__(self) -> None:
        from rl.weight_sync import choose_backend

        choose_backend(self.weight_sync, self.device, self.colocate)  # raises on a bad combination
        if self.weight_sync_bucket_mb < 1:
            raise ValueError(f"weight_sync_bucket_mb must be >= 1, got {self.weight_sync_bucket_mb}")
        if self.total_training_steps < 1:
            raise ValueError(f"total_training_steps must be >= 1, got {self.total_training_steps}")
        unknown = set(self.logger) - {"console", "wandb"}
        if unknown:
            raise ValueError(f"logger has unknown backends {sorted(unknown)}")
        if self.overlap_rollout and self.colocate:
            raise ValueError("overlap_rollout requires trainer.colocate=false (a colocated engine "
                             "sleeps while the actor trains, so nothing can overlap)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    actor_rollout_ref: ActorRolloutRefConfig = field(default_factory=ActorRolloutRefConfig)
    algorithm: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        actor, data = self.actor_rollout_ref.actor, self.data
        if data.train_batch_size % actor.ppo_mini_batch_size:
            raise ValueError(f"data.train_batch_size ({data.train_batch_size}) must be a multiple of "
                             f"actor_rollout_ref.actor.ppo_mini_batch_size ({actor.ppo_mini_batch_size})")
        rollout = self.actor_rollout_ref.rollout
        if self.trainer.colocate and (rollout.num_replicas != actor.num_workers
                                      or rollout.tensor_model_parallel_size != 1):
            raise ValueError("trainer.colocate requires actor_rollout_ref.rollout.num_replicas == "
                             "actor_rollout_ref.actor.num_workers and tensor_model_parallel_size == 1")
        longest = data.max_prompt_length + data.max_response_length
        if actor.ppo_max_token_len_per_gpu < longest:
            raise ValueError(f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu "
                             f"({actor.ppo_max_token_len_per_gpu}) must hold one whole sequence "
                             f"(max_prompt_length + max_response_length = {longest})")

    @property
    def needs_reference(self) -> bool:
        return self.algorithm.use_kl_loss or self.algorithm.use_kl_in_reward


def from_dict(cls: type, values: Any, prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a plain mapping, recursing into nested dataclasses.

    Unknown keys and wrong types raise, naming the full dotted key. Keys left out keep the
    values of `base`, and inside a nested section those of the field's own default (evaluation's
    `sampling` defaults are the paper's, not SamplingConfig's); else the class defaults.
    """
    if not isinstance(values, dict):
        raise TypeError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key {prefix}{unknown[0]} (known keys there: {sorted(known)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {} if base is None else {name: getattr(base, name) for name in fields}
    for name, value in values.items():
        hint, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            inner = kwargs.get(name)
            if inner is None and fields[name].default_factory is not dataclasses.MISSING:
                inner = fields[name].default_factory()
            kwargs[name] = from_dict(hint, value, key + ".", inner)
        elif not matches(value, hint):
            raise TypeError(f"{key} must be {describe(hint)}, got {value!r} ({type(value).__name__})")
        else:
            kwargs[name] = tuple(value) if typing.get_origin(hint) is tuple else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        # __post_init__ messages start with the bare key; give it its full dotted path, unless
        # the message names it already, verl style ("[reward.math_workers] must be > 0").
        named = str(err).startswith(f"[{prefix}")
        raise type(err)(str(err) if named else f"{prefix}{err}") from None


def matches(value: Any, hint: Any) -> bool:
    """Whether a config value has the annotated type (bools are not ints, ints are floats)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is tuple:  # tuple[X, ...]; a config list is taken for it (from_dict converts)
        item = typing.get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint)


def describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def load_config(cfg) -> Config:
    """Validate a composed Hydra/OmegaConf config (or a plain dict) into the schema."""
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    return from_dict(Config, cfg)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def schema_defaults(cls: type) -> dict[str, Any]:
    """Every key of dataclass `cls` with its default (nested dataclasses as dicts), without
    building `cls` itself, whose `__post_init__` may reject the defaults (SFT needs its files)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        values[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return values


def run_hydra(config_name: str, schema: type, job: Callable[[Any], None],
              argv: list[str] | None = None) -> None:
    """`job(cfg)`, `cfg` the `schema` instance Hydra composes from `conf/<config_name>.yaml`.

    The schema's keys and defaults are stored as the config `<config_name>_schema`, which the
    YAML lists first in its defaults, so any key can be set as `key=value` on the command line
    (Hydra types the values: `1e-4` is a float); an unknown key fails in Hydra, a wrong type or
    value in `from_dict`, naming the key. `--cfg job` prints the composed config and exits.
    `argv` stands in for the command line (tests).
    """
    import sys

    import hydra
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=f"{config_name}_schema",
                                 node=OmegaConf.create(schema_defaults(schema)))

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base=None)
    def run(raw) -> None:
        job(from_dict(schema, OmegaConf.to_container(raw, resolve=True, throw_on_missing=True)))

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    run()
