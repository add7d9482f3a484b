"""Row files: .jsonl / .parquet read and written as lists of dicts, and per-row parsing.

The lowest layer of `rl.data`: every reader (prompts, SFT traces, benchmarks) parses rows through
`parse_files`, so a malformed row is reported the same way everywhere, naming file and row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, TypeVar

OnBadRow = Literal["raise", "skip"]
T = TypeVar("T")


class DataError(ValueError):
    """A malformed file or row; the message names the file and the 0-based row."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw rows of a .jsonl or .parquet file (a line that is not a JSON object raises DataError)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {len(rows)} (line {i + 1}) is not JSON: {e}") from e
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {len(rows)} (line {i + 1}) is not a JSON object")
                rows.append(row)
        return rows
    raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .parquet or .jsonl)")


def write_jsonl(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as JSON lines (atomically: temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_parquet(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as a parquet table (nested dicts become structs, as verl's files have)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
    tmp.replace(path)
    return path


def parse_files(files: Sequence[str | Path], parse: Callable[[dict[str, Any], str], T],
                on_bad_row: OnBadRow) -> tuple[list[T], list[str]]:
    """`parse(row, "file: row i")` over every row of every file.

    Returns the parsed rows and the errors of the rows skipped (only with on_bad_row="skip";
    with "raise" the first DataError propagates).
    """
    if on_bad_row not in ("raise", "skip"):
        raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
    parsed, errors = [], []
    for path in files:
        for i, row in enumerate(read_rows(path)):
            try:
                parsed.append(parse(row, f"{path}: row {i}"))
            except DataError as e:
                if on_bad_row == "raise":
                    raise
                errors.append(str(e))
    return parsed, errors
