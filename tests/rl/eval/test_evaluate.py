"""rl.eval.evaluate end to end on the tiny model: accuracy, KV replay, the control, resuming.

One real vLLM engine (memento mode) serves the module. The random tiny model is made to write a
fixed structure through the engine's test hooks: two blocks with mementos, `</think>`, then
`\\boxed{7}`; every other special token is banned. The control runs on the same engine with
per-call `keep_last_n_blocks=-1` (nothing evicted), which is what plain vLLM does.
"""

import dataclasses
import json
import subprocess
import sys

import pytest

from rewards.manager import RewardConfig
from rl.config import MementoOptions
from rl.data.arith import write_arith_datasets
from rl.data.rows import write_jsonl, write_parquet
from rl.eval.evaluate import EvalConfig, evaluate, paper_sampling, read_finished
from rollout.layout import MementoConfig, evict_at, kv_stats

N = 2  # samples per problem
ANSWER = "\\boxed{7}"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def hooks(tokenizer):
    """Response: <think> [bs 10 be ss 3 se] [bs 12 be ss 2 se] </think> \\boxed{7} (46 tokens)."""
    t = tokenizer.convert_tokens_to_ids
    layout = MementoConfig.from_tokenizer(tokenizer)
    script = {0: t("<think>"), 1: layout.block_start, 12: layout.block_end,
              13: layout.summary_start, 17: layout.summary_end, 18: layout.block_start,
              31: layout.block_end, 32: layout.summary_start, 35: layout.summary_end,
              36: t("</think>")}
    for i, token in enumerate(tokenizer.encode(ANSWER, add_special_tokens=False)):
        script[37 + i] = token
    banned = tuple(tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens)
    return {"script": script, "ban_token_ids": banned}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from rollout.engine import MementoEngine

    engine = MementoEngine(tiny_model_dir, memento={}, kv_cache_memory_bytes=64 << 20,
                           max_model_len=512, block_size=32, dtype="float32", max_num_seqs=16)
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()  # stop EngineCore now, not at interpreter exit


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    """5 verl arithmetic rows (jsonl) and 3 simple rows whose answer is 7 (parquet)."""
    root = tmp_path_factory.mktemp("bench")
    files = write_arith_datasets(root, n_train=1, n_val=5, seed=0)
    simple = [{"problem": f"What is {a} + {7 - a}?", "answer": 7, "data_source": "gsm8k"}
              for a in (1, 2, 3)]
    return [str(files.rl_val), str(write_parquet(simple, root / "simple.parquet"))]


class Recorder:
    """Wraps an engine: records every call and its samples; can fail on the k-th call or run
    the memento engine with per-call options (the control: keep_last_n_blocks=-1)."""

    def __init__(self, engine, fail_on_call=None, memento=None):
        self.engine, self.fail_on_call, self.memento = engine, fail_on_call, memento
        self.calls, self.samples = [], []

    def generate(self, prompt_ids, sampling):
        if len(self.calls) + 1 == self.fail_on_call:
            raise RuntimeError("interrupted")
        self.calls.append((prompt_ids, sampling))
        samples = self.engine.generate(prompt_ids, sampling, memento=self.memento)
        self.samples += samples
        return samples


def config(model, files, out, temperature=0.6, **overrides) -> EvalConfig:
    sampling = dataclasses.replace(paper_sampling(), n=N, temperature=temperature)
    return EvalConfig(model_path=str(model), benchmark_files=files, output_dir=str(out),
                      sampling=sampling, max_tokens=46, chunk_size=3, reward=RewardConfig(math_workers=1), **overrides)


def read_problems(out):
    return [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]


def check_kv_replay(records, samples, layout):
    """Every response's KV numbers equal kv_stats / the engine on the same token stream."""
    responses = [r for record in records for r in record["responses"]]
    assert len(responses) == len(samples)
    for r, s in zip(responses, samples):
        ids = s.prompt_ids + s.response_ids
        assert {k: r[k] for k in ("peak_tokens", "area_tokens", "full_peak_tokens",
                                  "full_area_tokens")} == kv_stats(evict_at(ids, layout),
                                                                   len(s.prompt_ids))
        assert r["engine_peak_tokens"] == s.kv_peak_tokens


