"""rl.data.prompts: verl-format loading, chat template, length filter, bad rows, loader resume."""

import json

import pytest
from transformers import AutoTokenizer

from rl.data.prompts import PromptDataset, PromptExample, PromptLoader, load_prompts
from rl.data.rows import DataError, write_jsonl, write_parquet

# The tiny tokenizer is byte-level, so a prompt of L ASCII chars costs L tokens plus the ChatML
# template: <|im_start|> "user\n" (5) <|im_end|> "\n" (1) <|im_start|> "assistant\n" (10) = 19.
TEMPLATE_TOKENS = 19


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def row(content: str, answer: str = "1", **extra) -> dict:
    return {"prompt": [{"role": "user", "content": content}], "data_source": "toy",
            "reward_model": {"ground_truth": answer, "style": "rule"},
            "extra_info": {"tag": content[:3]}, **extra}


def test_chat_template_is_applied_with_generation_prompt(tmp_path, tokenizer):
    path = write_jsonl([row("What is 2+2?", "4")], tmp_path / "p.jsonl")
    example = PromptDataset([path], tokenizer, max_prompt_length=100)[0]
    assert tokenizer.decode(example.prompt_ids) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert len(example.prompt_ids) == len("What is 2+2?") + TEMPLATE_TOKENS
    assert (example.index, example.data_source, example.ground_truth) == (0, "toy", "4")
    assert example.extra_info == {"tag": "Wha"}


def test_parquet_and_jsonl_give_the_same_examples(tmp_path, tokenizer):
    rows = [row(f"question {i}", str(i)) for i in range(5)]
    from_jsonl = PromptDataset([write_jsonl(rows, tmp_path / "p.jsonl")], tokenizer, 100)
    from_parquet = PromptDataset([write_parquet(rows, tmp_path / "p.parquet")], tokenizer, 100)
    assert from_jsonl.examples == from_parquet.examples


def test_overlong_prompts_are_filtered_and_counted(tmp_path, tokenizer):
    # Limit 10 content chars: lengths 5 and 10 (exactly at the limit) stay, 11 and 30 go.
    rows = [row("a" * n) for n in (5, 10, 11, 30)]
    path = write_jsonl(rows, tmp_path / "p.jsonl")
    dataset = PromptDataset([path], tokenizer, max_prompt_length=10 + TEMPLATE_TOKENS)
    assert [len(e.prompt_ids) - TEMPLATE_TOKENS for e in dataset] == [5, 10]
    assert [e.index for e in dataset] == [0, 1]
    assert dataset.num_filtered == 2
    assert "2 longer than 29 tokens filtered" in dataset.summary()
    with pytest.raises(DataError, match="filter_overlong=False"):
        PromptDataset([path], tokenizer, 10 + TEMPLATE_TOKENS, filter_overlong=False)


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "not a list"}, "'prompt' must be a non-empty list"),
    ({"prompt": [{"role": "user"}]}, r"prompt\[0\] must be"),
    ({"data_source": ""}, "'data_source' must be"),
    ({"reward_model": {"style": "rule"}}, "'reward_model' must be a dict with a 'ground_truth'"),
    ({"extra_info": [1, 2]}, "'extra_info' must be a dict"),
])
def test_malformed_row_error_names_file_and_row(tmp_path, tokenizer, bad, message):
    rows = [row("fine"), row("fine too"), {**row("broken"), **bad}]
    path = write_jsonl(rows, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=rf"bad\.jsonl: row 2: {message}"):
        PromptDataset([path], tokenizer, 100)


def test_malformed_rows_can_be_skipped_and_counted(tmp_path, tokenizer):
    rows = [row("one"), {"prompt": []}, row("two"), {**row("x"), "reward_model": None}]
    path = write_jsonl(rows, tmp_path / "bad.jsonl")
    dataset = PromptDataset([path], tokenizer, 100, on_bad_row="skip")
    assert [tokenizer.decode(e.prompt_ids).split("\n")[1] for e in dataset] == [
        "one<|im_end|>", "two<|im_end|>"]
    assert dataset.num_skipped == 2 and "row 1" in dataset.skipped[0]


