"""Run every benchmark script and write one results table (Markdown + JSON).

    .venv/bin/python scripts/bench_all.py                                  # all, full size
    .venv/bin/python scripts/bench_all.py --only kernels rewards --args kernels=--quick
    .venv/bin/python scripts/bench_all.py --out outputs/bench/results.md  # (the default)

Each benchmark (scripts/bench_<name>.py: engine, kernels, rewards, grpo) runs as a subprocess from
the repository root; a missing script is skipped with a note. Its output streams through, and
the results are read from lines of the form

    RESULT <name> <value> <unit> <note...>

name without spaces, value a number, unit a word such as `ratio` (ours / baseline, measured side
by side in the same run), `x`, `tokens/s` or `GB`, note free text (what was compared, shapes).
Older scripts that print free text are read too: each "ratio <v>" or "<v>x" in a line becomes a
row with the whole line as its note. Writes results.md and results.json side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("engine", "kernels", "rewards", "grpo")
RESULT = re.compile(r"^RESULT\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")
FREE_TEXT_RATIO = re.compile(r"ratio\s+([-+]?\d+(?:\.\d+)?)|\b(\d+(?:\.\d+)?)x\b")


def parse_results(lines: list[str]) -> list[dict]:
    """RESULT lines as rows; free-text ratios (older scripts) as rows noted with their line."""
    rows = []
    for number, line in enumerate(lines, 1):
        match = RESULT.match(line.strip())
        if match:
            name, value, unit, note = match.groups()
            try:
                rows.append({"name": name, "value": float(value), "unit": unit, "note": note})
            except ValueError:
                rows.append({"name": name, "value": None, "unit": unit,
                             "note": f"unparsable value {value!r}; {note}"})
            continue
        for k, found in enumerate(FREE_TEXT_RATIO.finditer(line)):
            value = found.group(1) or found.group(2)
            rows.append({"name": f"line{number}" + (f".{k + 1}" if k else ""),
                         "value": float(value), "unit": "ratio" if found.group(1) else "x",
                         "note": " ".join(line.split()), "free_text": True})
    return rows


def run_benchmark(name: str, extra_args: list[str], timeout: float) -> dict:
    """Run scripts/bench_<name>.py, echoing its output; returns its status and result rows."""
    script = ROOT / "scripts" / f"bench_{name}.py"
    record = {"name": name, "script": str(script.relative_to(ROOT)), "args": extra_args,
              "results": []}
    if not script.exists():
        print(f"== {name}: {record['script']} does not exist yet, skipped", flush=True)
        return {**record, "status": "missing"}
    print(f"== {name}: {record['script']} {' '.join(extra_args)}", flush=True)
    start, lines = time.monotonic(), []
    proc = subprocess.Popen([sys.executable, str(script), *extra_args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    try:
        for line in proc.stdout:  # stream, so a long benchmark shows progress
            print(f"  {line}", end="", flush=True)
            lines.append(line)
            if time.monotonic() - start > timeout:
                raise subprocess.TimeoutExpired(proc.args, timeout)
        status = "ok" if proc.wait() == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = f"timed out after {timeout:.0f}s"
    return {**record, "status": status, "seconds": round(time.monotonic() - start, 1),
            "results": parse_results(lines)}


def markdown(runs: list[dict], when: str) -> str:
    lines = [f"# Benchmark results ({when})", "",
             "Each ratio is measured side by side in one run on this machine; the note says what "
             "is divided by what. Produced by `scripts/bench_all.py`.", "",
             "| benchmark | result | value | unit | note |", "|---|---|---|---|---|"]
    for run in runs:
        for row in run["results"]:
            value = "n/a" if row["value"] is None else f"{row['value']:.4g}"
            note = row["note"].replace("|", "\\|")
            lines.append(f"| {run['name']} | {row['name']} | {value} | {row['unit']} | {note} |")
    lines += ["", "| benchmark | script | status | seconds | rows |", "|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['name']} | `{run['script']}` | {run['status']} | "
                     f"{run.get('seconds', '')} | {len(run['results'])} |")
    if any(row.get("free_text") for run in runs for row in run["results"]):
        lines += ["", "Rows named `lineN` were read from free text; the script should print "
                  "`RESULT <name> <value> <unit> <note>` lines instead."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench/results.md",
                        help="Markdown table; the JSON goes beside it (results.json)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--args", nargs="*", default=[], metavar="NAME=ARGS",
                        help='extra arguments for one benchmark, e.g. kernels="--quick"')
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    args = parser.parse_args(argv)
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, value = item.partition("=")
        if name not in BENCHMARKS:
            parser.error(f"--args {item!r}: unknown benchmark {name!r}")
        extra[name] = value.split()

    runs = [run_benchmark(name, extra.get(name, []), args.timeout) for name in args.only]
    when = datetime.datetime.now().isoformat(timespec="seconds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(runs, when))
    out.with_suffix(".json").write_text(json.dumps({"generated": when, "runs": runs}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0 if all(r["status"] in ("ok", "missing") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
