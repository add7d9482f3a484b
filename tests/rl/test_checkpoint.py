"""Checkpoints appear whole or not at all, and only the newest N are kept."""

import pytest

from rl.checkpoint import CheckpointManager, read_json, write_json


def write_state(step):
    def write(tmp):
        write_json(tmp / "trainer_state.json", {"step": step})
    return write


def test_save_publishes_and_prunes(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    assert mgr.latest() is None
    for step in (1, 2, 3):
        mgr.save(step, write_state(step))
    assert [p.name for p in mgr.all()] == ["step-000002", "step-000003"]
    assert read_json(mgr.latest() / "trainer_state.json") == {"step": 3}


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    mgr.save(1, write_state(1))

    def crash(tmp):
        (tmp / "half_written").write_text("x")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        mgr.save(2, crash)
    assert mgr.latest().name == "step-000001"
    assert [p.name for p in mgr.all()] == ["step-000001"]
    mgr.save(3, write_state(3))  # the next save clears the stale temporary directory
    assert not list(tmp_path.glob(".tmp-*"))
    assert mgr.latest().name == "step-000003"


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_checkpoints_to_keep"):
        CheckpointManager(tmp_path, keep=0)
