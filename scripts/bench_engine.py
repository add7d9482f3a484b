"""Throughput and peak KV of the memento engine against plain vLLM, side by side in one run.

Same engine build, same model, same scripted trace shape, same KV budget; only `memento` differs
(None: plain vLLM, {}: memento eviction). The trace follows OpenMementos averages scaled down
for CPU with the ratios kept: ~9 blocks of block : memento = 1150 : 194 tokens (scale 16 gives
72 : 12), then a short answer. Delimiters are forced by the script hook; every other token is the
model's own. The KV pool holds `--pool-seqs` plain sequences, so plain mode is KV-bound.

    .venv/bin/python scripts/bench_engine.py                 # tiny model, CPU, ~2 minutes
    .venv/bin/python scripts/bench_engine.py --model /path/to/checkpoint --scale 1 --pool-seqs 16

Goal (issue 3): tokens/s memento / plain >= 1.75 and peak KV memento / plain <= 0.40.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from rollout.engine import MementoEngine, Sampling, block_script
from rollout.layout import MementoConfig, kv_bytes_per_token
from rollout.tiny_model import build_tiny_model

PAGE = 32
BLOCKS, BLOCK_TOKENS, MEMENTO_TOKENS = 9, 1150, 194  # OpenMementos averages
ANSWER_TOKENS = 30


def run(model: str, memento, prompts, sampling, pool_pages: int, max_model_len: int) -> dict:
    config = AutoConfig.from_pretrained(model)
    head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    page_bytes = PAGE * kv_bytes_per_token(config.num_hidden_layers, config.num_key_value_heads,
                                           head_dim, dtype_bytes=4)
    engine = MementoEngine(model, memento, dtype="float32", block_size=PAGE,
                           max_model_len=max_model_len, num_gpu_blocks_override=pool_pages,
                           kv_cache_memory_bytes=pool_pages * page_bytes, seed=0)
    try:
        engine.generate(prompts[:2], Sampling(max_tokens=8))  # warm-up, not timed
        start = time.perf_counter()
        samples = engine.generate(prompts, sampling)
        seconds = time.perf_counter() - start
    finally:
        engine.shutdown()
    tokens = sum(len(s.response_ids) for s in samples)
    return {"tokens/s": tokens / seconds, "wall s": seconds, "generated tokens": tokens,
            "peak KV tokens / request": np.mean([s.kv_peak_tokens for s in samples]),
            "peak KV pages / request": np.mean([s.kv_peak_pages for s in samples]),
            "evictions / request": np.mean([s.num_evictions for s in samples]),
            "preemptions": sum(s.num_preemptions for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="checkpoint with the memento tokens (default: tiny)")
    parser.add_argument("--scale", type=int, default=16, help="divide block/memento lengths")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--pool-seqs", type=float, default=3.0,
                        help="KV pool size in full-length plain sequences")
    args = parser.parse_args()

    model = args.model or str(build_tiny_model(tempfile.mkdtemp(prefix="bench_tiny_")))
    tokenizer = AutoTokenizer.from_pretrained(model)
    cfg = MementoConfig.from_tokenizer(tokenizer)
    shape = [(BLOCK_TOKENS // args.scale, MEMENTO_TOKENS // args.scale)] * BLOCKS
    script, end = block_script(cfg, shape)
    ban = (cfg.block_start, cfg.block_end, cfg.summary_start, cfg.summary_end,
           tokenizer.eos_token_id)
    sampling = Sampling(temperature=1.0, seed=0, max_tokens=end + ANSWER_TOKENS, script=script,
                        ban_token_ids=ban, ignore_eos=True)
    prompts = [list(f"Problem {k}: find the sum of the first {k + 10} odd numbers.".encode())
               for k in range(args.requests)]
    seq_len = max(map(len, prompts)) + sampling.max_tokens
    max_model_len = -(-seq_len // PAGE) * PAGE
    pool_pages = int(args.pool_seqs * max_model_len / PAGE) + 1

    print(f"trace: {BLOCKS} blocks x (block {shape[0][0]} + memento {shape[0][1]}) + answer "
          f"{ANSWER_TOKENS} = {sampling.max_tokens} tokens/request, {args.requests} requests, "
          f"KV pool {pool_pages} pages of {PAGE} tokens ({args.pool_seqs} plain sequences)")
    results = {name: run(model, memento, prompts, sampling, pool_pages, max_model_len)
               for name, memento in (("plain", None), ("memento", {}))}
    plain, memento = results["plain"], results["memento"]
    print(f"\n{'':28s}{'plain':>12s}{'memento':>12s}{'memento/plain':>15s}")
    for key in plain:
        ratio = memento[key] / plain[key] if plain[key] else float("nan")
        print(f"{key:28s}{plain[key]:12.2f}{memento[key]:12.2f}{ratio:15.2f}")
    speedup = memento["tokens/s"] / plain["tokens/s"]
    kv = memento["peak KV tokens / request"] / plain["peak KV tokens / request"]
    print(f"\nthroughput x{speedup:.2f} (goal >= 1.75): {'met' if speedup >= 1.75 else 'MISSED'}")
    print(f"peak KV x{kv:.2f} (goal <= 0.40): {'met' if kv <= 0.40 else 'MISSED'}")
    print(f"RESULT engine_throughput_memento_vs_plain {speedup:.2f} x tokens/s, same engine build, KV-bound pool")
    print(f"RESULT engine_peak_kv_memento_vs_plain {kv:.2f} ratio peak KV tokens per request")


if __name__ == "__main__":
    main()
