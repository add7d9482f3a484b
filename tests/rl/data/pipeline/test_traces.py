"""Input rows -> traces, and seed selection's reasons for leaving a row out."""

import pytest

from rl.data.pipeline.traces import Rejected, parse_trace

LONG = "We expand the product and collect the terms. " * 20  # 900 chars


def words(text):
    return len(text.split())


def parse(row, **kw):
    return parse_trace(row, "id", words, kw.get("min_tokens", 50), kw.get("cjk", 0.0))


def test_plain_row_with_think_tags_takes_the_answer_after_them():
    trace = parse({"id": 7, "problem": " Add. ", "reasoning": f"<think>\n{LONG}</think>\n42"})
    assert (trace.id, trace.problem, trace.answer) == ("7", "Add.", "42")
    assert trace.reasoning == LONG.strip()
    bare = parse({"problem": "Add.", "reasoning": LONG, "answer": "41"})
    assert bare.reasoning == LONG.strip() and bare.answer == "41" and len(bare.id) == 16


def test_openthoughts_conversation_is_read():
    row = {"conversations": [{"from": "human", "value": "Add."},
                             {"from": "gpt", "value": f"<think>{LONG}</think>The sum is 42."}]}
    trace = parse(row)
    assert trace.problem == "Add." and trace.answer == "The sum is 42."
    messages = {"messages": [{"role": "user", "content": "Add."},
                             {"role": "assistant", "content": f"<think>{LONG}</think>42"}]}
    assert parse(messages).reasoning == LONG.strip()


@pytest.mark.parametrize("row, reason", [
    ({"problem": "p", "reasoning": f"<think>{LONG}"}, "never closed"),
    ({"conversations": [{"from": "human", "value": "p"}, {"from": "gpt", "value": LONG}]},
     "no <think>"),
    ({"problem": "p", "reasoning": "too short"}, "tokens < 50"),
    ({"problem": "p", "reasoning": LONG + "答案是四十二"}, "CJK share"),
    ({"problem": "p", "reasoning": LONG + "<|block_end|>"}, "delimiters"),
    ({"problem": "p", "reasoning": LONG, "answer": "x </think>"}, "delimiters"),
    ({"problem": "p", "reasoning": f"<think>{LONG}</think>  "}, "no final answer"),
    ({"problem": "", "reasoning": LONG}, "no problem"),
    ({"problem": "p"}, "needs 'reasoning'"),
])
def test_seed_selection_rejects_with_the_reason(row, reason):
    with pytest.raises(Rejected, match=reason):
        parse(row)


def test_cjk_threshold_admits_a_trace_with_a_few_cjk_characters():
    row = {"problem": "p", "reasoning": LONG + "四十二", "answer": "42"}
    assert parse(row, cjk=0.05).reasoning
