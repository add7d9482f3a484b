"""Memento data from raw reasoning traces (issue 17): split, score, segment, summarise, judge.

    traces.py      rows in (problem/reasoning/answer or conversations) and seed selection
    tokens.py      token counts for block sizes
    split.py       reasoning -> sentences (code, LaTeX, math and lists kept whole)
    client.py      OpenAI-compatible HTTP client and the in-process vLLM client
    ask.py         a round of requests: malformed-answer retries, token usage per stage
    boundaries.py  LLM boundary scores 0-3 over sentence windows (one or two passes)
    segment.py     exact DP segmentation (mean cut score - weight * CV of block sizes)
    mementos.py    write, judge (rubric 0-10) and refine one memento per block
    report.py      Markdown + PNG summary of a run
    run.py         per-trace flow, resumable output, progress bar, Hydra entry point

    python -m rl.data.pipeline input_files=[traces.jsonl] client.model=MODEL
"""
