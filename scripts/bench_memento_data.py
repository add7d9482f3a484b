"""Benchmark of the memento data pipeline with the in-process vLLM engine on CPU.

    python scripts/bench_memento_data.py [--traces-per-example 3] [--chars 1500]

On the tiny random model in-process (after a one-trace warm-up), over slices of the three real
traces in tests/data/memento_examples, prints `RESULT` lines for:

- the whole pipeline (one scoring pass): traces per minute, prompt / completion tokens per trace;
- each round's tokens (write + judge) per trace and against round 0 (the random model's
  mementos rarely pass, so rounds run to the limit: an upper bound on a real model's);
- boundary scoring alone over the same sentences, one pass (16-sentence windows) against the
  two-pass mode (16 and 11), alternated `--repeats` times, best time of each: the time and token
  ratios. (Whole-pipeline times of the two modes would differ mostly by the blocks the random
  scores produce.)

Absolute times depend on the machine; the ratios, measured side by side in one run, are the
result.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "memento_examples"


def write_traces(path: Path, per_example: int, chars: int) -> int:
    rows = []
    for name in ("example_response", "example_code", "example_science"):
        trace = json.loads((EXAMPLES / f"{name}.json").read_text())
        text = "".join(s["text"] for s in trace["segments"] if s["type"] == "block")
        for k in range(per_example):
            piece = text[k * chars:(k + 1) * chars]
            piece = piece[:piece.rfind(". ") + 1]
            rows.append({"id": f"{name}-{k}", "problem": trace["problem"][:300],
                         "reasoning": f"<think>{piece}</think>{trace['answer'][:100]}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def score_all(client, texts: list[list[str]], windows: list[int]) -> tuple[float, int]:
    """Seconds and tokens to score every trace's boundaries, all traces at once."""
    from concurrent.futures import ThreadPoolExecutor

    from rl.data.pipeline.ask import Usage
    from rl.data.pipeline.boundaries import score_boundaries
    from rl.data.pipeline.config import ScoringConfig

    usages = [Usage() for _ in texts]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(texts)) as pool:
        list(pool.map(lambda k: score_boundaries(client, "", texts[k], ScoringConfig(
            windows=windows, include_problem=False), usages[k]), range(len(texts))))
    seconds = time.perf_counter() - start
    return seconds, sum(u.total("prompt_tokens") + u.total("completion_tokens") for u in usages)


def main() -> None:
    from rl.data.pipeline.client import LocalEngineClient
    from rl.data.pipeline.config import (ClientConfig, MementoConfig, PipelineConfig, SeedConfig,
                                         SegmentConfig)
    from rl.data.pipeline.run import ROWS, Outputs, run
    from rollout.tiny_model import build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--traces-per-example", type=int, default=3)
    parser.add_argument("--chars", type=int, default=1500)
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_memento_data_"))
    model = build_tiny_model(tmp / "model")
    n = write_traces(tmp / "traces.jsonl", args.traces_per_example, args.chars)
    client_cfg = ClientConfig(backend="local", model=str(model), temperature=1.0,
                              engine_kwargs={"max_model_len": 4096, "enforce_eager": True,
                                             "kv_cache_memory_bytes": 256 << 20, "seed": 0,
                                             "structured_outputs_config": {
                                                 "backend": "xgrammar",
                                                 "disable_any_whitespace": True}})
    cfg = PipelineConfig(
        input_files=[str(tmp / "traces.jsonl")], output_dir=str(tmp / "out"),
        tokenizer=str(model), progress=False, max_concurrent_traces=n, client=client_cfg,
        seed=SeedConfig(min_reasoning_tokens=300), segment=SegmentConfig(min_block_tokens=200),
        mementos=MementoConfig(max_tokens=96, max_rounds=args.max_rounds, judge_max_tokens=512,
                               feedback_max_chars=120))
    client = LocalEngineClient(client_cfg)
    try:
        run(replace(cfg, limit=1, output_dir=str(tmp / "warmup")), client=client)  # compile
        start = time.perf_counter()
        counts = run(cfg, client=client)
        seconds = time.perf_counter() - start
        rows = Outputs(cfg.output_dir).read(ROWS)
        texts = [row["sentences"] for row in rows]
        timings = {"one_pass": [], "two_pass": []}
        for _ in range(args.repeats):  # alternated, so load drifts hit both alike
            for name, windows in (("one_pass", [16]), ("two_pass", [16, 11])):
                timings[name].append(score_all(client, texts, windows))
    finally:
        client.close()

    done = max(len(rows), 1)
    print(f"RESULT pipeline traces={counts['done']} failed={counts['failed']} "
          f"traces_per_min={60 * counts['done'] / seconds:.2f} "
          f"prompt_tokens_per_trace={sum(r['prompt_tokens'] for r in rows) / done:.0f} "
          f"completion_tokens_per_trace={sum(r['completion_tokens'] for r in rows) / done:.0f}")
    round0 = max(_round_tokens(rows, 0), 1)
    for r in range(args.max_rounds):
        tokens = _round_tokens(rows, r)
        blocks = sum(row["usage"].get(f"judge/{r}", {}).get("calls", 0) for row in rows)
        print(f"RESULT round={r} tokens_per_trace={tokens / done:.0f} blocks_judged={blocks} "
              f"vs_round0={tokens / round0:.2f}")
    best = {name: (min(t for t, _ in runs), runs[0][1] / done) for name, runs in timings.items()}
    for name, (t, tokens) in best.items():
        print(f"RESULT scoring {name} seconds={t:.2f} tokens_per_trace={tokens:.0f}")
    (t1, k1), (t2, k2) = best["one_pass"], best["two_pass"]
    print(f"RESULT two_pass_vs_one_pass scoring_tokens={k2 / k1:.2f}x scoring_time={t2 / t1:.2f}x")


def _round_tokens(rows, r: int) -> int:
    stages = (f"write/{r}", f"judge/{r}")
    return sum(row["usage"].get(s, {}).get(k, 0) for row in rows for s in stages
               for k in ("prompt_tokens", "completion_tokens"))


if __name__ == "__main__":
    main()
