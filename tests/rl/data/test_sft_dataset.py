"""rl.data.sft_dataset: OpenMementos parsing and assembly, prompt-masked tokens, new-token init."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from kernels import IGNORE_INDEX
from rl.data.rows import DataError, write_jsonl
from rl.data.sft_dataset import (RELATED_WORDS, SFTDataset, SFTExample, add_memento_tokens,
                         check_memento_response, load_sft_examples, parse_sft_row, render_memento,
                         tokenize_sft)
from rollout.layout import MEMENTO_TOKENS, MementoConfig, evict_at

# A trimmed OpenMementos `full` row built from the MEMENTO authors' AIME example (shared/data).
FULL_ROW = json.loads(Path(__file__).with_name("openmementos_full.json").read_text())
BS, BE, SS, SE = MEMENTO_TOKENS


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_full_form_is_assembled_in_the_memento_grammar():
    example = parse_sft_row(FULL_ROW, "fixture")
    s = FULL_ROW["sentences"]
    first_block = " ".join(s[0:3])  # blocks[0] = [0, 2], inclusive
    assert example.response.startswith(
        f"<think>\n{BS}{first_block}{BE}\n{SS}{FULL_ROW['block_summaries'][0]}{SE}\n{BS}{s[3]} ")
    assert example.response.endswith(f"{SE}\n</think>\n{FULL_ROW['answer']}")
    assert check_memento_response(example.response) == 3
    assert example.messages == [{"role": "user", "content": FULL_ROW["problem"]}]


def test_response_form_is_used_verbatim():
    response = "<think><|block_start|>a b<|block_end|><|summary_start|>s<|summary_end|></think> 42"
    example = parse_sft_row({"prompt": [{"role": "user", "content": "q"}], "response": response},
                            "x")
    assert example.response == response


@pytest.mark.parametrize("response, message", [
    ("<|block_start|>a<|block_end|><|summary_start|>s<|summary_end|></think>", "must start with"),
    (f"<think>{BS}a{BE}{SS}s{SE}", "exactly one </think>, found 0"),
    (f"<think>{BS}a{BE}{BS}b{BE}{SS}s{SE}</think>", r"block 1: expected <\|summary_start\|>"),
    (f"<think>{BS}a{BS}b{BE}{SS}s{SE}</think>", r"block 1: expected <\|block_end\|>"),
    (f"<think>{BS}a{BE}{SS}s{SE}{SS}t{SE}</think>", r"block 2: expected <\|block_start\|>"),
    (f"<think>{BS}a{BE}{SS}s{SE}{BS}b{BE}</think>", "block 2 is unfinished"),
    (f"<think>{BS}a{BE}{SS}s{SE}</think>{BS}", "delimiter after </think>"),
    ("<think>plain reasoning</think> 4", "text outside the blocks and mementos"),
    ("<think>\n</think> 4", "no memento blocks"),
    (f"<think>{BS}a long block{BE}{SS}s{SE}</think>\n", "nothing after </think>"),
])
def test_malformed_response_is_rejected_with_the_reason(response, message):
    with pytest.raises(ValueError, match=message):
        check_memento_response(response)


@pytest.mark.parametrize("change, message", [
    ({"blocks": [[0, 2], [4, 5], [6, 8]]}, r"blocks\[1\] = \[4, 5\] must start at sentence 3"),
    ({"blocks": [[0, 2], [3, 5], [6, 9]]}, r"below 9"),
    ({"blocks": [[0, 2], [3, 5], [6, 7]]}, r"cover sentences 0..7 of 9"),
    ({"blocks": [[0, 2], [3, 5], [6]]}, r"blocks\[2\] must be \[start, end\]"),
    ({"block_summaries": ["only", "two"]}, "3 blocks but 2 block_summaries"),
    ({"sentences": None, "blocks": None}, "needs 'response' or all of"),
    ({"problem": None}, "needs 'problem'"),
])
def test_malformed_full_row_names_file_and_row(tmp_path, change, message):
    rows = [FULL_ROW, {**FULL_ROW, **change}]
    rows[1] = {k: v for k, v in rows[1].items() if v is not None}
    path = write_jsonl(rows, tmp_path / "sft.jsonl")
    with pytest.raises(DataError, match=rf"sft\.jsonl: row 1: .*{message}"):
        load_sft_examples([path])
    examples, skipped = load_sft_examples([path], on_bad_row="skip")
    assert (len(examples), skipped) == (1, 1)


def test_prompt_is_masked_and_completion_ends_with_eos(tokenizer):
    example = parse_sft_row(FULL_ROW, "fixture")
    sample = tokenize_sft(example, tokenizer, max_length=100_000)
    p = sample.prompt_length
    prompt_text = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True,
                                                tokenize=False)
    assert tokenizer.decode(sample.input_ids[:p]) == prompt_text
    assert tokenizer.decode(sample.input_ids[p:]) == example.response + "<|im_end|>"
    assert sample.labels[:p] == [IGNORE_INDEX] * p
    assert sample.labels[p:] == sample.input_ids[p:]  # loss on every completion token
    assert sample.input_ids[-1] == tokenizer.eos_token_id and not sample.truncated


def test_tokenised_full_row_evicts_each_block(tokenizer):
    sample = tokenize_sft(parse_sft_row(FULL_ROW, "fixture"), tokenizer, 100_000)
    cfg = MementoConfig.from_tokenizer(tokenizer)
    ids = sample.input_ids
    ev = evict_at(ids, cfg)
    starts = [i for i, t in enumerate(ids) if t == cfg.block_start]
    ends = [i for i, t in enumerate(ids) if t == cfg.block_end]
    summary_ends = [i for i, t in enumerate(ids) if t == cfg.summary_end]
    assert len(starts) == 3
    for s, e, se in zip(starts, ends, summary_ends):
        assert (ev[s + 1:e] == se).all()  # block content hidden from its <|summary_end|> on
        assert (ev[e:se + 1] == len(ids)).all()  # delimiters and memento stay


def test_truncation_and_dropping_count(tmp_path, tokenizer):
    example = parse_sft_row(FULL_ROW, "fixture")
    full = tokenize_sft(example, tokenizer, 100_000)
    cut = tokenize_sft(example, tokenizer, full.prompt_length + 10)
    assert cut.truncated and len(cut.input_ids) == len(cut.labels) == full.prompt_length + 10
    assert cut.input_ids == full.input_ids[:full.prompt_length + 10]

    short = {"problem": "q", "response": f"<think>{BS}ab{BE}{SS}s{SE}</think>1"}
    path = write_jsonl([FULL_ROW, short], tmp_path / "sft.jsonl")
    # Limit 100: the AIME prompt (260 tokens) leaves no completion and is dropped; the short
    # row (20 prompt tokens + 11 completion: 10 for the response, 1 eos) fits.
    dataset = SFTDataset([path], tokenizer, max_length=100)
    assert (len(dataset), dataset.num_dropped, dataset.num_truncated) == (1, 1, 0)


def test_tokenizer_without_memento_tokens_is_refused():
    with pytest.raises(ValueError, match="call add_memento_tokens first"):
        tokenize_sft(SFTExample([{"role": "user", "content": "q"}], render_memento(["a"], ["s"])),
                     plain_tokenizer(), 1000)


# ------------------------------------------------------------------- new-token init


def plain_tokenizer():
    """Byte-level ChatML tokenizer with neither <think> nor the memento tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                               "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def tiny_model(vocab_size: int, tie: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=tie,
        initializer_range=0.5))


