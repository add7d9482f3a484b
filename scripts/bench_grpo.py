"""GRPO step throughput: Memento-RL against TRL's GRPOTrainer, side by side in one run.

Same tiny model, prompts, group size, response length, temperature and toy reward; both on this
machine's CPU. TRL generates with transformers (its vLLM path needs CUDA); we generate with the
memento vLLM engine. Tokens per second counts prompt + response tokens of every sample trained.
Ours runs twice: on-policy (the default; generation and training take turns, and the actor gets
every core, as TRL's process does) and with `trainer.overlap_rollout` (the next batch generates
while the actor trains, one step off-policy; the engine's core is then its own, as a separate
device would be, and the actor gets the others).

    pip install -e ".[bench]"          # TRL
    python scripts/bench_grpo.py --steps 6
Prints `RESULT <name> <value> <unit> <note>` lines (scripts/bench_all.py collects them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOY = str(ROOT / "tests" / "rl" / "toy_reward.py") + ":digit_share"
CORES = os.cpu_count() or 1
MODES = (  # (RESULT name, label, trainer.overlap_rollout, actor cores)
    ("grpo_tokens_per_second_vs_trl", "on-policy", False, CORES),
    ("grpo_overlap_tokens_per_second_vs_trl", "overlap, one step off-policy", True,
     max(1, CORES - 1)),
)


def run_ours(model_dir: Path, data_file: Path, args, work: Path,
             overlap: bool, actor_cpus: int) -> tuple[float, dict]:
    from rl.config import Config, from_dict
    from rl.train import Trainer

    cfg = from_dict(Config, {
        "data": {"train_files": [str(data_file)], "train_batch_size": args.prompts,
                 "max_prompt_length": 128, "max_response_length": args.length},
        "actor_rollout_ref": {
            "model": {"path": str(model_dir)},
            "actor": {"ppo_mini_batch_size": args.prompts, "ppo_max_token_len_per_gpu": 8192,
                      "cpus_per_worker": actor_cpus},
            "rollout": {"n": args.group, "kv_cache_memory_bytes": 256 << 20}},
        "reward": {"custom_function": TOY},
        "trainer": {"total_training_steps": args.steps + 1, "save_freq": 0,
                    "default_local_dir": str(work / f"ours-overlap-{overlap}"), "logger": [],
                    "overlap_rollout": overlap}})
    trainer = Trainer(cfg)
    try:
        history = [trainer.step() for _ in range(args.steps + 1)][1:]  # first step warms up
    finally:
        trainer.close()
    seconds = statistics.median(h["time/step"] for h in history)
    tokens = statistics.median(h["perf/tokens_per_second"] * h["time/step"] for h in history)
    phases = {k: statistics.median(h[k] for h in history) for k in history[0] if k.startswith("time/")}
    return tokens / seconds, phases


def run_trl(model_dir: Path, data_file: Path, args, work: Path) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rl.data.rows import read_rows
    sys.path.insert(0, str(ROOT / "tests" / "rl"))
    from toy_reward import digit_share

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [{"prompt": r["prompt"]} for r in read_rows(data_file)]

    def reward(completions, **_):
        return [digit_share("", c[0]["content"] if isinstance(c, list) else c, None)
                for c in completions]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_step_begin(self, *a, **k):
            self.marks.append([time.perf_counter()])

        def on_step_end(self, *a, **k):
            self.marks[-1].append(time.perf_counter())

    clock = StepClock()
    config = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.group,
                        num_generations=args.group, max_completion_length=args.length,
                        temperature=1.0, learning_rate=1e-6, max_steps=args.steps + 1, beta=0.0,
                        logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=config,
                          reward_funcs=reward, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    seconds = statistics.median(end - start for start, end in clock.marks[1:])
    prompt_len = statistics.mean(len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True))
                                 for r in rows)
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history
               if "completions/mean_length" in e][1:]
    tokens = args.prompts * args.group * (prompt_len + statistics.median(lengths))
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()

    from rl.data.arith import ArithConfig, write_arith_datasets
    from rollout.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "model")
        data = write_arith_datasets(work / "data", n_train=64, n_val=4, cfg=ArithConfig(max_steps=3))
        ours = [run_ours(model_dir, data.rl_train, args, work, overlap, cpus)
                for _, _, overlap, cpus in MODES]
        trl = run_trl(model_dir, data.rl_train, args, work)
    setup = f"tiny Qwen3, {args.prompts} prompts x {args.group}, {args.length} new tokens, CPU"
    for (name, label, _, cpus), (tokens_per_second, phases) in zip(MODES, ours):
        print(f"ours ({label}, actor on {cpus} of {CORES} cores) {tokens_per_second:.0f} tok/s, "
              f"TRL {trl:.0f} tok/s; "
              "our phases (median s): " + ", ".join(f"{k[5:]} {v:.2f}" for k, v in phases.items()))
        print(f"RESULT {name} {tokens_per_second / trl:.2f} x ours ({label})/TRL GRPOTrainer, {setup}")


if __name__ == "__main__":
    main()
