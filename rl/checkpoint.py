"""Atomic, resumable checkpoints: `root/step-000012/` appears whole or not at all.

A checkpoint is written into a hidden temporary directory under `root` and renamed into place
once every writer has finished; `root/latest` (itself replaced atomically) names the newest one.
A run killed mid-save leaves the previous checkpoint and `latest` untouched; stale temporary
directories are removed on the next save. Only the newest `keep` checkpoints are kept.

Layout of one checkpoint:
    actor/             DeepSpeed state of every actor rank (model, optimizer, scheduler, RNG)
    trainer_state.json step counter, data-loader position, wandb run id (rollout seeds derive
                       from the step, so nothing else is needed to replay the run)

`resolve_model_path` turns a model key (a checkpoint directory or "tiny") into the directory a
job starts from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointManager:
    def __init__(self, root: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"max_checkpoints_to_keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.root / "latest"
        if pointer.exists():
            path = self.root / pointer.read_text().strip()
            if path.is_dir():
                return path
        steps = self.all()
        return steps[-1] if steps else None

    def all(self) -> list[Path]:
        found = [p for p in self.root.glob("step-*") if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call `write(tmp_dir)` to fill a checkpoint, then publish it as step-<step>."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(self.root / "latest", final.name)
        for old in self.all()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


def write_json(path: Path, payload: dict) -> None:
    _write_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def resolve_model_path(path: str, run_dir: Path) -> str:
    """The Hugging Face checkpoint directory a job starts from (RL and SFT alike).

    "tiny" builds the in-repo tiny model (memento tokens included) under `run_dir/tiny_model`.
    """
    if path == "tiny":
        from rollout.tiny_model import build_tiny_model

        return str(build_tiny_model(Path(run_dir) / "tiny_model"))
    if not Path(path).is_dir():
        raise FileNotFoundError(f"actor_rollout_ref.model.path: no checkpoint directory at {path}")
    return path
