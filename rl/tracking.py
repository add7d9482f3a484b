"""Metrics out: one console line per step and a wandb run (offline mode needs no account).

    WANDB_MODE=offline (the default) writes the run under <run dir>/wandb; `wandb sync <that dir>`
    uploads it later. WANDB_MODE=online logs live (needs `wandb login`).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

# (metric key, console label, format) for the per-step line
_CONSOLE = [
    ("reward/mean", "reward", "{:.3f}"),
    ("reward/accuracy", "acc", "{:.3f}"),
    ("response/length_mean", "len", "{:.0f}"),
    ("memento/blocks_mean", "blocks", "{:.1f}"),
    ("kv/peak_ratio_mean", "kv", "{:.2f}"),
    ("actor/pg_loss", "pg", "{:+.4f}"),
    ("mismatch/abs_diff_mean", "gap", "{:.1e}"),
]


@contextlib.contextmanager
def timed(name: str, timing: dict[str, float]):
    """Add the wall time of the block to timing[f"time/{name}"]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[f"time/{name}"] = timing.get(f"time/{name}", 0.0) + time.perf_counter() - start


class Tracker:
    def __init__(self, backends: list[str], project: str, experiment: str, run_dir: Path,
                 config: dict, total_steps: int, resume_id: str | None = None):
        self.total_steps = total_steps
        self.console = "console" in backends
        self.wandb = None
        self.started = time.perf_counter()
        self.steps_timed = 0
        if "wandb" in backends:
            import wandb

            run_dir.mkdir(parents=True, exist_ok=True)
            # Offline unless the user asks for online: a run never needs an account.
            self.wandb = wandb.init(project=project, name=experiment, dir=str(run_dir),
                                    config=config, id=resume_id, resume="allow" if resume_id else None,
                                    mode=os.environ.get("WANDB_MODE", "offline"))

    @property
    def run_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    @property
    def run_path(self) -> str | None:
        return str(Path(self.wandb.dir).parent) if self.wandb is not None else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.steps_timed += 1
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.console:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.steps_timed * (self.total_steps - step)
            parts = [f"step {step}/{self.total_steps}"]
            parts += [f"{label} {fmt.format(metrics[key])}" for key, label, fmt in _CONSOLE
                      if key in metrics]
            parts.append(f"{metrics.get('time/step', 0.0):.1f}s")
            parts.append(f"eta {eta / 60:.1f}m")
            print(" | ".join(parts), flush=True)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
