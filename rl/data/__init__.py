"""Data for every job: row files, chat-templated prompts, SFT traces and the built-in task.

    rows.py         .jsonl / .parquet rows and per-row parsing (DataError names file and row)
    chat.py         conversations -> prompt token ids through the chat template (one place)
    prompts.py      verl-format prompt datasets and the resumable batch loader (RL, evaluation)
    sft_dataset.py  OpenMementos rows -> prompt-masked SFT sequences; new memento tokens
    arith.py        the built-in arithmetic task (`python -m rl.data.arith`, `builtin:` names)
    pipeline/       raw reasoning traces -> memento SFT rows (`python -m rl.data.pipeline`)

rows and chat import nothing of ours; sft_dataset and arith build on them; prompts on arith
(it resolves `builtin:` file names). Nothing here imports the trainer.
"""
