"""Reward verifier throughput and worst-case latency (not a test; prints numbers).

    .venv/bin/python scripts/bench_rewards.py [--workers 2] [--math 400] [--code 40]

Measures, through the same RewardManager the trainer uses: math verifications per second (plain
integers, which take the numeric fast path, and LaTeX answers, which go through math-verify/sympy),
next to the same checks run in-process on one core; code samples and sandbox runs per second at
every isolation level that works on this host, side by side with level "insecure" (no isolation,
the floor cost of starting a Python process per test); and the latency of single hostile inputs,
each of which should cost at most its configured limit.
"""

import argparse
import json
import time

from rewards.manager import RewardConfig, RewardManager
from rewards.math import score_math
from rewards.sandbox import AUTO_ORDER, probe_isolation

LATEX = [("\\frac{1}{2}", "0.5"), ("\\{1,2\\}", "\\{2,1\\}"), ("[1,2)", "[1,2)"), ("(x+1)^2", "x^2+2x+1"),
         ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2"), ("2\\pi", "6.283185"), ("(1,2,3)", "(1,2,3)"), ("50\\%", "50")]


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def bench_math(manager: RewardManager, n: int) -> None:
    for name, pairs in (("integer", [(str(i), str(i)) for i in range(50)]), ("latex", LATEX)):
        rows = [pairs[i % len(pairs)] for i in range(n)]
        responses = [f"<think>work</think>so \\boxed{{{pred}}}" for pred, _ in rows]
        truths = [gold for _, gold in rows]
        manager.score(responses[:8], ["math"] * 8, truths[:8], None)  # warm the workers
        pooled = timed(lambda: manager.score(responses, ["math"] * n, truths, None))
        inline = timed(lambda: [score_math(r, t, "math") for r, t in zip(responses, truths)])
        print(f"math {name:8} {n / pooled:8.0f} verifications/s with {manager.config.math_workers} workers; "
              f"{n / inline:8.0f}/s in-process on 1 core (ratio {inline / pooled:.2f})")
        print(f"RESULT math_{name}_verifications_per_second {n / pooled:.0f} 1/s "
              f"{manager.config.math_workers} pool workers")


def bench_code(n: int, workers: int) -> None:
    truth = json.dumps({"inputs": [f"{i} {i + 1}\n" for i in range(3)],
                        "outputs": [f"{2 * i + 1}\n" for i in range(3)]})
    response = "</think>```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    levels = ["insecure"] + [level for level in AUTO_ORDER if probe_isolation(level) is None]
    rates = {}
    for isolation in levels:
        with RewardManager(RewardConfig(code_workers=workers, sandbox_isolation=isolation)) as manager:
            manager.score([response] * workers, ["codecontests"] * workers, [truth] * workers, None)  # warm up
            seconds = timed(lambda: manager.score([response] * n, ["codecontests"] * n, [truth] * n, None))
        rates[isolation] = n / seconds
        print(f"code {isolation:10} {n / seconds:8.2f} samples/s ({3 * n / seconds:.1f} sandbox runs/s) "
              f"with {workers} concurrent sandboxes, {rates[isolation] / rates['insecure']:.2f}x insecure's rate")
    for isolation in levels:
        print(f"RESULT code_samples_per_second_{isolation} {rates[isolation]:.2f} 1/s {workers} sandboxes, "
              f"3 tests each, {rates[isolation] / rates['insecure']:.2f}x insecure")


HOSTILE = {
    "math: 9^9^9^9 (sympy never ends)": ("math", "</think>\\boxed{9^{9^{9^{9}}}}", "1"),
    "math: 400-deep \\frac nesting": ("math", "</think>\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 401, "1"),
    "math: 1 MB of unbalanced braces": ("math", "\\boxed{" * (1 << 17), "1"),
    "code: infinite loop": ("apps", "</think>```python\nwhile True: pass\n```", None),
    "code: fork bomb": ("apps", "</think>```python\nimport os\nwhile True:\n    try: os.fork()\n"
                                "    except OSError: pass\n```", None),
    "code: memory bomb": ("apps", "</think>```python\nx = bytearray(8 << 30)\n```", None),
    "code: stdout flood": ("apps", "</think>```python\nwhile True: print('x' * 4096)\n```", None),
    "code: 12 x 16 MiB files": ("apps", "</think>```python\nfor i in range(12):\n    open(str(i), 'wb')"
                                       ".write(bytes(16 << 20))\n```", None),
    "code: 8 threads of 700 MiB": ("apps", "</think>```python\nimport threading\nts = [threading.Thread("
                                           "target=lambda: bytearray(700 << 20)) for _ in range(8)]\n"
                                           "[t.start() for t in ts]; [t.join() for t in ts]\n```", None),
}


def bench_hostile(manager: RewardManager) -> None:
    truth = json.dumps({"inputs": ["\n"], "outputs": ["1\n"]})
    worst = 0.0
    for name, (source, response, gold) in HOSTILE.items():
        start = time.monotonic()
        batch = manager.score([response], [source], [gold or truth], None)
        seconds = time.monotonic() - start
        worst = max(worst, seconds)
        print(f"hostile {name:36} {seconds:6.2f}s score={batch.scores[0]} verdict={batch.infos[0].verdict}")
    print(f"RESULT hostile_worst_latency {worst:.2f} s slowest hostile input to score ({manager.sandbox_isolation})")
    print(f"worst-case hostile latency {worst:.2f}s (limits: math {manager.config.math_timeout_seconds}s, "
          f"code {manager.config.code_test_seconds}s per test)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math", type=int, default=400, help="math responses per measurement")
    parser.add_argument("--code", type=int, default=40, help="code responses per measurement (3 tests each)")
    args = parser.parse_args()
    config = RewardConfig(math_workers=args.workers, code_workers=args.workers, math_timeout_seconds=5.0,
                          code_test_seconds=5.0)
    with RewardManager(config) as manager:
        bench_math(manager, args.math)
        bench_code(args.code, args.workers)
        bench_hostile(manager)


if __name__ == "__main__":
    main()
