"""Benchmark of the memento data pipeline with the in-process vLLM engine on CPU.

    python scripts/bench_memento_data.py [--traces-per-example 3] [--chars 1500]

Runs the pipeline twice over the same traces (slices of the three real traces in
../shared/data/memento_examples), with one scoring pass (16-sentence windows) and with the
two-pass mode (16 and 11), on the tiny random model in-process, and prints `RESULT` lines:
traces per minute and prompt / completion tokens per trace for each, their ratios, and the
tokens each refinement round costs per trace (the random model's mementos rarely pass, so
rounds run to the limit: an upper bound on a real model's rounds). Absolute times depend on the
machine; the ratios, measured side by side in one run, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "memento_examples"


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


def main() -> None:
    from rl.data.pipeline.client import LocalEngineClient
    from rl.data.pipeline.config import (ClientConfig, MementoConfig, PipelineConfig,
                                         ScoringConfig, SeedConfig, SegmentConfig)
    from rl.data.pipeline.run import ROWS, Outputs, run
    from rollout.tiny_model import build_tiny_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--traces-per-example", type=int, default=3)
    parser.add_argument("--chars", type=int, default=1500)
    parser.add_argument("--max-rounds", type=int, default=3)
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
    client = LocalEngineClient(client_cfg)
    results = {}
    try:
        for name, passes in (("one_pass", [16]), ("two_pass", [16, 11])):
            cfg = PipelineConfig(
                input_files=[str(tmp / "traces.jsonl")], output_dir=str(tmp / name),
                tokenizer=str(model), progress=False, max_concurrent_traces=n, client=client_cfg,
                seed=SeedConfig(min_reasoning_tokens=300), scoring=ScoringConfig(windows=passes),
                segment=SegmentConfig(min_block_tokens=200),
                mementos=MementoConfig(max_tokens=96, max_rounds=args.max_rounds,
                                       judge_max_tokens=512, feedback_max_chars=120))
            start = time.perf_counter()
            counts = run(cfg, client=client)
            seconds = time.perf_counter() - start
            rows = Outputs(cfg.output_dir).read(ROWS)
            results[name] = (counts, seconds, rows)
    finally:
        client.close()

    for name, (counts, seconds, rows) in results.items():
        done = max(len(rows), 1)
        prompt = sum(r["prompt_tokens"] for r in rows) / done
        completion = sum(r["completion_tokens"] for r in rows) / done
        score = sum(r["usage"]["score"]["prompt_tokens"] + r["usage"]["score"]["completion_tokens"]
                    for r in rows) / done
        print(f"RESULT {name} traces={counts['done']} failed={counts['failed']} "
              f"traces_per_min={60 * counts['done'] / seconds:.2f} "
              f"prompt_tokens_per_trace={prompt:.0f} completion_tokens_per_trace={completion:.0f} "
              f"scoring_tokens_per_trace={score:.0f}")
    (_, t1, r1), (_, t2, r2) = results["one_pass"], results["two_pass"]

    def scoring(rows):
        return sum(r["usage"]["score"]["prompt_tokens"] + r["usage"]["score"]["completion_tokens"]
                   for r in rows) / max(len(rows), 1)

    print(f"RESULT two_pass_vs_one_pass scoring_tokens={scoring(r2) / scoring(r1):.2f}x "
          f"wall_time={t2 / t1:.2f}x")
    rows = r1
    for r in range(args.max_rounds):
        stages = [f"write/{r}", f"judge/{r}"]
        tokens = sum(row["usage"].get(s, {}).get(k, 0) for row in rows for s in stages
                     for k in ("prompt_tokens", "completion_tokens")) / max(len(rows), 1)
        blocks = sum(row["usage"].get(f"judge/{r}", {}).get("calls", 0) for row in rows)
        print(f"RESULT round={r} tokens_per_trace={tokens:.0f} blocks_judged={blocks}")


if __name__ == "__main__":
    main()
