"""The memento layout against hand-derived layouts and a brute-force dense definition."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.layout import (LayoutTracker, MementoConfig, evict_at, kv_bytes_per_token, kv_stats, live_tokens,
                            memento_stats)

BS, BE, SS, SE = 100, 101, 102, 103
CFG = MementoConfig(BS, BE, SS, SE)
OPTIONS = [
    {},
    {"mask_delimiters": True},
    {"keep_last_n_blocks": 1},
    {"keep_last_n_blocks": 2, "mask_delimiters": True},
    {"keep_last_n_blocks": -1},
    {"keep_last_block_for_answer": True},
    {"keep_last_block_for_answer": True, "mask_delimiters": True},
]


def brute_force_visible(tokens, cfg):
    """Dense (T, T) visibility, derived per query from a separate parse of the whole stream.

    1. Pair delimiters over the full stream: blocks by a stack, each memento with the newest
       opened block that is closed and still has no memento (only earlier tokens matter, so the
       full-stream pairing equals the pairing any prefix would give).
    2. The k-th completed memento (ordered by its <|summary_end|>) is the k-th eviction
       candidate. Without deferral, after k completions the oldest max(0, k - N) are gone; with
       keep_last_block_for_answer each <|block_start|> removes one more if any completed block is
       still visible.
    3. Query i sees key j <= i unless j lies in the evicted span of a block removed at or before i.
    """
    T = len(tokens)
    blocks, stack, open_memento = [], [], None
    for p, tok in enumerate(tokens):
        if tok == cfg.block_start:
            blocks.append({"bs": p, "be": None, "ss": None, "se": None})
            stack.append(blocks[-1])
        elif tok == cfg.block_end and stack:
            stack.pop()["be"] = p
        elif tok == cfg.summary_start:
            free = [b for b in blocks if b["be"] is not None and b["ss"] is None]
            if free:
                free[-1]["ss"] = p
                open_memento = free[-1]
        elif tok == cfg.summary_end and open_memento is not None:
            open_memento["se"] = p
            open_memento = None
    done = sorted((b for b in blocks if b["se"] is not None), key=lambda b: b["se"])

    removal_time = {}  # index into `done` -> query position from which it is evicted
    if cfg.keep_last_n_blocks >= 0:
        if cfg.keep_last_block_for_answer:
            removed = 0
            for p, tok in enumerate(tokens):
                completed = sum(1 for b in done if b["se"] < p)
                if tok == cfg.block_start and completed > removed:
                    removal_time[removed] = p
                    removed += 1
        else:
            for k, b in enumerate(done):  # the k-th completion evicts completion k - N
                if k - cfg.keep_last_n_blocks >= 0:
                    removal_time[k - cfg.keep_last_n_blocks] = b["se"]

    visible = np.tril(np.ones((T, T), dtype=bool))
    for k, at in removal_time.items():
        b = done[k]
        lo, hi = (b["bs"], b["be"] + 1) if cfg.mask_delimiters else (b["bs"] + 1, b["be"])
        visible[at:, lo:hi] = False
    return visible


def visible_from_evict_at(ev):
    T = len(ev)
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    return (j <= i) & (i < ev[None, :])


def test_single_block_hand_derived():
    # pos: 0 p, 1 BS, 2 a, 3 b, 4 BE, 5 SS, 6 m, 7 SE, 8 ans
    toks = [7, BS, 8, 9, BE, SS, 10, SE, 11]
    # content (2, 3) is evicted at the summary_end position 7; the memento (5, 6) still saw it.
    assert evict_at(toks, CFG).tolist() == [9, 9, 7, 7, 9, 9, 9, 9, 9]
    # Phi-4 style evicts the delimiters 1 and 4 as well.
    assert evict_at(toks, CFG.replace(mask_delimiters=True)).tolist() == [9, 7, 7, 7, 7, 9, 9, 9, 9]
    # -1 is full causal attention.
    assert evict_at(toks, CFG.replace(keep_last_n_blocks=-1)).tolist() == [9] * 9


def test_keep_last_n_blocks_evicts_at_later_summary_end():
    # blocks at 0..5 and 6..11, each: BS x BE SS m SE
    toks = [BS, 1, BE, SS, 2, SE, BS, 3, BE, SS, 4, SE, 5]
    ev = evict_at(toks, CFG.replace(keep_last_n_blocks=1))
    # block 0's content (pos 1) goes at block 1's summary_end (11); block 1 is never evicted.
    assert ev.tolist() == [13, 11] + [13] * 11


def test_keep_last_block_for_answer_defers_to_next_block_start():
    toks = [BS, 1, BE, SS, 2, SE, BS, 3, BE, SS, 4, SE, 9, 9]
    ev = evict_at(toks, CFG.replace(keep_last_block_for_answer=True))
    # block 0 (pos 1) goes at the next block_start (6); the last block (pos 7) is kept for the answer.
    assert ev[1] == 6 and ev[7] == 14


@pytest.mark.parametrize("toks", [
    [BS, 1, 2],                      # truncated mid-block
    [BS, 1, BE, SS, 2],              # truncated mid-memento
    [SS, 1, SE, 2],                  # memento without a block
    [BE, SS, 1, SE],                 # block end without start
    [BS, 1, SE, BE],                 # summary end before anything pairs
])
def test_unpaired_structure_evicts_nothing(toks):
    assert evict_at(toks, CFG).tolist() == [len(toks)] * len(toks)


def test_nested_blocks_pair_innermost_first():
    # outer BS@0, inner BS@2..BE@4 + memento 5..7, outer BE@8 + memento 9..11
    toks = [BS, 1, BS, 2, BE, SS, 3, SE, BE, SS, 4, SE]
    ev = evict_at(toks, CFG)
    assert ev[3] == 7  # inner content evicted at the inner summary_end
    assert ev[1] == 11 and ev[2] == 11 and ev[4] == 11 and ev[6] == 11  # outer content at 11


def test_tracker_reports_evictions_before_the_summary_end_token():
    tracker = LayoutTracker(CFG)
    out = [tracker.feed(t) for t in [5, BS, 1, 2, BE, SS, 3]]
    assert all(not o for o in out)
    (ev,) = tracker.feed(SE)
    assert (ev.start, ev.end, ev.at) == (2, 4, 7)
    assert (ev.block_start, ev.block_end, ev.summary_start) == (1, 4, 5)


def test_blocks_in_the_prompt_are_laid_out_like_generated_ones():
    prompt = [5, BS, 1, BE, SS, 2, SE]
    response = [BS, 3, BE, SS, 4, SE]
    full = evict_at(prompt + response, CFG)
    # prompt block content (pos 2) at its summary_end 6; response content (pos 8) at 12
    assert full[2] == 6 and full[8] == 12


token_streams = st.lists(st.sampled_from([BS, BE, SS, SE, 1, 2, 3]), min_size=0, max_size=60)
structured_streams = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 3), st.booleans()), max_size=8
).map(lambda blocks: [t for n, m, close in blocks
                      for t in [BS, *[1] * n, BE, SS, *[2] * m] + ([SE] if close else []) + [3]])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@settings(max_examples=150, deadline=None)
@given(toks=st.one_of(token_streams, structured_streams))
def test_layout_matches_brute_force_definition(options, toks):
    cfg = CFG.replace(**options)
    ev = evict_at(toks, cfg)
    assert ev.shape == (len(toks),)
    np.testing.assert_array_equal(visible_from_evict_at(ev), brute_force_visible(toks, cfg))


@settings(max_examples=100, deadline=None)
@given(toks=st.one_of(token_streams, structured_streams), options=st.sampled_from(OPTIONS))
def test_tracker_fed_token_by_token_agrees_with_batch_layout(options, toks):
    """What an engine holds (keys fed so far minus evicted spans) is what evict_at says."""
    cfg = CFG.replace(**options)
    ev = evict_at(toks, cfg)
    tracker, evicted = LayoutTracker(cfg), set()
    for i, tok in enumerate(toks):
        for e in tracker.feed(tok):
            assert e.at == i
            evicted.update(range(e.start, e.end))
        held = set(range(i + 1)) - evicted
        assert held == {j for j in range(i + 1) if i < ev[j]}


def test_kv_stats_counts_live_tokens():
    # prompt 2 tokens, then BS x x BE SS m SE y: content (3, 4) evicted at 7
    toks = [5, 5, BS, 1, 1, BE, SS, 2, SE, 3]
    ev = evict_at(toks, CFG)
    live = live_tokens(ev)
    # live at t is t + 1 until t = 8 where the 2 content tokens are gone
    assert live.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 7, 8]
    stats = kv_stats(ev, prompt_len=2)
    assert stats == {"peak_tokens": 8, "area_tokens": 3 + 4 + 5 + 6 + 7 + 8 + 7 + 8,
                     "full_peak_tokens": 10, "full_area_tokens": sum(range(3, 11))}
    assert kv_stats(ev, prompt_len=len(toks))["peak_tokens"] == 0


def test_kv_bytes_qwen3_8b():
    # 36 layers, 8 kv heads, head_dim 128, bf16 -> 144 KiB per token (memento.md)
    assert kv_bytes_per_token(36, 8, 128, 2) == 147456


@pytest.mark.parametrize("bad", [
    dict(block_start=1, block_end=1, summary_start=2, summary_end=3),
    dict(block_start=0, block_end=1, summary_start=2, summary_end=3, keep_last_n_blocks=-2),
    dict(block_start=0, block_end=1, summary_start=2, summary_end=3, keep_last_n_blocks=1,
         keep_last_block_for_answer=True),
])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError):
        MementoConfig(**bad)


def test_config_from_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = MementoConfig.from_tokenizer(tok, keep_last_n_blocks=1)
    assert tok.convert_ids_to_tokens([cfg.block_start, cfg.summary_end]) == [
        "<|block_start|>", "<|summary_end|>"]
    assert cfg.keep_last_n_blocks == 1
    text = "<think><|block_start|>1+1<|block_end|><|summary_start|>2<|summary_end|></think>2"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert (evict_at(ids, cfg) < len(ids)).sum() == 0  # the only block is kept (N=1)
    ev = evict_at(ids, cfg.replace(keep_last_n_blocks=0))
    assert (ev < len(ids)).sum() == 3  # the three content bytes "1+1"


def test_memento_stats_counts_blocks_after_start():
    toks = [BS, 1, BE, SS, 2, SE,  # prompt block, not counted with start=6
            BS, 1, 1, 1, 1, BE, SS, 2, SE, BS, 1, 1, BE, SS, 2, 2, SE, BS, 1]
    stats = memento_stats(toks, CFG, start=6)
    # blocks of 4 and 2 content tokens, mementos of 1 and 2: compression 6 / 3
    assert stats == {"blocks": 2, "block_tokens": 3.0, "memento_tokens": 1.5, "compression": 2.0}
    assert memento_stats([1, 2], CFG)["blocks"] == 0
