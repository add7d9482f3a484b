"""The default run (README command 1), scaled down: every stage runs, the summary is complete, and
the console shows the phases, not the libraries' logging."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PHASES = ("SFT stage 1 (full attention) 6/6", "SFT stage 2 (memento layout) 4/4",
          "held-out eval after SFT 16/16", "GRPO 2/2", "held-out eval after RL 16/16")


def test_scaled_down_pipeline_runs_end_to_end_quietly(tmp_path):
    out = tmp_path / "demo"
    # its own process, as README's command runs it: quiet mode sets the environment and Ray
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_LOGGING_LEVEL", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    run = subprocess.run(
        [sys.executable, "-m", "rl.demo", f"out_dir={out}", "hidden_size=64",
         "num_hidden_layers=2", "n_train=300", "n_heldout=16", "sft_steps_full=6",
         "sft_steps_memento=4", "sft_batch_size=8", "rl_steps=2", "rl_prompts=2", "rl_group=4",
         "max_response_length=160", "eval_samples=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_after_sft", "accuracy_after_rl", "blocks_per_response", "peak_kv_memento",
                "peak_kv_full"):
        assert 0 <= summary[key], key
    assert summary["heldout_problems"] == 16
    assert summary["peak_kv_memento"] <= summary["peak_kv_full"]
    gain = summary["accuracy_after_rl"] - summary["accuracy_after_sft"]
    assert summary["gain"] == pytest.approx(gain)
    for key in ("state_mementos", "responses_all_carry", "accuracy_all_carry",
                "recovered_after_lossy"):
        assert {f"{key}_after_sft", f"{key}_after_rl"} <= summary.keys()
    assert all((out / name).exists() for name in ("grpo_reward.png", "kv_sawtooth.png"))
    assert (out / "grpo" / "hf" / "model.safetensors").exists()

    printed = run.stdout + run.stderr
    for phase in PHASES:  # each phase's closing line: done/total and its duration
        assert any(line.split("] ", 1)[-1].startswith(phase) and "min)" in line
                   for line in printed.splitlines()), phase
    assert "held-out accuracy after RL" in printed and "mementos carrying the value" in printed
    # quiet: no vLLM/Ray INFO lines, no Ray worker prefixes, no per-checkpoint progress bars
    for noise in (" INFO ", "(PolicyWorker", "Writing model shards", "Loading weights", "it/s]"):
        assert noise not in printed, noise
    assert len(printed.splitlines()) < 60, printed