def test_memento_eval_scores_and_replays_kv(tiny_model_dir, engine, hooks, benchmarks, tokenizer,
                                            tmp_path):
    recorder = Recorder(engine)
    summary = evaluate(config(tiny_model_dir, benchmarks, tmp_path), recorder, hooks)
    records = read_problems(tmp_path)
    assert [r["id"] for r in records] == [f"arith_val/{i}" for i in range(5)] + \
        [f"simple/{i}" for i in range(3)]
    check_kv_replay(records, recorder.samples, MementoConfig.from_tokenizer(tokenizer))

    # Every response is the scripted 46 tokens: blocks of 10 and 12 tokens, mementos of 3 and 2.
    for r in (r for record in records for r in record["responses"]):
        assert r["response_tokens"] == 46 and r["num_evictions"] == 2
        assert (r["blocks"], r["block_tokens"], r["memento_tokens"]) == (2, 11.0, 2.5)
        assert r["compression"] == pytest.approx(22 / 5)
        assert r["extracted"] == "7"
        # Peak just before the second eviction (response index 35): prompt + 35 tokens minus the
        # 10 of block 1; at the end prompt + 46 - 22 is one lower. Full attention: prompt + 46.
        assert r["peak_tokens"] == r["full_peak_tokens"] - 21
        assert r["peak_tokens"] - 1 <= r["engine_peak_tokens"] <= r["peak_tokens"]

    bench = summary["benchmarks"]
    assert bench["simple"]["pass@1"] == 1.0 and bench["simple"]["maj@2"] == 1.0
    sevens = sum(r["ground_truth"] == "7" for r in records[:5])
    assert bench["arith_val"]["pass@1"] == pytest.approx(sevens / 5)
    assert bench["all"]["num_problems"] == 8 and bench["all"]["compression"] == pytest.approx(4.4)
    assert bench["all"]["peak_ratio"] < 1.0
    # tiny model: 2 layers x 2 KV heads x head_dim 32 x fp32, K and V
    assert summary["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 4
    for name in ("results.json", "report.md", "accuracy.png", "kv.png", "compression.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| simple | 3 | 100.0 (0.0) |" in (tmp_path / "report.md").read_text()


def test_control_eval_keeps_every_block(tiny_model_dir, engine, hooks, benchmarks, tokenizer,
                                        tmp_path):
    recorder = Recorder(engine, memento={"keep_last_n_blocks": -1})  # plain attention
    cfg = config(tiny_model_dir, benchmarks[1:], tmp_path, memento=MementoOptions(enable=False))
    summary = evaluate(cfg, recorder, hooks)
    records = read_problems(tmp_path)
    check_kv_replay(records, recorder.samples, MementoConfig.from_tokenizer(tokenizer))
    for r in (r for record in records for r in record["responses"]):
        assert r["num_evictions"] == 0
        # The engine held every token but the last sampled one (its KV is never computed).
        assert r["engine_peak_tokens"] == r["full_peak_tokens"] - 1
    assert summary["benchmarks"]["simple"]["pass@1"] == 1.0
    assert "control (plain vLLM)" in (tmp_path / "report.md").read_text()


def test_interrupted_eval_resumes_without_repeating_problems(tiny_model_dir, engine, hooks,
                                                             benchmarks, tmp_path):
    cfg = config(tiny_model_dir, benchmarks, tmp_path)
    first = Recorder(engine, fail_on_call=2)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(cfg, first, hooks)
    assert [r["id"] for r in read_problems(tmp_path)] == ["arith_val/0", "arith_val/1",
                                                          "arith_val/2"]
    with (tmp_path / "problems.jsonl").open("a") as f:
        f.write('{"id": "arith_val/3", "benc')  # a write torn by the interruption

    second = Recorder(engine)
    progress = []
    summary = evaluate(cfg, second, hooks, on_progress=lambda *counts: progress.append(counts))
    assert progress == [(6, 8), (8, 8)]  # counts the problems finished before the interruption
    # Only the 5 unfinished problems (positions 3..7 over both files) were generated, in chunks
    # of at most 3, each seeded as in an uninterrupted run: seed + position * n.
    assert [len(p) for p, _ in second.calls] == [3, 2]
    assert [s.seed for _, s in second.calls] == [3 * N, 6 * N]
    asked = [ids for p, _ in first.calls + second.calls for ids in p]
    assert len(asked) == 8 and len({tuple(ids) for ids in asked}) == 8
    assert len(read_finished(tmp_path / "problems.jsonl")) == 8  # the torn line is skipped
    assert summary["benchmarks"]["all"]["num_problems"] == 8

    with pytest.raises(ValueError, match="temperature"):  # other settings: refuse to mix
        evaluate(config(tiny_model_dir, benchmarks, tmp_path, temperature=1.0), second, hooks)


def test_simple_rows_become_chat_prompts_with_the_instruction(tiny_model_dir, tokenizer, tmp_path):
    from rl.eval.evaluate import load_benchmarks

    path = write_jsonl([{"problem": "2+2?", "answer": 4}], tmp_path / "mini.jsonl")
    (problem,) = load_benchmarks([str(path)], tokenizer, "Box it.")
    assert (problem.id, problem.data_source, problem.ground_truth) == ("mini/0", "mini", "4")
    assert tokenizer.decode(problem.prompt_ids) == "<|im_start|>user\n2+2?\n\nBox it.<|im_end|>\n" \
                                                   "<|im_start|>assistant\n"


def test_cli_dry_run_prints_the_config_and_needs_a_model(tmp_path):
    run = [sys.executable, "-m", "rl.eval", f"output_dir={tmp_path}"]
    dry = subprocess.run(run + ["model_path=m", "benchmark_files=[a.jsonl]", "sampling.n=4", "--cfg", "job"],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "'n': 4" in dry.stdout and "temperature: 0.6" in dry.stdout
    missing = subprocess.run(run + ["benchmark_files=[a.jsonl]"], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode != 0 and "model_path" in missing.stderr


def test_chunks_are_runs_of_consecutive_problems():
    from rl.data.prompts import PromptExample
    from rl.eval.evaluate import chunks

    todo = [PromptExample(i, [], "b", "1", {}, id=f"b/{i}") for i in (0, 1, 2, 5, 6, 9)]
    assert [[p.index for p in c] for c in chunks(todo, 2)] == [[0, 1], [2], [5, 6], [9]]
