"""The default run (README command 1): the whole MEMENTO method on a CPU in minutes.

    python -m rl.demo                          # = bash scripts/run.sh (conf/demo.yaml)
    python -m rl.demo rl_steps=30 sft_steps_full=400 out_dir=outputs/demo2

1. build a tokenizer with the memento tokens and a small random Qwen3 model (no downloads);
2. generate the built-in block-structured arithmetic task and memento-format solution traces,
   half of whose mementos are lossy (they drop the running value);
3. SFT stage 1 (full causal attention), then stage 2 (memento layout) from the best stage-1
   checkpoint;
4. evaluate held-out accuracy through the memento vLLM engine;
5. GRPO through the memento engine with the math verifier (rl.train.Trainer);
6. evaluate again, then print a summary table (accuracy after SFT and after RL, the gain with
   its standard error paired over problems, what RL changed in the mementos: the share that
   carry the value, the share of responses whose mementos all do and how often those are right;
   blocks per response, peak KV with mementos against full attention as the engine measured it)
   and write PNG plots: reward and accuracy over steps, and live KV over one generated trace.

The console shows one line per phase with its progress and ETA (`rl.console`); `verbose=true`
brings back the libraries' own logging and the trainer's per-step line. `python -m
rl.demo_seeds` runs this over seeds 0-2 and writes README's results table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rl.config import (ActorConfig, Config, ModelConfig, OptimConfig, SamplingConfig, from_dict,
                       run_hydra)
from rl.console import Phase, quiet_third_party
from rl.data.arith import (ArithConfig, recovered_after_lossy, state_memento_share, state_mementos,
                           write_arith_datasets)
from rl.eval.evaluate import EvalConfig, evaluate
from rl.sft.train import SFTConfig, run_sft
from rl.shutdown import reap_children_at_exit


@dataclass
class DemoConfig:
    out_dir: str = "outputs/demo"
    seed: int = 0
    # model: a small Qwen3 (about 0.9M parameters)
    hidden_size: int = 128
    num_hidden_layers: int = 4
    # task: small operands and non-negative values keep the arithmetic inside a block learnable
    # in the SFT budget (steps touching a negative number were right 20% of the time, the others
    # 61%, after the same SFT; docs/history.md, session 7)
    min_steps: int = 2
    max_steps: int = 3
    ops: list[str] = field(default_factory=lambda: ["add", "sub"])
    operand_max: int = 5
    value_max: int = 20
    nonnegative: bool = True  # values in [0, value_max]
    # Half of the SFT traces' mementos drop the running value, as an imperfect teacher's
    # summaries do, and the trace then goes on from a guess (rl.data.arith.solution_trace says
    # why: otherwise the model learns to read the value from the lossy memento's KV). So after
    # SFT a lossy memento costs the answer, and RL has to learn to carry the state forward (the
    # paper's RL recovers what SFT on imperfect mementos loses). At one half the choice stays a
    # coin flip at any sampling temperature, and it is the main thing the reward depends on.
    lossy_memento_rate: float = 0.5
    n_train: int = 4000
    n_heldout: int = 200
    # SFT
    # SFT length sets how often the arithmetic inside a block is right (kept-value responses
    # right 32-37% after 300 + 100 steps, 49% after 350 + 100 on seed 2; session 7)
    sft_steps_full: int = 350
    sft_steps_memento: int = 100
    sft_batch_size: int = 16
    sft_lr: float = 3e-3
    sft_lr_scheduler: Literal["constant", "cosine"] = "cosine"  # "constant" or "cosine" (down to 0.1 x sft_lr) per stage
    # GRPO
    rl_steps: int = 20
    rl_prompts: int = 8
    rl_group: int = 8
    # 1e-4 costs the kept-value responses 4-12 points of accuracy, but teaches the mementos in
    # 20 steps (carrying the value 0.87-0.96 after RL in four runs); at 5e-5 that share reached
    # only 0.70-0.86 and the gain fell to +0.065 on seed 1 (docs/history.md, session 7)
    rl_lr: float = 1e-4
    # below 1, so fewer samples fail on a slip inside a block and the reward follows the mementos
    rl_temperature: float = 0.6
    # trainer.overlap_rollout: off, because on 2 cores the engine and the actor then share the CPU
    # and a step took 8.0 s instead of 6.4 s (3.6 s generation + 2.8 s training, in turn)
    rl_overlap: bool = False
    # evaluation: pass@1 sampled at `eval_temperature` (the RL one), `eval_samples` per problem;
    # two give a paired standard error of about 0.025 on 200 problems, small beside the gain
    eval_temperature: float = 0.6
    eval_samples: int = 2
    max_response_length: int = 320
    # false: one line per phase with progress and ETA; true: every library's own logging too
    # (vLLM INFO, Ray workers' output, progress bars) and the trainer's per-step console line
    verbose: bool = False


def main(argv: list[str] | None = None) -> None:
    run_hydra("demo", DemoConfig, run_demo, argv)


def run_demo(cfg: DemoConfig) -> None:
    started = time.perf_counter()
    reap_children_at_exit()  # a stopped run must not leave vLLM's engine processes spinning
    if not cfg.verbose:
        quiet_third_party()
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    # 1-2. model and data
    from rollout.tiny_model import build_tiny_model

    model_dir = build_tiny_model(out / "base_model", seed=cfg.seed, hidden_size=cfg.hidden_size,
                                 intermediate_size=3 * cfg.hidden_size,
                                 num_hidden_layers=cfg.num_hidden_layers, initializer_range=0.02)
    task = ArithConfig(min_steps=cfg.min_steps, max_steps=cfg.max_steps, ops=tuple(cfg.ops),
                       operand_max=cfg.operand_max, value_max=cfg.value_max,
                       nonnegative=cfg.nonnegative,
                       lossy_memento_rate=cfg.lossy_memento_rate)
    files = write_arith_datasets(out / "data", n_train=cfg.n_train, n_val=cfg.n_heldout,
                                 seed=cfg.seed, cfg=task)
    sft_val = split_off(files.sft_train, out / "data" / "arith_sft_select.jsonl", 64)
    stamp(started, f"model at {model_dir}, data at {out / 'data'}")

    # 3. two-stage SFT
    # Training ranks get every core (Ray then sets their torch threads); the phases run in turn.
    cpus = float(os.cpu_count() or 1)
    actor = ActorConfig(cpus_per_worker=cpus, ppo_max_token_len_per_gpu=8192,
                        optim=OptimConfig(lr=cfg.sft_lr, warmup_steps=10,
                                          lr_scheduler_type=cfg.sft_lr_scheduler, min_lr_ratio=0.1))
    common = dict(train_files=[str(files.sft_train)], val_files=[str(sft_val)], max_length=512,
                  batch_size=cfg.sft_batch_size, seed=cfg.seed, actor=actor)
    stage1 = sft_stage(started, "SFT stage 1 (full attention)", cfg, SFTConfig(
        model=ModelConfig(path=str(model_dir)), stage="full", output_dir=str(out / "sft_full"),
        epochs=100, max_steps=cfg.sft_steps_full, eval_every=50, **common))
    stage2 = sft_stage(started, "SFT stage 2 (memento layout)", cfg, SFTConfig(
        model=ModelConfig(path=str(stage1.best_dir)), stage="memento",
        output_dir=str(out / "sft_memento"), epochs=100, max_steps=cfg.sft_steps_memento,
        eval_every=25, **common))

    # 4. held-out accuracy after SFT
    before = heldout_eval(started, "held-out eval after SFT", stage2.best_dir, files.rl_val,
                          out / "eval_sft", cfg)

    # 5. GRPO through the memento engine
    from rl.train import Trainer

    rl_cfg = from_dict(Config, {
        "data": {"train_files": [str(files.rl_train)], "train_batch_size": cfg.rl_prompts,
                 "max_prompt_length": 128, "max_response_length": cfg.max_response_length,
                 "seed": cfg.seed},
        "actor_rollout_ref": {
            "model": {"path": str(stage2.best_dir)},
            "actor": {"ppo_mini_batch_size": cfg.rl_prompts, "ppo_max_token_len_per_gpu": 8192,
                      "cpus_per_worker": cpus, "optim": {"lr": cfg.rl_lr}},
            "rollout": {"n": cfg.rl_group, "temperature": cfg.rl_temperature,
                        "kv_cache_memory_bytes": 512 << 20}},
        "trainer": {"total_training_steps": cfg.rl_steps, "save_freq": 0, "resume": False,
                    "default_local_dir": str(out / "grpo"), "experiment_name": "demo-grpo",
                    "seed": cfg.seed, "overlap_rollout": cfg.rl_overlap,
                    "logger": ["console", "wandb"] if cfg.verbose else ["wandb"]}})
    phase = Phase(started, "GRPO", cfg.rl_steps)
    trainer = Trainer(rl_cfg)
    try:
        history = trainer.fit(on_step=lambda step, m: phase.update(
            step, f"reward {m['reward/mean']:.2f}"))
        wandb_dir = trainer.tracker.run_path
    finally:
        trainer.close()
    window = history[-min(5, len(history)):]
    last_reward = np.mean([m["reward/mean"] for m in window])
    phase.done(f"reward {last_reward:.2f} (mean of the last {len(window)} steps)")

    # 6. held-out accuracy after RL, summary and plots
    after = heldout_eval(started, "held-out eval after RL", out / "grpo" / "hf", files.rl_val,
                         out / "eval_rl", cfg)
    plots = write_plots(out, history, before, after)
    gain, gain_se = paired_gain(before["records"], after["records"])
    summary = {"accuracy_after_sft": before["accuracy"], "accuracy_after_rl": after["accuracy"],
               "accuracy_stderr_after_sft": before["stderr"],
               "accuracy_stderr_after_rl": after["stderr"], "gain": gain, "gain_stderr": gain_se,
               "heldout_problems": cfg.n_heldout,
               # a guess after a lossy memento is uniform over the task's values
               "recovered_by_chance": 1 / (task.value_max - task.low + 1),
               "blocks_per_response": after["blocks"], "peak_kv_memento": after["peak"],
               "peak_kv_full": after["full_peak"], "evictions_per_response": after["evictions"],
               **{f"{key}_after_{name}": result[key]
                  for name, result in (("sft", before), ("rl", after))
                  for key in ("state_mementos", "accuracy_all_carry", "accuracy_some_dropped",
                              "responses_all_carry", "recovered_after_lossy")},
               "minutes": (time.perf_counter() - started) / 60, "wandb_run": wandb_dir,
               "plots": [str(p) for p in plots], "config": asdict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)


def sft_stage(started: float, name: str, cfg: DemoConfig, sft: SFTConfig):
    """One SFT stage behind a progress line (per-step lines instead when verbose)."""
    phase = Phase(started, name, sft.max_steps)
    best = [float("inf")]

    def on_step(record: dict, steps_total: int) -> None:
        phase.total = steps_total
        best[0] = min(best[0], record.get("val_loss", best[0]))
        phase.update(record["step"], f"loss {record['loss']:.3f}, best val {best[0]:.3f}")

    result = run_sft(sft, log=print if cfg.verbose else (lambda message: None),
                     on_step=None if cfg.verbose else on_step)
    phase.done(f"best val loss {result.best_val_loss:.4f}")
    return result


def split_off(path: Path, dest: Path, count: int) -> Path:
    """Move the last `count` rows of a jsonl file into `dest` (checkpoint-selection data)."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-count]) + "\n")
    dest.write_text("\n".join(lines[-count:]) + "\n")
    return dest


