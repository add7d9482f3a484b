"""The pipeline's config schema: every knob of every stage, the paper's values as defaults.

Values marked (paper) come from the MEMENTO paper or its released pipeline (microsoft/memento,
data/pipeline); the others are ours. `load_config` builds the dataclasses from a plain dict and
names the offending key when a value is out of range (through rl.config.from_dict, as every
entry point's config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ClientConfig:
    """Where the labelling model runs: an OpenAI-compatible server, or vLLM in this process."""

    backend: Literal["openai", "local"] = "openai"
    model: str = ""  # served model name (openai) or checkpoint path (local)
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key; "" for none
    # How scores and verdicts are constrained: OpenAI's response_format json_schema, vLLM's
    # `structured_outputs` request field, or "none" (the prompt asks for JSON; output parsed).
    structured_outputs: Literal["response_format", "vllm", "none"] = "response_format"
    temperature: float | None = 0.0  # null: not sent (models that refuse the parameter)
    max_tokens_key: str = "max_tokens"  # OpenAI's reasoning models want "max_completion_tokens"
    extra_body: dict = field(default_factory=dict)  # merged into every request, e.g. top_p
    timeout_s: float = 600.0
    max_retries: int = 5  # transport errors, 429 and 5xx; other 4xx fail at once
    backoff_s: float = 1.0  # wait backoff_s * 2**attempt before retry `attempt`
    max_concurrency: int = 16  # requests in flight at once
    # backend=local only: extra vllm.LLM arguments (max_model_len, kv_cache_memory_bytes, ...)
    engine_kwargs: dict = field(default_factory=dict)
    # sent with every request (vLLM / SGLang servers, and the local engine), e.g.
    # {enable_thinking: false} for a Qwen3 labeller
    chat_template_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        _check(self.timeout_s > 0, "client.timeout_s", "must be > 0")
        _check(self.max_retries >= 0, "client.max_retries", "must be >= 0")
        _check(self.max_concurrency >= 1, "client.max_concurrency", "must be >= 1")


@dataclass
class SeedConfig:
    """Which traces enter the pipeline."""

    min_reasoning_tokens: int = 400  # shorter traces are dropped (ours: two 200-token blocks)
    max_cjk_fraction: float = 0.0  # (paper) any CJK character drops the trace


@dataclass
class SplitConfig:
    min_sentence_tokens: int = 5  # (paper) shorter fragments join a neighbour


@dataclass
class ScoringConfig:
    """Boundary scores 0-3 from the LLM, over windows of sentences."""

    # (paper) one pass over 16-sentence windows; [16, 11] is the two-pass mode, averaged.
    windows: list[int] = field(default_factory=lambda: [16])
    include_problem: bool = True  # the problem as context in the prompt
    max_tokens: int = 1024
    parse_retries: int = 2  # malformed answers re-asked before the trace fails

    def __post_init__(self):
        _check(bool(self.windows) and all(w >= 2 for w in self.windows), "scoring.windows",
               "needs one or more window sizes >= 2 (sentences per call)")


@dataclass
class SegmentConfig:
    min_block_tokens: int = 200  # (paper)
    min_blocks: int = 1  # (paper's runner)
    max_blocks: int | None = None  # (paper) unbounded
    cv_weight: float = 0.5  # (paper) weight of the block-size coefficient of variation
    # the cut-score total over k blocks (paper's release) or over the k-1 cuts: segment.py
    mean_over: Literal["blocks", "cuts"] = "blocks"

    def __post_init__(self):
        _check(self.min_blocks >= 1, "segment.min_blocks", "must be >= 1")
        _check(self.mean_over in ("blocks", "cuts"), "segment.mean_over", "must be blocks or cuts")
        _check(self.max_blocks is None or self.max_blocks >= self.min_blocks,
               "segment.max_blocks", "must be null or >= segment.min_blocks")


@dataclass
class MementoConfig:
    """Writing, judging and refining one memento per block."""

    target_ratio: list[float] = field(default_factory=lambda: [0.1, 0.2])  # (paper) of block tokens
    max_tokens: int = 2048  # completion cap of a write / refine call
    pass_score: float = 8.0  # (paper) judge score that needs no rewrite
    max_rounds: int = 3  # (paper) judged rounds: the first memento plus up to 2 rewrites
    judge_max_tokens: int = 1024
    feedback_max_chars: int = 800  # bound on the judge's feedback string (schema maxLength)
    parse_retries: int = 2

    def __post_init__(self):
        _check(len(self.target_ratio) == 2 and 0 < self.target_ratio[0] <= self.target_ratio[1],
               "mementos.target_ratio", "must be [low, high] with 0 < low <= high")
        _check(0 <= self.pass_score <= 10, "mementos.pass_score", "must be in [0, 10]")
        _check(self.max_rounds >= 1, "mementos.max_rounds", "must be >= 1")


@dataclass
class PipelineConfig:
    input_files: list[str] = field(default_factory=list)  # .jsonl / .parquet
    output_dir: str = "outputs/memento_data"
    id_key: str = "id"  # row field naming a trace; absent: a hash of problem and reasoning
    limit: int | None = None  # first N traces only
    max_concurrent_traces: int = 8
    retry_failed: bool = False  # rerun traces recorded as failed (rejected ones stay skipped)
    tokenizer: str | None = None  # HF tokenizer for token counts; null: chars / 4
    progress: bool = True
    client: ClientConfig = field(default_factory=ClientConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    mementos: MementoConfig = field(default_factory=MementoConfig)

    def __post_init__(self):
        _check(self.max_concurrent_traces >= 1, "max_concurrent_traces", "must be >= 1")
        _check(self.limit is None or self.limit >= 0, "limit", "must be null or >= 0")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"[{key}] {message}")


def check_required(cfg: PipelineConfig) -> PipelineConfig:
    """The two keys without a usable default (the schema's defaults must build), checked before
    a run starts."""
    _check(bool(cfg.input_files), "input_files", "needs at least one .jsonl/.parquet file")
    _check(bool(cfg.client.model), "client.model", "must name the model (or its path)")
    return cfg


def load_config(raw: dict[str, Any]) -> PipelineConfig:
    """PipelineConfig from a plain dict: unknown keys, wrong types and bad values name their key."""
    from rl.config import from_dict

    return check_required(from_dict(PipelineConfig, raw))
