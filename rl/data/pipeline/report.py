"""Run report: blocks per trace, compression, judge scores and pass rate per round; Markdown + PNG.

Computed from the output files alone, so it covers every run that appended to them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Sequence


def pass_rate_by_round(rows: Sequence[dict[str, Any]], pass_score: float, max_rounds: int
                       ) -> list[float]:
    """Share of all blocks whose memento passed by the end of each round (a pass stays a pass)."""
    scores = [s for row in rows for s in row["round_scores"]]
    if not scores:
        return [0.0] * max_rounds
    return [sum(any(x >= pass_score for x in s[:r + 1]) for s in scores) / len(scores)
            for r in range(max_rounds)]


def summarise(rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]], pass_score: float,
              max_rounds: int) -> dict[str, Any]:
    written = {r["id"] for r in rows}
    # a failure retried later counts once (its last record), and not at all once it finished
    failed = list({f["id"]: f for f in failed if f["id"] not in written}.values())
    blocks = [len(r["blocks"]) for r in rows]
    reasoning = [sum(r["block_tokens"]) for r in rows]
    memento = [sum(r["memento_tokens"]) for r in rows]
    return {
        "traces": len(rows),
        "failed": Counter(f["stage"] for f in failed if f["status"] == "failed"),
        "rejected": sum(f["status"] == "rejected" for f in failed),
        "blocks_mean": statistics.fmean(blocks) if rows else 0.0,
        "blocks_median": statistics.median(blocks) if rows else 0,
        "reasoning_tokens_mean": statistics.fmean(reasoning) if rows else 0.0,
        "memento_tokens_mean": statistics.fmean(memento) if rows else 0.0,
        "compression": sum(reasoning) / max(sum(memento), 1),
        "first_scores": [s[0] for r in rows for s in r["round_scores"]],
        "final_scores": [s for r in rows for s in r["judge_scores"]],
        "pass_rate_by_round": pass_rate_by_round(rows, pass_score, max_rounds),
        "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] for r in rows) if rows else 0.0,
        "completion_tokens_mean": (statistics.fmean(r["completion_tokens"] for r in rows)
                                   if rows else 0.0),
    }


def write_report(rows: Sequence[dict[str, Any]], failed: Sequence[dict[str, Any]],
                 pass_score: float, max_rounds: int, output_dir: str | Path) -> dict[str, Any]:
    """Writes report.md and report.png in `output_dir`; returns the summary it printed."""
    stats = summarise(rows, failed, pass_score, max_rounds)
    output_dir = Path(output_dir)
    _plot(rows, stats, output_dir / "report.png")
    failures = ", ".join(f"{stage} {n}" for stage, n in sorted(stats["failed"].items())) or "none"
    histogram = Counter(int(s) for s in stats["final_scores"])
    first = Counter(int(s) for s in stats["first_scores"])
    lines = [
        "# Memento data report", "",
        f"- traces written: {stats['traces']}; failed: {failures}; rejected by seed selection: "
        f"{stats['rejected']}",
        f"- blocks per trace: mean {stats['blocks_mean']:.2f}, median {stats['blocks_median']}",
        f"- tokens per trace: reasoning {stats['reasoning_tokens_mean']:.0f} -> mementos "
        f"{stats['memento_tokens_mean']:.0f} ({stats['compression']:.1f}x compression)",
        f"- labelling cost per trace: {stats['prompt_tokens_mean']:.0f} prompt + "
        f"{stats['completion_tokens_mean']:.0f} completion tokens", "",
        f"## Pass rate (judge score >= {pass_score:g}) by round", "",
        "| round | blocks passed |", "|---|---|",
        *(f"| {r} | {rate:.1%} |" for r, rate in enumerate(stats["pass_rate_by_round"])), "",
        "## Judge scores (floored)", "", "| score | first round | final |", "|---|---|---|",
        *(f"| {s} | {first[s]} | {histogram[s]} |" for s in range(11)), "",
        "![report](report.png)", "",
    ]
    (output_dir / "report.md").write_text("\n".join(lines))
    return stats


def _plot(rows, stats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    axes[0, 0].hist([len(r["blocks"]) for r in rows], bins=20)
    axes[0, 0].set(title="blocks per trace", xlabel="blocks", ylabel="traces")
    ratios = [m / b for r in rows for m, b in zip(r["memento_tokens"], r["block_tokens"])]
    axes[0, 1].hist(ratios, bins=20)
    axes[0, 1].set(title="memento / block tokens", xlabel="ratio", ylabel="blocks")
    bins = [x - 0.5 for x in range(12)]
    axes[1, 0].hist([stats["first_scores"], stats["final_scores"]], bins=bins,
                    label=["first round", "final"])
    axes[1, 0].set(title="judge scores", xlabel="score", ylabel="blocks")
    axes[1, 0].legend()
    rates = stats["pass_rate_by_round"]
    axes[1, 1].plot(range(len(rates)), rates, marker="o")
    axes[1, 1].set(title="pass rate by round", xlabel="round", ylabel="blocks passed",
                   ylim=(0, 1), xticks=range(len(rates)))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
