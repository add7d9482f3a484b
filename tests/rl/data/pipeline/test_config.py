"""Pipeline config: defaults are the paper's, bad values name their key, the CLI composes."""

import subprocess
import sys
from pathlib import Path

import pytest

from rl.data.pipeline.config import PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[4]


def test_defaults_are_the_papers_values():
    cfg = PipelineConfig()
    assert (cfg.segment.min_block_tokens, cfg.segment.cv_weight) == (200, 0.5)
    assert cfg.scoring.windows == [16] and cfg.mementos.target_ratio == [0.1, 0.2]
    assert (cfg.mementos.pass_score, cfg.mementos.max_rounds) == (8.0, 3)


BASE = {"input_files": ["a.jsonl"], "client": {"model": "m"}}


@pytest.mark.parametrize("raw, key", [
    ({"client": {"model": "m"}}, "input_files"),
    ({"input_files": ["a.jsonl"]}, "client.model"),
    ({**BASE, "scoring": {"windows": [1]}}, "scoring.windows"),
    ({**BASE, "segment": {"min_blocks": 3, "max_blocks": 2}}, "segment.max_blocks"),
    ({**BASE, "client": {"model": "m", "max_concurrency": 0}}, "client.max_concurrency"),
    ({**BASE, "mementos": {"target_ratio": [0.3, 0.1]}}, "mementos.target_ratio"),
])
def test_a_bad_value_names_its_key(raw, key):
    with pytest.raises(ValueError, match=rf"\[{key}\]"):
        load_config(raw)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown key scoring.windowz"):
        load_config({**BASE, "scoring": {"windowz": [3]}})


def test_cli_composes_overrides_and_rejects_unknown_keys(tmp_path):
    cmd = [sys.executable, "-m", "rl.data.pipeline", "input_files=[t.jsonl]", "client.model=m",
           "scoring.windows=[16,11]", "--cfg", "job"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "- 11" in out.stdout and "model: m" in out.stdout
    bad = subprocess.run(cmd[:-2] + ["scoring.windowz=[3]"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "windowz" in bad.stderr