def test_unparsable_line_names_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row("ok")) + "\n{oops\n")
    with pytest.raises(DataError, match=r"p\.jsonl: row 1 \(line 2\) is not JSON"):
        PromptDataset([path], tokenizer, 100)


def test_builtin_arith_is_generated_into_data_dir(tmp_path, tokenizer):
    dataset = load_prompts(["builtin:arith"], tokenizer, 256, data_dir=tmp_path, verbose=False)
    assert len(dataset) == 2000 and (tmp_path / "arith_train.jsonl").exists()
    assert dataset[0].data_source == "memento_arith"
    assert "\\boxed{}" in tokenizer.decode(dataset[0].prompt_ids)


# --------------------------------------------------------------------------- loader


def toy_dataset(n: int) -> list[PromptExample]:
    return [PromptExample(i, [i], "toy", str(i), {}) for i in range(n)]


def indices(batch) -> list[int]:
    return [e.index for e in batch]


def test_each_epoch_is_a_fresh_permutation_and_deterministic():
    loader = PromptLoader(toy_dataset(10), batch_size=3, seed=1)  # 3 batches/epoch, 1 left out
    epochs = [sum((indices(loader.next_batch()) for _ in range(3)), []) for _ in range(3)]
    for seen in epochs:
        assert len(set(seen)) == 9
    assert epochs[0] != epochs[1] != epochs[2]
    again = PromptLoader(toy_dataset(10), batch_size=3, seed=1)
    assert sum((indices(again.next_batch()) for _ in range(3)), []) == epochs[0]
    other_seed = PromptLoader(toy_dataset(10), batch_size=3, seed=2)
    assert sum((indices(other_seed.next_batch()) for _ in range(3)), []) != epochs[0]


@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_continues_exactly_at_every_position(drop_last):
    # 10 prompts, batch 4: 2 batches per epoch with drop_last, 3 (4, 4, 2) without, so the
    # loop crosses several epoch boundaries; resuming after any k batches must reproduce the rest.
    reference = PromptLoader(toy_dataset(10), 4, seed=3, drop_last=drop_last)
    expected = [indices(reference.next_batch()) for _ in range(10)]
    for k in range(11):
        first = PromptLoader(toy_dataset(10), 4, seed=3, drop_last=drop_last)
        got = [indices(first.next_batch()) for _ in range(k)]
        state = json.loads(json.dumps(first.state_dict()))  # as the checkpoint stores it
        resumed = PromptLoader(toy_dataset(10), 4, seed=3, drop_last=drop_last)
        resumed.load_state_dict(state)
        got += [indices(resumed.next_batch()) for _ in range(10 - k)]
        assert got == expected, f"resume after {k} batches diverged"


def test_state_at_epoch_boundary_points_at_next_epoch():
    loader = PromptLoader(toy_dataset(6), batch_size=3, seed=0)
    loader.next_batch()
    loader.next_batch()  # the last batch of epoch 0
    assert (loader.state_dict()["epoch"], loader.state_dict()["batch_in_epoch"]) == (1, 0)


def test_drop_last_false_yields_short_last_batch_and_shuffle_false_keeps_order():
    loader = PromptLoader(toy_dataset(5), batch_size=2, shuffle=False, drop_last=False)
    assert [indices(loader.next_batch()) for _ in range(4)] == [[0, 1], [2, 3], [4], [0, 1]]


def test_resume_refuses_a_different_dataset_or_batching():
    state = PromptLoader(toy_dataset(10), 4).state_dict()
    with pytest.raises(ValueError, match="dataset_size=10"):
        PromptLoader(toy_dataset(11), 4).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size=4"):
        PromptLoader(toy_dataset(10), 5).load_state_dict(state)


def test_batch_larger_than_dataset_is_rejected():
    with pytest.raises(ValueError, match="fewer than batch_size"):
        PromptLoader(toy_dataset(3), batch_size=4)
