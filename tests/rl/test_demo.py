"""The default run (README command 1), scaled down: every stage runs and the summary is complete."""

import json

import pytest

from rl.demo import main

pytestmark = pytest.mark.slow


def test_scaled_down_pipeline_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    main([f"out_dir={out}", "hidden_size=64", "num_hidden_layers=2", "n_train=300",
          "n_heldout=16", "sft_steps_full=6", "sft_steps_memento=4", "sft_batch_size=8",
          "rl_steps=2", "rl_prompts=2", "rl_group=4", "max_response_length=160",
          "eval_samples=1"])
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_after_sft", "accuracy_after_rl", "blocks_per_response", "peak_kv_memento",
                "peak_kv_full"):
        assert 0 <= summary[key], key
    assert summary["heldout_problems"] == 16
    assert summary["peak_kv_memento"] <= summary["peak_kv_full"]
    assert {"state_mementos_after_sft", "state_mementos_after_rl"} <= summary.keys()
    assert all((out / name).exists() for name in ("grpo_reward.png", "kv_sawtooth.png"))
    assert (out / "grpo" / "hf" / "model.safetensors").exists()
    printed = capsys.readouterr().out
    assert "held-out accuracy after RL" in printed and "peak KV tokens, memento" in printed
    assert "mementos carrying the value" in printed
