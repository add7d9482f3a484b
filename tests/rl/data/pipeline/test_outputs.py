"""Resumable output files: a line cut by a kill is dropped, done and rejected ids are skipped."""

import json

from rl.data.pipeline.config import ClientConfig, PipelineConfig, SeedConfig
from rl.data.pipeline.run import FAILED, ROWS, Outputs, load_traces

LONG = "We expand the product and collect every term. " * 10


def test_a_partial_last_line_is_dropped_and_appending_goes_on(tmp_path):
    (tmp_path / ROWS).write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "resp')
    outputs = Outputs(tmp_path)
    assert outputs.done_ids(retry_failed=False) == {"a"}
    outputs.append(ROWS, {"id": "c"})
    assert [r["id"] for r in outputs.read(ROWS)] == ["a", "c"]


def test_done_rejected_and_failed_traces_are_skipped_unless_failures_are_retried(tmp_path):
    rows = [{"id": "done", "problem": "p", "reasoning": LONG, "answer": "1"},
            {"id": "failed", "problem": "p", "reasoning": LONG, "answer": "1"},
            {"id": "short", "problem": "p", "reasoning": "tiny", "answer": "1"},
            {"id": "new", "problem": "p", "reasoning": LONG, "answer": "1"},
            {"id": "new", "problem": "p", "reasoning": LONG, "answer": "1"}]  # duplicate id
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    outputs = Outputs(tmp_path / "out")
    outputs.append(ROWS, {"id": "done"})
    outputs.append(FAILED, {"id": "failed", "status": "failed", "stage": "score", "error": "x"})
    cfg = PipelineConfig(input_files=[str(tmp_path / "in.jsonl")], output_dir=str(outputs.dir),
                         client=ClientConfig(model="m"), seed=SeedConfig(min_reasoning_tokens=50))
    count = lambda text: len(text.split())  # noqa: E731
    assert [t.id for t in load_traces(cfg, count, outputs)] == ["new"]
    rejected = [r for r in outputs.read(FAILED) if r["status"] == "rejected"]
    assert [(r["id"], r["stage"]) for r in rejected] == [("short", "seed")]
    cfg.retry_failed = True
    assert [t.id for t in load_traces(cfg, count, outputs)] == ["failed", "new"]
    assert len(outputs.read(FAILED)) == 2  # the rejection is recorded once
    cfg.limit = 1
    assert [t.id for t in load_traces(cfg, count, outputs)] == []  # the first trace is done


def test_report_counts_a_retried_failure_that_finished_as_done_only(tmp_path):
    from rl.data.pipeline.report import write_report

    row = {"id": "a", "blocks": [[0, 1], [2, 2]], "block_tokens": [300, 200],
           "memento_tokens": [40, 10], "round_scores": [[5.0, 9.0], [8.0]],
           "judge_scores": [9.0, 8.0], "prompt_tokens": 100, "completion_tokens": 10}
    failed = [{"id": "a", "status": "failed", "stage": "score", "error": "x"},
              {"id": "b", "status": "failed", "stage": "judge/0", "error": "y"},
              {"id": "c", "status": "rejected", "stage": "seed", "error": "z"}]
    stats = write_report([row], failed, pass_score=8.0, max_rounds=3, output_dir=tmp_path)
    assert dict(stats["failed"]) == {"judge/0": 1} and stats["rejected"] == 1
    assert stats["pass_rate_by_round"] == [0.5, 1.0, 1.0]  # block 1 passes in round 1
    assert stats["compression"] == 10.0  # 500 block tokens -> 50 memento tokens
    assert "| 1 | 100.0% |" in (tmp_path / "report.md").read_text()
