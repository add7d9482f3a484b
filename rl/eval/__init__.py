"""Evaluation of a checkpoint (`python -m rl.eval`).

    evaluate.py  benchmark rows -> samples from the memento engine -> verdicts and KV per response
    metrics.py   pass@1 with its standard error, unbiased pass@k, maj@k (pure functions)
    report.py    results.json, report.md and the plots
"""
