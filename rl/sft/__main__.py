"""`python -m rl.sft key=value ...`: one memento SFT stage (conf/sft.yaml, rl/sft/train.py)."""

from rl.config import run_hydra
from rl.sft.train import SFTConfig, run_sft


def sft(cfg: SFTConfig) -> None:
    result = run_sft(cfg)
    print(f"best checkpoint: {result.best_dir} (val loss {result.best_val_loss:.4f})")


def main(argv: list[str] | None = None) -> None:
    run_hydra("sft", SFTConfig, sft, argv)


if __name__ == "__main__":
    main()
