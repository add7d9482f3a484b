"""Data for every job: row files, RL prompts, SFT traces and the built-in task.

    rows.py         .jsonl / .parquet rows and per-row parsing (DataError names file and row)
    prompts.py      verl-format prompt datasets and the resumable batch loader (RL, evaluation)
    sft_dataset.py  OpenMementos rows -> prompt-masked SFT sequences; new memento tokens
    arith.py        the built-in arithmetic task (`python -m rl.data.arith out/`)

Imports flow down this list's dependencies only: rows <- sft_dataset <- arith <- prompts.
"""
