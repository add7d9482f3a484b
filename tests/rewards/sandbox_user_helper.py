"""A non-root trainer for tests/rewards/test_sandbox.py: serves `run_python` over stdin/stdout.

The test starts it as an unprivileged user and as PID 1 of a throwaway PID namespace (a container
without an init, where orphans would pile up as this process's zombies). One JSON request a line:
{"runs": [{"source", "stdin", "limits"}, ...]} runs them at once (threads) and answers with a list
of RunResult dicts; {"op": "zombies"} answers how many zombies the namespace holds.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from rewards.sandbox import SandboxLimits, SandboxUnavailable, run_python


def _zombies() -> int:
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                count += f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            pass
    return count


def _run(request: dict) -> dict:
    try:
        return asdict(run_python(request["source"], request["stdin"], SandboxLimits(**request["limits"])))
    except SandboxUnavailable as e:
        return {"unavailable": str(e)}


def main() -> None:
    with ThreadPoolExecutor(8) as threads:
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("op") == "zombies":
                reply = {"zombies": _zombies()}
            else:
                reply = list(threads.map(_run, request["runs"]))
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
