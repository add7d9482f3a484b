"""Every launch command in a `conf/**/*.yaml` header runs: each is run with `--cfg job`.

A header is the comment block a YAML opens with; a launch command is a line of it that starts
with `python -m` (continued by a trailing backslash), or `bash scripts/run.sh`, which stands for
the `python -m` command that script runs. `--cfg job` composes and prints the config and exits,
so a renamed key, a missing config group or a wrong module name fails here in seconds, while
nothing trains. All commands run in one fresh interpreter, each as `python -m` runs it
(`runpy.run_module` as `__main__`), so the heavy imports are paid once.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_SH = re.compile(r'-m (\S+) "\$@"')


def header_commands(path: Path) -> list[str]:
    """The launch commands of one YAML header, trailing `# comments` dropped."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    commands, pending = [], ""
    for line in lines:
        if pending:
            line = pending + " " + line
        elif not line.startswith(("python -m ", "bash scripts/run.sh")):
            continue
        pending = line[:-1].strip() if line.endswith("\\") else ""
        if not pending:
            commands.append(line.split(" #")[0].strip())
    return commands


def as_python(command: str) -> list[str]:
    """argv of the command, `bash scripts/run.sh ARGS` as the `python -m MODULE ARGS` it runs."""
    words = shlex.split(command)
    if words[:2] == ["bash", "scripts/run.sh"]:
        (module,) = RUN_SH.findall((ROOT / "scripts" / "run.sh").read_text())
        words = ["python", "-m", module, *words[2:]]
    assert words[:2] == ["python", "-m"], command
    return [sys.executable, *words[1:]]


COMMANDS = [(str(path.relative_to(ROOT)), command)
            for path in sorted((ROOT / "conf").rglob("*.yaml")) for command in header_commands(path)]


def test_the_entry_points_have_headers_with_commands():
    with_commands = {path for path, _ in COMMANDS}
    for name in ("config", "sft", "eval", "demo", "arith"):
        assert f"conf/{name}.yaml" in with_commands, name


def test_header_parsing_joins_continued_lines_and_drops_comments(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# What it runs.\n#   python -m rl.train a=1 \\\n#       b=2   # why\n"
                    "#   bash scripts/run.sh c=3\n# Not a command: python -m rl.eval\nkey: 1\n"
                    "#   python -m rl.demo\n")
    assert header_commands(path) == ["python -m rl.train a=1 b=2", "bash scripts/run.sh c=3"]
    assert as_python("bash scripts/run.sh c=3")[1:] == ["-m", "rl.demo", "c=3"]


# Runs each (module, argv) as `python -m module argv...`; prints one JSON line per command.
RUNNER = """
import contextlib, io, json, runpy, sys, traceback
for module, argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module, *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        code, err = 1, io.StringIO(err.getvalue() + traceback.format_exc())
    print(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}),
          file=sys.__stdout__, flush=True)
"""


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, dict]:
    """command -> {code, stdout, stderr} of its `--cfg job` run."""
    jobs = []
    for _, command in COMMANDS:
        argv = as_python(command)[2:]  # drop the interpreter and -m
        jobs.append((argv[0], argv[1:] + ([] if "--cfg" in argv else ["--cfg", "job"])))
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(COMMANDS), out.stderr[-3000:]
    return {command: result for (_, command), result in zip(COMMANDS, results)}


@pytest.mark.parametrize("path, command", COMMANDS)
def test_header_command_composes_its_config(path, command, dry_runs):
    result = dry_runs[command]
    assert result["code"] == 0, f"{path}: {command}\n{result['stderr'][-3000:]}"
    assert result["stdout"].strip(), f"{path}: {command} printed no config"
