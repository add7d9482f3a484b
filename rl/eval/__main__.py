"""`python -m rl.eval key=value ...`: evaluate a checkpoint (conf/eval.yaml, rl/eval/evaluate.py)."""

from pathlib import Path

from rl.config import run_hydra
from rl.eval.evaluate import EvalConfig, evaluate


def evaluate_and_print(cfg: EvalConfig) -> None:
    summary = evaluate(cfg)
    for name, s in summary["benchmarks"].items():
        print(f"{name}: pass@1 {s['pass@1']:.4f} +- {s['pass@1_se']:.4f} over "
              f"{s['num_problems']} problems; peak KV {s['peak_gb']:.4g} GB "
              f"(full attention {s['full_peak_gb']:.4g} GB)")
    print(f"report: {Path(cfg.output_dir) / 'report.md'}")


def main(argv: list[str] | None = None) -> None:
    run_hydra("eval", EvalConfig, evaluate_and_print, argv)


if __name__ == "__main__":
    main()