def heldout_eval(started: float, name: str, model_dir: Path, rl_val: Path, out_dir: Path,
                 cfg: DemoConfig) -> dict:
    """pass@1 on the held-out problems through the memento engine, with its KV counters and what
    the mementos carried."""
    phase = Phase(started, name, cfg.n_heldout)
    summary = evaluate(EvalConfig(
        model_path=str(model_dir), benchmark_files=[str(rl_val)], output_dir=str(out_dir),
        sampling=SamplingConfig(n=cfg.eval_samples, temperature=cfg.eval_temperature, top_p=1.0,
                                top_k=0),
        # 50 problems x eval_samples sequences per engine call keep the CPU engine busy
        max_tokens=cfg.max_response_length, chunk_size=50,
        seed=cfg.seed + 1, dtype="float32", kv_cache_memory_bytes=512 << 20, save_responses=True),
        on_progress=lambda done, total: phase.update(done))
    records = [json.loads(line) for line in (out_dir / "problems.jsonl").read_text().splitlines()]
    responses = [r for rec in records for r in rec["responses"]]
    (bench,) = summary["benchmarks"].values()  # one benchmark file
    flags = [state_mementos(r["text"]) for r in responses]
    carry = [bool(f) and all(f) for f in flags]
    recovered = [flag for r in responses for flag in recovered_after_lossy(r["text"])]
    correct = [bool(r["correct"]) for r in responses]
    result = {"accuracy": bench["pass@1"], "stderr": bench["pass@1_se"],
              "blocks": float(np.mean([r["blocks"] for r in responses])),
              "peak": float(np.mean([r["engine_peak_tokens"] for r in responses])),
              "full_peak": float(np.mean([r["full_peak_tokens"] for r in responses])),
              "evictions": float(np.mean([r["num_evictions"] for r in responses])),
              "state_mementos": state_memento_share([r["text"] for r in responses]),
              "responses_all_carry": float(np.mean(carry)),
              "accuracy_all_carry": mean_where(correct, carry, True),
              "accuracy_some_dropped": mean_where(correct, carry, False),
              "recovered_after_lossy": float(np.mean(recovered)) if recovered else float("nan"),
              "records": records}
    phase.done(f"accuracy {result['accuracy']:.3f} (+/- {result['stderr']:.3f}), "
               f"mementos carrying the value {result['state_mementos']:.2f}")
    return result


