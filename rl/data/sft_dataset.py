"""Memento SFT data: OpenMementos rows -> prompt-masked token sequences, and new-token init.

A row (jsonl or parquet) holds the user message in `problem` (or `prompt`: a string or chat
messages) and the assistant response in one of the two OpenMementos forms:

- `response`: the pre-assembled memento-format string (HF config `default`), used verbatim;
- `sentences` (list[str]), `blocks` (inclusive [start, end] sentence ranges covering every
  sentence in order) and `block_summaries` (one per block) (HF config `full`), assembled here by
  `rewards.format.render_memento`, with `answer` for the text after `</think>`.

Either way the response must follow the grammar (`check_memento_response`), as strictly as the RL
format reward checks it and more (the response itself must open with `<think>`):

    <think> ( <|block_start|> reasoning <|block_end|> <|summary_start|> memento <|summary_end|> )*
    </think> answer

`tokenize_sft` applies the chat template to the prompt, appends eos to the response, masks the
prompt (labels -100) and keeps the loss on every completion token (blocks, mementos, delimiters,
answer), as in the paper's two SFT stages; the trainer adds the memento layout in stage 2.
`add_memento_tokens` adds the delimiters to an existing model (paper A.2.1 initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rewards.format import (BLOCK_END, BLOCK_START, MARKERS, MEMENTO_TOKENS, SUMMARY_END, SUMMARY_START,
                            THINK_END, THINK_START, check_format, render_memento)
from rl.data.chat import prompt_token_ids
from rl.data.rows import DataError, OnBadRow, parse_files


# Paper A.2.1: each new token starts at the mean embedding of related words (plus noise).
# The paper gives the memento tokens; the <think> words are ours, used only when a tokenizer
# lacks <think> / </think>.
RELATED_WORDS = {
    BLOCK_START: ("block", "start", "begin", "section", "step"),
    BLOCK_END: ("block", "end", "finish", "section", "done"),
    SUMMARY_START: ("summary", "summarize", "brief", "recap", "overview"),
    SUMMARY_END: ("summary", "end", "finish", "done", "complete"),
    THINK_START: ("think", "reason", "start", "begin"),
    THINK_END: ("think", "reason", "end", "done"),
}


@dataclass(frozen=True)
class SFTExample:
    """One conversation: the user turn(s) and the memento-format assistant response."""

    messages: list[dict[str, str]]  # prompt chat messages, {"role", "content"}
    response: str


@dataclass(frozen=True)
class SFTSample:
    """Tokens of one example. labels[t] = input_ids[t] on completion tokens, -100 on the prompt."""

    input_ids: list[int]  # (T,)
    labels: list[int]  # (T,)
    prompt_length: int
    truncated: bool


# --------------------------------------------------------------------------- grammar


def check_memento_response(response: str) -> int:
    """Validate the grammar; returns the number of blocks. Raises ValueError naming the first problem.

    The format reward's check with its defaults (so SFT data never shows what RL punishes: text
    outside blocks, empty or overlong mementos, no answer, ...), plus `require_think_start`.
    """
    report = check_format(response, require_think_start=True)
    if not report.well_formed:
        raise ValueError(report.first_problem)
    return report.blocks


def assemble_from_sentences(sentences: Sequence[str], blocks: Sequence[Sequence[int]],
                            block_summaries: Sequence[str], answer: str = "") -> str:
    """OpenMementos `full` form -> response. Sentences of a block are joined with a space.

    `blocks` are inclusive [start, end] sentence indices that must tile 0..len(sentences)-1 in
    order, so no sentence is dropped or repeated.
    """
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("sentences must be strings")
    if len(blocks) != len(block_summaries):
        raise ValueError(f"{len(blocks)} blocks but {len(block_summaries)} block_summaries")
    if not blocks:
        raise ValueError("blocks is empty")
    texts, next_start = [], 0
    for k, span in enumerate(blocks):
        if (not isinstance(span, (list, tuple)) or len(span) != 2
                or not all(isinstance(x, int) for x in span)):
            raise ValueError(f"blocks[{k}] must be [start, end] ints, got {span!r}")
        start, end = span
        if start != next_start or end < start or end >= len(sentences):
            raise ValueError(f"blocks[{k}] = [{start}, {end}] must start at sentence {next_start} "
                             f"and end at or after it, below {len(sentences)} (inclusive ranges "
                             "tiling the sentences in order)")
        texts.append(" ".join(s.strip() for s in sentences[start:end + 1]))
        next_start = end + 1
    if next_start != len(sentences):
        raise ValueError(f"blocks cover sentences 0..{next_start - 1} of {len(sentences)}")
    if not all(isinstance(s, str) and s for s in block_summaries):
        raise ValueError("block_summaries must be non-empty strings")
    return render_memento(texts, block_summaries, answer)


def parse_sft_row(row: dict[str, Any], where: str) -> SFTExample:
    """Validate one OpenMementos row; `where` ("file: row i") prefixes every error."""
    prompt = row.get("problem", row.get("prompt"))
    if isinstance(prompt, str) and prompt:
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in prompt):
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        raise DataError(f"{where}: needs 'problem' (str) or 'prompt' (str or chat messages), "
                        f"got {prompt!r:.80}")
    try:
        if isinstance(row.get("response"), str):
            response = row["response"]
        elif all(k in row for k in ("sentences", "blocks", "block_summaries")):
            response = assemble_from_sentences(row["sentences"], row["blocks"],
                                               row["block_summaries"], row.get("answer") or "")
        else:
            raise ValueError("needs 'response' or all of 'sentences', 'blocks', 'block_summaries'")
        check_memento_response(response)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e
    return SFTExample(messages, response)


def load_sft_examples(files: Sequence[str | Path], on_bad_row: OnBadRow = "raise"
                      ) -> tuple[list[SFTExample], int]:
    """Examples from every file, and the number of malformed rows skipped (0 with "raise")."""
    paths = [files] if isinstance(files, (str, Path)) else files
    examples, errors = parse_files(paths, parse_sft_row, on_bad_row)
    return examples, len(errors)


# ------------------------------------------------------------------------ tokenising


def tokenize_sft(example: SFTExample, tokenizer, max_length: int) -> SFTSample:
    """Prompt via the chat template (with the generation prompt), completion = response + eos.

    Sequences longer than `max_length` are cut on the right. Raises ValueError when the
    tokenizer lacks a delimiter the response uses (it would be split into bytes silently).
    """
    from kernels import IGNORE_INDEX  # the log-prob kernels' "no target"; imports torch

    (prompt_ids,) = prompt_token_ids(tokenizer, [example.messages])
    completion_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    for token in MARKERS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token in example.response and (token_id is None or token_id == tokenizer.unk_token_id
                                          or token_id not in completion_ids):
            raise ValueError(f"tokenizer does not encode {token!r} as one token; "
                             "call add_memento_tokens first")
    completion_ids = list(completion_ids) + [tokenizer.eos_token_id]
    input_ids = prompt_ids + completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    truncated = len(input_ids) > max_length
    return SFTSample(input_ids[:max_length], labels[:max_length], len(prompt_ids), truncated)


class SFTDataset:
    """Tokenised SFT samples from OpenMementos files.

    Samples whose prompt alone fills `max_length` (no loss token left) are dropped and counted in
    `num_dropped`; `num_truncated` counts the ones cut on the right; `num_skipped` malformed rows.
    """

    def __init__(self, files: Sequence[str | Path], tokenizer, max_length: int,
                 on_bad_row: OnBadRow = "raise"):
        examples, self.num_skipped = load_sft_examples(files, on_bad_row)
        self.samples: list[SFTSample] = []
        self.num_truncated = self.num_dropped = 0
        for example in examples:
            sample = tokenize_sft(example, tokenizer, max_length)
            if sample.prompt_length >= max_length:
                self.num_dropped += 1
                continue
            self.num_truncated += sample.truncated
            self.samples.append(sample)
        if not self.samples:
            raise DataError(f"no usable SFT samples in {files} (max_length={max_length})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> SFTSample:
        return self.samples[i]


# ---------------------------------------------------------------------- new tokens


def add_memento_tokens(model, tokenizer, seed: int = 0, sigma: float = 0.01) -> dict[str, int]:
    """Add the memento delimiters (and <think>/</think> if missing) to a model and tokenizer.

    Each new token's input-embedding row (and output row, when lm_head is not tied) is set to the
    mean over `RELATED_WORDS[token]` of each word's embedding (a word split into several tokens
    contributes the mean of its tokens) plus N(0, sigma^2) noise from `seed` (paper A.2.1). The
    embedding is resized only when the new ids exceed it (Qwen3 pads its vocab, so it usually is
    not). Tokens already present are left alone.

    Returns:
        {token: id} of the tokens added (empty when nothing was missing).
    """
    import torch

    vocab = tokenizer.get_vocab()
    missing = [t for t in (THINK_START, THINK_END, *MEMENTO_TOKENS) if t not in vocab]
    if not missing:
        return {}
    word_ids = {t: [tokenizer(w, add_special_tokens=False)["input_ids"] for w in RELATED_WORDS[t]]
                for t in missing}  # tokenised before the new tokens exist
    tokenizer.add_tokens(missing, special_tokens=True)
    new_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in missing}
    if max(new_ids.values()) >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)

    generator = torch.Generator().manual_seed(seed)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    with torch.no_grad():
        for weight in matrices:  # (V, H)
            for token, token_id in new_ids.items():
                words = [weight[ids].float().mean(0) for ids in word_ids[token] if ids]
                mean = torch.stack(words).mean(0)
                noise = torch.randn(mean.shape, generator=generator) * sigma
                weight[token_id] = (mean + noise).to(weight.dtype)
    return new_ids
