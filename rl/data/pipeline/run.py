"""Raw reasoning traces -> memento SFT rows: the pipeline's entry point and per-trace flow.

    python -m rl.data.pipeline input_files=[traces.jsonl] client.model=MODEL \
        client.base_url=https://api.openai.com/v1 output_dir=runs/mementos
    python -m rl.data.pipeline --cfg job     # print the resolved config and exit

Config: conf/memento_data.yaml over the schema in config.py; docs/memento_data.md.

Per trace (`process_trace`): seed selection (traces.py) -> sentences (split.py) -> boundary
scores (boundaries.py) -> blocks (segment.py) -> judged, refined mementos (mementos.py) -> the
memento-format response. Traces run `max_concurrent_traces` at a time.

Output, in `output_dir`:
- memento.jsonl: one row per finished trace, read as is by the SFT data reader
  (rl.data.sft_dataset): problem, answer, response, sentences, blocks, block_summaries, plus
  boundary_scores, block/memento token counts, judge scores per round and token usage per stage;
- failed.jsonl: traces dropped by seed selection (status "rejected") or that failed (status
  "failed": a request failed for good, answers stayed malformed, no valid segmentation);
- report.md and report.png (report.py), rewritten at the end of every run.

Resuming: each trace's row is appended (one write, flushed) when it finishes, and a rerun skips
every id already in either file (failed ones are retried with retry_failed=true), so an
interrupted run loses only the traces in flight. A line cut short by a kill is dropped.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from rl.data.pipeline.ask import StageFailure, Usage
from rl.data.pipeline.boundaries import score_boundaries
from rl.data.pipeline.client import make_client
from rl.data.pipeline.config import PipelineConfig, check_required
from rl.data.pipeline.mementos import write_mementos
from rl.data.pipeline.report import write_report
from rl.data.pipeline.segment import SegmentationError, segment
from rl.data.pipeline.split import split_sentences
from rl.data.pipeline.tokens import TokenCounter
from rl.data.pipeline.traces import Rejected, Trace, parse_trace
from rl.data.rows import read_rows
from rl.data.sft_dataset import check_memento_response, render_memento

ROWS, FAILED = "memento.jsonl", "failed.jsonl"


def process_trace(trace: Trace, client, cfg: PipelineConfig, count_tokens) -> dict[str, Any]:
    """The output row of one trace. Raises StageFailure when it cannot finish."""
    usage = Usage()
    sentences = split_sentences(trace.reasoning, count_tokens, cfg.split.min_sentence_tokens)
    texts = [s.text for s in sentences]
    scores = (score_boundaries(client, trace.problem, texts, cfg.scoring, usage)
              if len(texts) > 1 else [])
    try:
        blocks = segment([count_tokens(t) for t in texts], scores,
                         min_block_tokens=cfg.segment.min_block_tokens,
                         min_blocks=cfg.segment.min_blocks, max_blocks=cfg.segment.max_blocks,
                         cv_weight=cfg.segment.cv_weight, mean_over=cfg.segment.mean_over,
                         score_resolution=1 / len(cfg.scoring.windows))
    except SegmentationError as e:
        raise StageFailure("segment", str(e)) from e
    block_texts = [trace.reasoning[sentences[a].start:sentences[b].end] for a, b in blocks]
    block_tokens = [count_tokens(t) for t in block_texts]
    results = write_mementos(client, trace.problem, block_texts, block_tokens, cfg.mementos, usage)
    summaries = [r.memento for r in results]
    response = render_memento(block_texts, summaries, trace.answer)
    try:
        check_memento_response(response)  # the SFT reader's (e.g. mementos too long for blocks)
    except ValueError as e:
        raise StageFailure("format", str(e)) from e
    memento_tokens = [count_tokens(m) for m in summaries]
    return {
        "id": trace.id, "problem": trace.problem, "answer": trace.answer, "response": response,
        "sentences": texts, "blocks": [list(b) for b in blocks], "block_summaries": summaries,
        "boundary_scores": scores, "block_tokens": block_tokens, "memento_tokens": memento_tokens,
        "compression": sum(memento_tokens) / sum(block_tokens),
        "judge_scores": [r.score for r in results],
        "round_scores": [r.round_scores for r in results],
        "passed": [r.score >= cfg.mementos.pass_score for r in results],
        "prompt_tokens": usage.total("prompt_tokens"),
        "completion_tokens": usage.total("completion_tokens"), "usage": usage.as_dict(),
    }


class Outputs:
    """The two append-only jsonl files, and the ids they already hold."""

    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def done_ids(self, retry_failed: bool) -> set[str]:
        done = {row["id"] for row in self.read(ROWS)}
        done |= {row["id"] for row in self.read(FAILED)
                 if not (retry_failed and row["status"] == "failed")}
        return done

    def read(self, name: str) -> list[dict[str, Any]]:
        """Rows of one file, after dropping a last line a kill left unfinished."""
        path = self.dir / name
        if not path.exists():
            return []
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    def append(self, name: str, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, (self.dir / name).open("a") as f:
            f.write(line)
            f.flush()


def load_traces(cfg: PipelineConfig, count_tokens, outputs: Outputs) -> list[Trace]:
    """Traces still to do, in input order; rows seed selection drops are recorded as rejected."""
    done = outputs.done_ids(cfg.retry_failed)
    traces, seen = [], set()
    for path in cfg.input_files:
        for i, row in enumerate(read_rows(path)):
            if cfg.limit is not None and len(seen) >= cfg.limit:
                return traces
            try:
                trace = parse_trace(row, cfg.id_key, count_tokens, cfg.seed.min_reasoning_tokens,
                                    cfg.seed.max_cjk_fraction)
            except Rejected as e:
                row_id = str(row.get(cfg.id_key, f"{path}:{i}"))
                seen.add(row_id)
                if row_id not in done:
                    outputs.append(FAILED, {"id": row_id, "status": "rejected", "stage": "seed",
                                            "error": str(e)})
                continue
            if trace.id in seen:
                continue
            seen.add(trace.id)
            if trace.id not in done:
                traces.append(trace)
    return traces


def run(cfg: PipelineConfig, client=None) -> dict[str, int]:
    """Process every trace not yet done; returns how many were written ("done") and "failed"."""
    count_tokens = TokenCounter(cfg.tokenizer)
    outputs = Outputs(cfg.output_dir)
    traces = load_traces(cfg, count_tokens, outputs)
    owned = client is None
    client = make_client(cfg.client) if owned else client
    progress = Progress(len(traces), cfg.progress)
    counts = {"done": 0, "failed": 0}
    pool = ThreadPoolExecutor(cfg.max_concurrent_traces, thread_name_prefix="trace")
    try:
        pending = {pool.submit(process_trace, t, client, cfg, count_tokens): t for t in traces}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                trace = pending.pop(future)
                try:
                    row = future.result()
                except StageFailure as e:
                    outputs.append(FAILED, {"id": trace.id, "status": "failed",
                                            "stage": e.stage, "error": str(e)})
                    counts["failed"] += 1
                    progress.update(None)
                    continue
                outputs.append(ROWS, row)
                counts["done"] += 1
                progress.update(row)
    finally:  # on Ctrl-C: traces not started are dropped, the ones in flight are lost
        pool.shutdown(wait=False, cancel_futures=True)
        progress.close()
        if owned:
            client.close()
    write_report(outputs.read(ROWS), outputs.read(FAILED), cfg.mementos.pass_score,
                 cfg.mementos.max_rounds, outputs.dir)
    return counts


class Progress:
    """tqdm bar (ETA from tqdm) with tokens used and the share of blocks passing the judge."""

    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="trace", disable=not enabled, dynamic_ncols=True)
        self.tokens = self.blocks = self.passed = self.failed = 0

    def update(self, row: dict[str, Any] | None) -> None:
        if row is None:
            self.failed += 1
        else:
            self.tokens += row["prompt_tokens"] + row["completion_tokens"]
            self.blocks += len(row["passed"])
            self.passed += sum(row["passed"])
        self.bar.set_postfix(tokens=self.tokens, failed=self.failed,
                             pass_rate=f"{self.passed / max(self.blocks, 1):.2f}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def main(argv: list[str] | None = None) -> None:
    from rl.config import run_hydra

    def job(cfg: PipelineConfig) -> None:
        counts = run(check_required(cfg))
        out = Path(cfg.output_dir)
        print(f"memento data: {counts['done']} traces written, {counts['failed']} failed; "
              f"rows in {out / ROWS}, report in {out / 'report.md'}")

    run_hydra("memento_data", PipelineConfig, job, argv)