def mean_where(values: list[bool], flags: list[bool], flag: bool) -> float:
    picked = [v for v, f in zip(values, flags) if f == flag]
    return float(np.mean(picked)) if picked else float("nan")


def paired_gain(before: list[dict], after: list[dict]) -> tuple[float, float]:
    """Mean per-problem pass@1 change and its standard error over problems (both evaluations
    sample the same held-out problems, so the pairing removes the problems' own spread)."""
    after_by_id = {r["id"]: r["pass@1"] for r in after}
    diffs = np.array([after_by_id[r["id"]] - r["pass@1"] for r in before])
    return float(diffs.mean()), float(diffs.std(ddof=1) / np.sqrt(len(diffs)))


def write_plots(out: Path, history: list[dict], before: dict, after: dict) -> list[Path]:
    """Reward over GRPO steps against held-out accuracy before and after RL; live KV over the
    most-evicting held-out trace."""
    from transformers import AutoTokenizer

    from rollout.layout import MementoConfig, evict_at, live_tokens

    steps = np.arange(1, len(history) + 1)
    reward = np.array([h["reward/mean"] for h in history])
    window = min(5, len(reward))  # a batch holds few prompts: its reward is noisy
    smooth = np.convolve(reward, np.ones(window) / window, mode="valid")
    curves = line_plot(out / "grpo_reward.png", "GRPO on the arithmetic task", "GRPO step", None,
                       [(steps, reward, "reward (train batch)", ":"),
                        (steps[window - 1:], smooth, f"reward, mean of {window} steps", "-"),
                        (steps, np.full(len(steps), before["accuracy"]), "held-out, after SFT", "--"),
                        (steps, np.full(len(steps), after["accuracy"]), "held-out, after RL", "--")])
    tokenizer = AutoTokenizer.from_pretrained(out / "grpo" / "hf")
    trace = max((r for rec in after["records"] for r in rec["responses"]),
                key=lambda r: r["num_evictions"])
    ids = tokenizer(trace["text"], add_special_tokens=False)["input_ids"]
    live = live_tokens(evict_at(ids, MementoConfig.from_tokenizer(tokenizer)))
    positions = np.arange(1, len(ids) + 1)
    sawtooth = line_plot(out / "kv_sawtooth.png", "Live KV over one generated trace",
                         "response token", "response KV tokens held (prompt excluded)",
                         [(positions, live, "memento (live KV)", "-"),
                          (positions, positions, "full attention", "--")])
    return [curves, sawtooth]


