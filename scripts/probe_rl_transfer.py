"""Does one GRPO update help on prompts it did not see? A probe for small-model RL recipes.

Samples three independent batches (A, B, C) from the model, takes one actor update on A with the
trainer's own code, and prints, for each batch, how the sequence log-likelihoods moved: the
advantage-weighted sum (positive when the update favours that batch's better answers) and the mean
change over correct and wrong samples. An update that helps A but not B and C is fitting its
batch, not learning something that transfers; the README's faithful-memento analysis was
measured so:

    python -m rl.demo lossy_memento_rate=0       # writes outputs/demo/sft_memento/best and data
    python scripts/probe_rl_transfer.py --model outputs/demo/sft_memento/best \
        --data outputs/demo/data/arith_train.jsonl --prompts 16 --lr 1e-4
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("WANDB_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--data", required=True, help="verl-format prompt file")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-response-length", type=int, default=320)
    args = parser.parse_args()

    from rl.config import Config, from_dict
    from rl.train import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = from_dict(Config, {
            "data": {"train_files": [args.data], "train_batch_size": args.prompts,
                     "max_prompt_length": 128, "max_response_length": args.max_response_length},
            "actor_rollout_ref": {
                "model": {"path": args.model},
                "actor": {"ppo_mini_batch_size": args.prompts, "ppo_max_token_len_per_gpu": 8192,
                          "cpus_per_worker": os.cpu_count(), "optim": {"lr": args.lr}},
                "rollout": {"n": args.group, "kv_cache_memory_bytes": 512 << 20}},
            "trainer": {"total_training_steps": 1, "save_freq": 0, "resume": False,
                        "default_local_dir": run_dir, "logger": []}})
        trainer = Trainer(cfg)
        try:
            batches = []
            for step in range(3):
                batch, _ = trainer.generate_batch(step)
                batch.compute_layout(trainer.memento)
                trainer.compute_advantages(batch)
                batches.append(batch)

            def sequence_logprobs(batch):
                logprobs, _ = trainer.logprobs(trainer.actor, batch)
                return (logprobs * batch.loss_mask).sum(1)

            before = [sequence_logprobs(b) for b in batches]
            batches[0].old_logprobs = None  # the on-policy update, as a training step takes it
            trainer.update_actor(batches[0])
            after = [sequence_logprobs(b) for b in batches]
        finally:
            trainer.close()

    for name, batch, old, new in zip(("A (updated on)", "B (unseen)", "C (unseen)"), batches,
                                     before, after):
        change = new - old
        advantage = (batch.advantages * batch.loss_mask).sum(1) / batch.loss_mask.sum(1).clamp(min=1)
        correct, wrong = batch.rewards > 0.5, batch.rewards <= 0.5
        print(f"batch {name}: accuracy {batch.rewards.mean():.3f}, "
              f"sum(advantage x change) {float((advantage * change).sum()):+.2f}, "
              f"mean change correct {float(change[correct].mean()):+.4f} "
              f"wrong {float(change[wrong].mean()):+.4f} nats per sequence")


if __name__ == "__main__":
    main()
