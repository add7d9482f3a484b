"""The default run over several seeds, and the README results table it writes.

    python -m rl.demo_seeds                       # seeds 0, 1, 2; rewrites README's table
    python -m rl.demo_seeds seeds=[3,4] readme=   # other seeds; print the table, leave README alone
    (conf/demo_seeds.yaml)

Each seed runs `python -m rl.demo seed=<s>` in its own process (a fresh Ray and engine), into
`<out_dir>/seed_<s>`. A seed whose `summary.json` is there with the same demo settings and
commit is not run again, so an interrupted sweep resumes; a seed directory without one is cleared and rerun. The
table names the CPU, the core count, the date and the commit, and is written to
`<out_dir>/results.md` and between README's `demo-seeds` markers.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rl.shutdown import reap_children_at_exit, run_child

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- demo-seeds:begin -->", "<!-- demo-seeds:end -->"
# the bar for "RL improved the SFT model": at least this gain, and beyond 2 standard errors
MIN_GAIN = 0.05


@dataclass
class DemoSeedsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out_dir: str = "outputs/demo_seeds"
    # README to write the table into (between the demo-seeds markers); empty: print it only
    readme: str = "README.md"
    # key=value overrides for every seed's rl.demo, e.g. ["rl_steps=40"]
    demo_overrides: list[str] = field(default_factory=list)


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict:
    """The seed's summary.json, running the demo first unless a finished one is there."""
    summary_path = out / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("overrides") == overrides and summary.get("commit") == commit():
            print(f"seed {seed}: finished earlier, reusing {summary_path}", flush=True)
            return summary
    if out.exists():
        shutil.rmtree(out)  # unfinished or other settings: its checkpoints and evals are stale
    out.mkdir(parents=True)
    print(f"seed {seed}: python -m rl.demo seed={seed} out_dir={out} {' '.join(overrides)}",
          flush=True)
    returncode = run_child([sys.executable, "-m", "rl.demo", f"seed={seed}", f"out_dir={out}",
                            *overrides], cwd=ROOT)
    if returncode != 0:
        raise SystemExit(f"seed {seed} failed (exit {returncode}); its output is in {out}. "
                         "Rerun the same command to resume with the remaining seeds.")
    summary = json.loads(summary_path.read_text())
    summary["overrides"], summary["commit"] = overrides, commit()
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def improved(s: dict) -> bool:
    return s["gain"] >= MIN_GAIN and s["gain"] > 2 * s["gain_stderr"]


def results_table(summaries: dict[int, dict], overrides: list[str]) -> str:
    """Markdown: one row per seed, then where and when it was measured."""
    rows = ["| seed | after SFT | after RL | gain (s.e.) | RL improved it | mementos carrying "
            "the value, SFT -> RL | accuracy when all do, SFT -> RL | dropped values back "
            "after eviction, SFT -> RL | wall time |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seed, s in summaries.items():
        rows.append(
            f"| {seed} | {s['accuracy_after_sft']:.3f} | {s['accuracy_after_rl']:.3f} | "
            f"{s['gain']:+.3f} ({s['gain_stderr']:.3f}) | {'yes' if improved(s) else 'no'} | "
            f"{s['state_mementos_after_sft']:.2f} -> {s['state_mementos_after_rl']:.2f} | "
            f"{s['accuracy_all_carry_after_sft']:.2f} -> {s['accuracy_all_carry_after_rl']:.2f} | "
            f"{s['recovered_after_lossy_after_sft']:.2f} -> {s['recovered_after_lossy_after_rl']:.2f} | "
            f"{s['minutes']:.1f} min |")
    problems = {s["heldout_problems"] for s in summaries.values()}
    chance = max(s["recovered_by_chance"] for s in summaries.values())
    settings = f" with `{' '.join(overrides)}`" if overrides else " with the defaults"
    rows.append("")
    rows.append(f"Written by `python -m rl.demo_seeds`{settings} on {cpu_model()} "
                f"({os.cpu_count()} cores), {datetime.date.today().isoformat()}, commit "
                f"{commit()}. Held-out problems: {', '.join(map(str, sorted(problems)))}; the gain "
                f"is the mean per-problem change in pass@1 and its standard error over problems; "
                f"\"RL improved it\" means a gain of at least {MIN_GAIN:.2f} and beyond 2 standard "
                "errors; \"dropped values back\" is the share of lossy mementos after which the "
                "model went on from the value they dropped (a guess finds it by chance "
                f"{chance:.2f} of the time).")
    return "\n".join(rows)


def write_between_markers(path: Path, text: str) -> None:
    content = path.read_text()
    if (content.count(BEGIN), content.count(END)) != (1, 1) or content.index(BEGIN) > content.index(END):
        raise SystemExit(f"{path} needs one {BEGIN} line before one {END} line to hold the table; "
                         "set readme= to print it without writing")
    head, rest = content.split(BEGIN)
    _, tail = rest.split(END)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def run_seeds(cfg: DemoSeedsConfig) -> str:
    if not cfg.seeds:
        raise SystemExit("seeds is empty")
    reap_children_at_exit()  # stopping the sweep stops the seed's run too
    out = Path(cfg.out_dir).resolve()
    summaries = {seed: run_seed(seed, out / f"seed_{seed}", list(cfg.demo_overrides))
                 for seed in cfg.seeds}
    table = results_table(summaries, list(cfg.demo_overrides))
    (out / "results.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    if cfg.readme:
        readme = Path(cfg.readme) if Path(cfg.readme).is_absolute() else ROOT / cfg.readme
        write_between_markers(readme, table)
        print(f"\nwrote the table into {readme}", flush=True)
    return table


def main(argv: list[str] | None = None) -> None:
    from rl.config import run_hydra

    run_hydra("demo_seeds", DemoSeedsConfig, run_seeds, argv)


if __name__ == "__main__":
    main()