def line_plot(path: Path, title: str, xlabel: str, ylabel: str | None, series: list) -> Path:
    """A PNG of (x, y, label, linestyle) series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for x, y, label, style in series:
        ax.plot(x, y, style, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel or "")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_summary(s: dict) -> None:
    def pair(key: str) -> str:
        return f"{s[key + '_after_sft']:.2f} -> {s[key + '_after_rl']:.2f}"

    rows = [
        ("held-out accuracy after SFT", f"{s['accuracy_after_sft']:.3f} "
                                         f"(+/- {s['accuracy_stderr_after_sft']:.3f})"),
        ("held-out accuracy after RL", f"{s['accuracy_after_rl']:.3f} "
                                        f"(+/- {s['accuracy_stderr_after_rl']:.3f})"),
        ("gain (paired over problems)", f"{s['gain']:+.3f} (+/- {s['gain_stderr']:.3f})"),
        ("held-out problems", str(s["heldout_problems"])),
        ("mementos carrying the value, SFT -> RL", pair("state_mementos")),
        ("responses whose mementos all carry it", pair("responses_all_carry")),
        ("  accuracy of those, SFT -> RL", pair("accuracy_all_carry")),
        ("  accuracy of the rest, SFT -> RL", pair("accuracy_some_dropped")),
        (f"dropped values back after eviction (chance {s['recovered_by_chance']:.2f})",
         pair("recovered_after_lossy")),
        ("blocks per response", f"{s['blocks_per_response']:.2f}"),
        ("evictions per response (engine)", f"{s['evictions_per_response']:.2f}"),
        ("peak KV tokens, memento (engine)", f"{s['peak_kv_memento']:.1f}"),
        ("peak KV tokens, full attention", f"{s['peak_kv_full']:.1f}"),
        ("wall time", f"{s['minutes']:.1f} min"),
        ("wandb run (offline)", str(s["wandb_run"])),
        ("plots", ", ".join(s["plots"])),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows), flush=True)


def stamp(started: float, message: str) -> None:
    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)


if __name__ == "__main__":
    main()
