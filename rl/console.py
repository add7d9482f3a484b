"""What a person watching the default run sees: one line per phase, third-party chatter off.

`quiet_third_party()` must run before vLLM, transformers, wandb or Ray start (their log levels and
progress bars are read from the environment at import, and Ray's workers inherit it), so the
demo calls it first. `Phase` prints a phase's progress and ETA: on a terminal one line that
updates in place, in a log file a line at each quarter and one at the end.
"""

from __future__ import annotations

import os
import sys
import time

# Read at import by vLLM, huggingface_hub/transformers, tqdm (any `TQDM_<param>`) and wandb.
_QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "WANDB_SILENT": "true",
    "PYTHONWARNINGS": "ignore",
}


def quiet_third_party() -> None:
    """Silence INFO logging and progress bars of the libraries this process and its Ray workers
    load, and keep the workers' output out of the console (it stays in Ray's session logs,
    /tmp/ray/session_latest/logs). A setting the user exported wins."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.WARNING)  # Hydra set the root logger to INFO
    from rl import cluster

    cluster.init_ray(None, log_to_driver=False)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Phase:
    """Progress of one phase of `total` units, as `[ 3.2 min] SFT stage 1  200/400  loss 0.041
    eta 1.9 min`; `done()` prints its last line with the phase's own duration."""

    def __init__(self, run_started: float, name: str, total: int, stream=None) -> None:
        self.run_started, self.name, self.total = run_started, name, max(total, 1)
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self.started = time.perf_counter()
        self.quarters_shown = 0

    def _line(self, done: int, detail: str, tail: str) -> str:
        clock = f"[{(time.perf_counter() - self.run_started) / 60:5.1f} min]"
        return " ".join(p for p in (clock, self.name, f"{done}/{self.total}", detail, tail) if p)

    def update(self, done: int, detail: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - done)
        line = self._line(done, detail, f"eta {minutes(eta)}")
        if self.live:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif done < self.total and 4 * done >= (self.quarters_shown + 1) * self.total:
            self.quarters_shown = 4 * done // self.total
            print(line, file=self.stream, flush=True)

    def done(self, detail: str = "") -> None:
        line = self._line(self.total, detail, f"({minutes(time.perf_counter() - self.started)})")
        print(("\r\033[K" if self.live else "") + line, file=self.stream, flush=True)