def related_mean(weight: torch.Tensor, tokenizer, token: str) -> torch.Tensor:
    """Mean over the token's related words of each word's mean byte embedding (paper A.2.1)."""
    words = [weight[tokenizer(w, add_special_tokens=False)["input_ids"]].mean(0)
             for w in RELATED_WORDS[token]]
    return torch.stack(words).mean(0)


def test_new_rows_start_at_the_mean_of_related_words_plus_small_noise():
    tokenizer = plain_tokenizer()
    old_vocab = len(tokenizer)
    model = tiny_model(old_vocab, tie=False)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()

    added = add_memento_tokens(model, tokenizer, seed=0, sigma=0.01)

    assert sorted(added.values()) == list(range(old_vocab, old_vocab + 6))
    assert model.get_input_embeddings().weight.shape[0] == old_vocab + 6
    cfg = MementoConfig.from_tokenizer(tokenizer)
    assert tokenizer(f"{BS}x{SE}", add_special_tokens=False)["input_ids"] == [
        cfg.block_start, tokenizer.convert_tokens_to_ids("x"), cfg.summary_end]
    for weight, before in ((model.get_input_embeddings().weight, before_in),
                           (model.get_output_embeddings().weight, before_out)):
        assert torch.equal(weight[:old_vocab], before)  # existing rows untouched
        for token, token_id in added.items():
            target = related_mean(before, tokenizer, token)
            noise = weight[token_id] - target
            # N(0, 0.01) over 32 dims: |noise| <= 5 sigma, std near 0.01; embeddings are ~0.5.
            assert noise.abs().max() < 0.05 and 0.004 < noise.std() < 0.02, token
        # Different related words give distinguishable rows (block_start vs summary_start).
        assert (weight[cfg.block_start] - weight[cfg.summary_start]).norm() > 0.2

    again = plain_tokenizer()
    model2 = tiny_model(old_vocab, tie=False)
    add_memento_tokens(model2, again, seed=0, sigma=0.01)
    assert torch.equal(model2.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert add_memento_tokens(model, tokenizer) == {}  # idempotent


def test_no_resize_when_the_embedding_has_spare_rows_and_tied_head_follows():
    tokenizer = plain_tokenizer()
    padded = len(tokenizer) + 16  # like Qwen3's padded vocab
    model = tiny_model(padded, tie=True)
    before = model.get_input_embeddings().weight.detach().clone()
    added = add_memento_tokens(model, tokenizer, sigma=0.0)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == padded
    assert model.get_output_embeddings().weight.data_ptr() == weight.data_ptr()
    for token, token_id in added.items():
        torch.testing.assert_close(weight[token_id], related_mean(before, tokenizer, token))
