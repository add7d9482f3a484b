"""Write an evaluation's results: results.json, report.md and three PNG plots.

Called by `rl.eval.evaluate.evaluate` with the summary (per benchmark: accuracy metrics from
`rl.eval.metrics` and KV means) and the per-problem records of problems.jsonl. Plots use
matplotlib's Agg backend (no display needed):

    accuracy.png      pass@1 (+- standard error) and maj@n per benchmark
    kv.png            per response: peak KV under the memento layout against full attention
    compression.png   histogram of block tokens / memento tokens over responses with blocks
"""

from __future__ import annotations

import json
from pathlib import Path

PLOTS = ("accuracy.png", "kv.png", "compression.png")


def write_report(out: Path, summary: dict, records: list[dict]) -> None:
    """results.json (summary + per-problem pass@1), report.md and the plots, into `out`."""
    out = Path(out)
    per_problem = [{"id": r["id"], "benchmark": r["benchmark"], "pass@1": r["pass@1"],
                    "correct": sum(s["correct"] for s in r["responses"])} for r in records]
    (out / "results.json").write_text(json.dumps({**summary, "problems": per_problem}, indent=2))
    plot_accuracy(out / PLOTS[0], summary)
    responses = [s for r in records for s in r["responses"]]
    plot_kv(out / PLOTS[1], responses, summary["kv_bytes_per_token"])
    plot_compression(out / PLOTS[2], responses)
    (out / "report.md").write_text(markdown(summary))


def markdown(summary: dict) -> str:
    cfg = summary["config"]
    sampling = cfg["sampling"]
    mode = ("control (plain vLLM)" if not cfg["memento"]["enable"]
            else "memento, restart ablation" if cfg["restart_mode"] else "memento")
    lines = [
        f"# Evaluation of `{cfg['model_path']}`", "",
        f"Mode: {mode}; keep_last_n_blocks={cfg['memento']['keep_last_n_blocks']}, "
        f"max_block_tokens={sampling['max_block_tokens']}. Sampling: n={sampling['n']}, "
        f"temperature={sampling['temperature']}, top_p={sampling['top_p']}, "
        f"top_k={sampling['top_k']}, "
        f"max_tokens={cfg['max_tokens']}, seed={cfg['seed']}. "
        f"KV bytes per token: {summary['kv_bytes_per_token']}.", "",
        "## Accuracy", "",
    ]
    benchmarks = summary["benchmarks"]
    ks = sorted({int(k.split("@")[1]) for s in benchmarks.values() for k in s
                 if k.startswith("pass@") and not k.endswith("_se")})
    header = ["benchmark", "problems", "pass@1 (SE)"] + [f"pass@{k}" for k in ks if k > 1] + \
             [f"maj@{k}" for k in ks]
    rows = [[name, str(s["num_problems"]), f"{100 * s['pass@1']:.1f} ({100 * s['pass@1_se']:.1f})"]
            + [f"{100 * s[f'pass@{k}']:.1f}" for k in ks if k > 1]
            + [f"{100 * s[f'maj@{k}']:.1f}" for k in ks] for name, s in benchmarks.items()]
    lines += table(header, rows)
    lines += ["", "## KV cache per response (means; replayed from the tokens)", "",
              "Peak in GB, area in GB x thousand tokens; ratios are memento layout / full "
              "attention. Engine peak: the live KV tokens the engine itself held.", ""]
    header = ["benchmark", "peak GB", "full peak GB", "peak ratio", "area", "full area",
              "area ratio", "engine peak tok", "tokens", "blocks", "memento tok", "compression",
              "truncated"]
    rows = [[name, f"{s['peak_gb']:.4g}", f"{s['full_peak_gb']:.4g}", f"{s['peak_ratio']:.2f}",
             f"{s['area_gb_ktok']:.4g}", f"{s['full_area_gb_ktok']:.4g}", f"{s['area_ratio']:.2f}",
             f"{s['engine_peak_tokens']:.0f}", f"{s['response_tokens']:.0f}", f"{s['blocks']:.2f}",
             f"{s['memento_tokens']:.1f}", f"{s['compression']:.2f}",
             f"{100 * s['truncated_fraction']:.1f}%"] for name, s in benchmarks.items()]
    lines += table(header, rows)
    lines += [""] + [f"![{p}]({p})" for p in PLOTS] + [""]
    return "\n".join(lines)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(figsize=(6, 4))


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_accuracy(path: Path, summary: dict) -> None:
    plt, (fig, ax) = _figure()
    names = list(summary["benchmarks"])
    stats = [summary["benchmarks"][b] for b in names]
    n = summary["config"]["sampling"]["n"]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [100 * s["pass@1"] for s in stats], 0.4,
           yerr=[100 * s["pass@1_se"] for s in stats], capsize=3, label="pass@1 (+- SE)")
    ax.bar([i + 0.2 for i in x], [100 * s[f"maj@{n}"] for s in stats], 0.4, label=f"maj@{n}")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    _save(plt, fig, path)


def plot_kv(path: Path, responses: list[dict], bytes_per_token: int) -> None:
    plt, (fig, ax) = _figure()
    full = [r["full_peak_tokens"] * bytes_per_token / 1e9 for r in responses]
    memento = [r["peak_tokens"] * bytes_per_token / 1e9 for r in responses]
    ax.scatter(full, memento, s=8, alpha=0.6, label="responses")
    top = max(full, default=1.0)
    ax.plot([0, top], [0, top], "k--", lw=1, label="memento = full")
    ax.set_xlabel("peak KV, full attention (GB)")
    ax.set_ylabel("peak KV, memento layout (GB)")
    ax.legend()
    _save(plt, fig, path)


def plot_compression(path: Path, responses: list[dict]) -> None:
    plt, (fig, ax) = _figure()
    ratios = [r["compression"] for r in responses if r.get("blocks")]
    ax.hist(ratios, bins=30)
    ax.set_xlabel("compression (block tokens / memento tokens)")
    ax.set_ylabel("responses")
    ax.set_title(f"{len(ratios)} of {len(responses)} responses have blocks")
    _save(plt, fig, path)
