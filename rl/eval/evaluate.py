"""Evaluate a checkpoint on benchmark files: accuracy, and the KV memory each response needed.

    python -m rl.eval model_path=ckpt benchmark_files=[aime24.jsonl,math500.parquet]
    python -m rl.eval model_path=ckpt benchmark_files=[...] memento.enable=false   # the control
    python -m rl.eval model_path=ckpt benchmark_files=[...] restart_mode=true      # the ablation

(conf/eval.yaml; `--cfg job` prints the composed config and exits.)

Each problem gets `n` samples from the memento engine (`rollout.engine`), or from plain vLLM with
`memento.enable=false`; `restart_mode=true` is the paper's restart ablation (mementos keep no KV
computed while their block was visible). Sampling defaults follow the paper's protocol
(temperature 0.6, top-p 0.95, top-k 20, 32,000 new tokens; the paper draws 64 samples per
competition problem and 2 for MATH-500/GPQA). The reward manager scores each response (answer
after `</think>`); `rl.eval.metrics` turns the verdicts into pass@1 with its standard error over
problems, unbiased pass@k and maj@k.

KV per response is replayed from its tokens, as the paper does, by the trainer's own per-sample
statistics (`rl.sample_metrics`): peak and area (token-steps) under the memento layout and under
full attention, blocks, memento length and compression; the engine's own live-KV peak is
recorded beside it (it holds no KV for the last sampled token, so it is at most one below the
replayed peak). Bytes use `kv_bytes_per_token` from the model config.

Benchmark rows are verl rows (`prompt` chat messages, `data_source`, `reward_model.ground_truth`)
or simple rows `{problem, answer, data_source}` (`instruction` is appended to the problem;
data_source defaults to the file name, which routes the verifier, see `rewards.manager`).

Output directory (`output_dir`):
    config.json     the config these results belong to; a rerun with a different one refuses
    problems.jsonl  one line per finished problem, appended after every chunk of problems, so an
                    interrupted run loses at most one chunk and a rerun evaluates only the rest
    results.json, report.md, *.png    summary per benchmark (rl.eval.report)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence


from rewards.manager import RewardConfig, RewardManager
from rl.config import Dtype, MementoOptions, SamplingConfig
from rl.data.chat import prompt_token_ids
from rl.data.prompts import PromptExample, PromptRow, parse_prompt_row
from rl.data.rows import DataError, read_rows
from rl.eval.metrics import accuracy_metrics, default_ks
from rl.sample_metrics import sample_stats
from rollout.layout import MementoConfig, kv_bytes_per_token

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # per Dtype
# Keys that may change between a run and its resumption without mixing incomparable results.
RESUMABLE_KEYS = ("output_dir", "chunk_size", "max_num_seqs", "gpu_memory_utilization",
                  "kv_cache_memory_bytes")


def paper_sampling() -> SamplingConfig:
    """The paper's protocol: temperature 0.6, top-p 0.95, top-k 20 (it draws 64 samples per
    competition problem and 2 for MATH-500 / GPQA; 8 here by default)."""
    return SamplingConfig(n=8, temperature=0.6, top_p=0.95, top_k=20)


@dataclass
class EvalConfig:
    """What to evaluate and how; every key can be set on the command line (`key=value`)."""

    model_path: str = ""  # Hugging Face checkpoint directory (required)
    benchmark_files: list[str] = field(default_factory=list)  # .jsonl / .parquet (required)
    output_dir: str = "outputs/eval"
    # sampling.n samples per problem; sampling.max_block_tokens: the block-length cap
    sampling: SamplingConfig = field(default_factory=paper_sampling)
    max_tokens: int = 32000  # new tokens per response
    seed: int = 0  # sample j of problem i (file order) gets seed + i * n + j
    instruction: str = "Put your final answer in \\boxed{}."  # appended to simple rows' problem
    memento: MementoOptions = field(default_factory=MementoOptions)  # enable=false: the control
    restart_mode: bool = False  # the paper's restart ablation (keep_last_n_blocks=0 only)
    chunk_size: int = 16  # problems per engine call and per append to problems.jsonl
    save_responses: bool = False  # store each response's text in problems.jsonl
    dtype: Literal["auto"] | Dtype = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85  # on the CPU build vLLM reads it as a share of RAM
    kv_cache_memory_bytes: int | None = None  # size the KV cache directly (CPU build)
    max_num_seqs: int = 256
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        for key in ("max_tokens", "chunk_size", "tensor_parallel_size", "max_num_seqs"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.dtype not in ("auto", *DTYPE_BYTES):
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPE_BYTES)}, "
                             f"got {self.dtype!r}")
        if self.restart_mode and (not self.memento.enable or self.memento.keep_last_n_blocks != 0
                                  or self.memento.keep_last_block_for_answer):
            raise ValueError("restart_mode needs memento.enable=true, memento.keep_last_n_blocks=0 "
                             "and memento.keep_last_block_for_answer=false")


# ------------------------------------------------------------------------------- data


def parse_benchmark_row(row: dict[str, Any], where: str, default_source: str,
                        instruction: str) -> PromptRow:
    """A verl row as is, or a simple `{problem, answer, data_source}` row as one user message."""
    if "prompt" in row:
        return parse_prompt_row(row, where)
    problem, answer = row.get("problem"), row.get("answer")
    if not isinstance(problem, str) or not problem or answer is None:
        raise DataError(f"{where}: needs a verl 'prompt' or a simple 'problem' (str) and 'answer'")
    content = f"{problem}\n\n{instruction}" if instruction else problem
    return PromptRow(messages=[{"role": "user", "content": content}],
                     data_source=str(row.get("data_source") or default_source),
                     ground_truth=str(answer), extra_info={})


def load_benchmarks(files: Sequence[str], tokenizer, instruction: str) -> list[PromptExample]:
    """Every row of every file, chat-templated and tokenised, with `id` "<benchmark>/<row>" (the
    benchmark is the file name without suffix); any malformed row raises."""
    problems: list[PromptExample] = []
    for path in map(Path, files):
        benchmark = path.stem
        rows = [parse_benchmark_row(row, f"{path}: row {i}", benchmark, instruction)
                for i, row in enumerate(read_rows(path))]
        for i, (row, ids) in enumerate(zip(rows, prompt_token_ids(tokenizer,
                                                                  [r.messages for r in rows]))):
            problems.append(PromptExample(len(problems), ids, row.data_source, row.ground_truth,
                                          row.extra_info, id=f"{benchmark}/{i}"))
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise DataError("two benchmark files share a name; problem ids must be unique")
    return problems


# ----------------------------------------------------------------------------- resume


def check_or_write_config(cfg: EvalConfig, out: Path) -> None:
    """Write config.json, or refuse to resume when it records a different evaluation."""
    path = out / "config.json"
    mine = dotted(asdict(cfg))
    if path.exists():
        theirs = dotted(json.loads(path.read_text()))
        changed = sorted(k for k in set(mine) | set(theirs)
                         if k not in RESUMABLE_KEYS and mine.get(k) != theirs.get(k))
        if changed:
            raise ValueError(f"{out} holds results of a different evaluation ({changed[0]}: "
                             f"{theirs.get(changed[0])!r} there, {mine.get(changed[0])!r} now); "
                             "use another output_dir or delete it")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(cfg), indent=2))


def dotted(values: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as {"sampling.n": 8, ...}, so a difference names its key."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_finished(path: Path) -> dict[str, dict]:
    """Finished problems by id; a torn last line (killed mid-write) is ignored."""
    finished: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            finished[record["id"]] = record
    return finished


def append_records(path: Path, records: list[dict]) -> None:
    # Records start on a fresh line even after a torn one, and reach the disk before we go on.
    torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        f.write("\n" if torn else "")
        f.writelines(json.dumps(r) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())


def chunks(todo: list[PromptExample], size: int) -> Iterator[list[PromptExample]]:
    """Runs of consecutive indices, at most `size` long (one engine call each)."""
    chunk: list[PromptExample] = []
    for p in todo:
        if chunk and (len(chunk) == size or p.index != chunk[-1].index + 1):
            yield chunk
            chunk = []
        chunk.append(p)
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- scoring


def response_record(sample, layout: MementoConfig | None, reward_info) -> dict:
    """Verdict and KV accounting of one sample (token counts; bytes are in the summary); the
    memento statistics only under a layout (a tokenizer without memento tokens has none)."""
    return {"correct": reward_info.verdict == "correct", "verdict": reward_info.verdict,
            "extracted": reward_info.extracted, "response_tokens": len(sample.response_ids),
            "finish_reason": sample.finish_reason,
            "engine_peak_tokens": sample.kv_peak_tokens, "num_evictions": sample.num_evictions,
            **sample_stats(sample.prompt_ids, sample.response_ids, layout)}


def score_chunk(chunk: list[PromptExample], samples: list, n: int, tokenizer, rewards: RewardManager,
                layout: MementoConfig | None, save_responses: bool) -> list[dict]:
    """One record per problem of the chunk; `samples` are prompt-major, n per problem."""
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=False)
    batch = rewards.score(texts, [p.data_source for p in chunk for _ in range(n)],
                          [p.ground_truth for p in chunk for _ in range(n)],
                          [p.extra_info for p in chunk for _ in range(n)])
    records = []
    for i, problem in enumerate(chunk):
        responses = [response_record(samples[j], layout, batch.infos[j])
                     for j in range(i * n, (i + 1) * n)]
        if save_responses:
            for r, text in zip(responses, texts[i * n:(i + 1) * n]):
                r["text"] = text
        records.append({"id": problem.id, "benchmark": problem.id.rpartition("/")[0],
                        "data_source": problem.data_source,
                        "ground_truth": str(problem.ground_truth),
                        "pass@1": sum(r["correct"] for r in responses) / n, "responses": responses})
    return records


# --------------------------------------------------------------------------- summary


def kv_summary(responses: list[dict], bytes_per_token: int) -> dict[str, float]:
    """Means over responses; GB = 1e9 bytes, areas in GB x thousand tokens (the paper's AUC)."""
    def mean(key: str) -> float:
        return sum(r[key] for r in responses) / max(len(responses), 1)

    with_blocks = [r for r in responses if r.get("blocks")]  # no key: replayed without a layout
    out = {key: mean(key) for key in ("peak_tokens", "area_tokens", "full_peak_tokens",
                                      "full_area_tokens", "engine_peak_tokens", "response_tokens")}
    out["blocks"] = sum(r["blocks"] for r in with_blocks) / max(len(responses), 1)
    out["peak_gb"] = out["peak_tokens"] * bytes_per_token / 1e9
    out["full_peak_gb"] = out["full_peak_tokens"] * bytes_per_token / 1e9
    out["area_gb_ktok"] = out["area_tokens"] * bytes_per_token / 1e12
    out["full_area_gb_ktok"] = out["full_area_tokens"] * bytes_per_token / 1e12
    out["peak_ratio"] = out["peak_tokens"] / max(out["full_peak_tokens"], 1)
    out["area_ratio"] = out["area_tokens"] / max(out["full_area_tokens"], 1)
    for key in ("block_tokens", "memento_tokens", "compression"):  # responses with blocks only
        out[key] = sum(r[key] for r in with_blocks) / max(len(with_blocks), 1)
    out["truncated_fraction"] = sum(r["finish_reason"] == "length" for r in responses) / max(
        len(responses), 1)
    return out


def summarize(records: list[dict], n: int, bytes_per_token: int) -> dict[str, dict]:
    """Accuracy and KV per benchmark (in file order) and over all problems ("all")."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["benchmark"], []).append(r)
    if len(groups) > 1:
        groups["all"] = records
    summary = {}
    for name, group in groups.items():
        correct = [[s["correct"] for s in r["responses"]] for r in group]
        answers = [[s["extracted"] for s in r["responses"]] for r in group]
        summary[name] = {**accuracy_metrics(correct, answers, default_ks(n)),
                         **kv_summary([s for r in group for s in r["responses"]], bytes_per_token)}
    return summary


def model_kv_bytes_per_token(model_path: str, dtype: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    config = getattr(config, "text_config", None) or config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if dtype == "auto":
        dtype = str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch.")
    return kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads, head_dim,
                              DTYPE_BYTES.get(dtype, 2))


# ------------------------------------------------------------------------------ run


def build_engine(cfg: EvalConfig, max_model_len: int):
    """The memento engine, or plain vLLM (memento=None) for the control."""
    from rollout.engine import MementoEngine

    memento = None
    if cfg.memento.enable:
        memento = cfg.memento.layout_options()
    extra = {} if cfg.kv_cache_memory_bytes is None else {
        "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes}
    return MementoEngine(cfg.model_path, memento, restart_mode=cfg.restart_mode,
                         max_model_len=max_model_len, dtype=cfg.dtype, seed=cfg.seed,
                         tensor_parallel_size=cfg.tensor_parallel_size,
                         gpu_memory_utilization=cfg.gpu_memory_utilization,
                         max_num_seqs=cfg.max_num_seqs, **extra)


def layout_for(cfg: EvalConfig, tokenizer) -> MementoConfig | None:
    """The layout responses are replayed under; None when the tokenizer has no memento tokens."""
    try:
        return cfg.memento.layout(tokenizer)
    except ValueError:
        if cfg.memento.enable:
            raise
        return None


def evaluate(cfg: EvalConfig, engine=None, sampling_hooks: dict | None = None,
             on_progress=None) -> dict:
    """Run (or resume) the evaluation; returns the summary written to results.json.

    Args:
        engine: a built `MementoEngine` to use instead of building one from cfg (tests).
        sampling_hooks: test hooks set on every `Sampling` (`script`, `ban_token_ids`), e.g. to
            make a random model write mementos.
        on_progress: called as `on_progress(problems_done, problems_total)` after each chunk,
            in place of the progress bar.
    """
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from rl.eval.report import write_report
    from rollout.engine import Sampling

    if not cfg.model_path or not cfg.benchmark_files:
        raise ValueError("model_path and benchmark_files are required")
    out = Path(cfg.output_dir)
    check_or_write_config(cfg, out)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    layout = layout_for(cfg, tokenizer)
    problems = load_benchmarks(cfg.benchmark_files, tokenizer, cfg.instruction)
    results_path = out / "problems.jsonl"
    finished = read_finished(results_path)
    todo = [p for p in problems if p.id not in finished]

    if todo:
        if engine is None:
            engine = build_engine(cfg, max(len(p.prompt_ids) for p in problems) + cfg.max_tokens)
        with RewardManager(cfg.reward) as rewards, tqdm(
                total=len(problems), initial=len(problems) - len(todo), unit="problem",
                desc=f"eval {out.name}", disable=on_progress is not None) as bar:
            for chunk in chunks(todo, cfg.chunk_size):
                s = cfg.sampling
                sampling = Sampling(n=s.n, temperature=s.temperature, top_p=s.top_p,
                                    top_k=max(s.top_k, 0), max_tokens=cfg.max_tokens,
                                    seed=cfg.seed + chunk[0].index * s.n,
                                    max_block_tokens=s.max_block_tokens,
                                    **(sampling_hooks or {}))
                samples = engine.generate([p.prompt_ids for p in chunk], sampling)
                records = score_chunk(chunk, samples, s.n, tokenizer, rewards, layout,
                                      cfg.save_responses)
                append_records(results_path, records)
                finished.update((r["id"], r) for r in records)
                bar.update(len(chunk))
                if on_progress is not None:  # bar.n stands still when tqdm is disabled
                    on_progress(sum(p.id in finished for p in problems), len(problems))

    records = [finished[p.id] for p in problems]
    bytes_per_token = model_kv_bytes_per_token(cfg.model_path, cfg.dtype)
    summary = {"config": asdict(cfg), "kv_bytes_per_token": bytes_per_token,
               "benchmarks": summarize(records, cfg.sampling.n, bytes_per_token)}
    write_report(out, summary, records)
    return summary
