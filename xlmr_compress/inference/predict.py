"""Predictions for a file of texts: TXT, JSONL or CSV/TSV in, JSONL out in input order, streamed in chunks."""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO, Any


from ..configs import PredictConfig
from ..console import interactive, progress
from ..errors import UserError, not_utf8
from .pipeline import QA, Pipeline

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def predict(src: str | Path, out: str | Path, config: PredictConfig | None = None) -> Path | None:
    """Write one JSON line per input text of `config.input` to `out` (the file, returned; or "-": stdout, None), in
    input order."""
    config = config or PredictConfig()
    fmt = input_format(config)
    if config.chunk_size < 1:
        raise UserError(f"chunk_size {config.chunk_size} must be at least 1")
    check_output(out, config.overwrite)
    pipe = Pipeline.load(src, config)
    total = count(config, fmt, pipe.task) if config.input != "-" and interactive() else None
    with open_input(config.input) as source, write_output(out) as sink, \
            progress(total=total, unit="text", desc="predict") as bar:
        items = read_items(source, fmt, config, pipe.task)
        while chunk := list(islice(items, config.chunk_size)):
            prepared, _ = pipe.prepare(chunk)
            for result in pipe.run(prepared, config.top_k):
                sink.write(json.dumps(result, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
    return None if str(out) == "-" else Path(out)


def input_format(config: PredictConfig) -> str:
    """The input's format: the --format given, else the file's suffix; refuses an unreadable input."""
    if config.input != "-" and not Path(config.input).is_file():
        raise UserError(f"input {config.input} is not a file: give a TXT, JSONL or CSV file, or - for stdin")
    if config.format != "auto":
        return config.format
    if config.input == "-":
        return "txt"
    suffix = Path(config.input).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"cannot tell the format of {config.input} from its suffix: name it .txt, .jsonl, .csv or "
                        ".tsv, or pass --format")
    return FORMATS[suffix]


def count(config: PredictConfig, fmt: str, task: str) -> int:
    """The number of inputs in a file (a first, cheap pass, so the progress bar has an end)."""
    with open_input(config.input) as source:
        return sum(1 for _ in read_items(source, fmt, config, task))


def check_output(out: str | Path, overwrite: bool) -> None:
    """Refuse an output file that exists (unless overwrite) or whose folder is missing, before any work."""
    if str(out) == "-":
        return
    target = Path(out)
    if target.is_dir():
        raise UserError(f"output {out} is a directory: give a file path (or - for stdout)")
    if target.exists() and not overwrite:
        raise UserError(f"output {out} already exists: remove it or pass --overwrite")
    if not target.parent.is_dir():
        raise UserError(f"the folder of output {out} does not exist: create it or choose another path")


@contextmanager
def open_input(path: str) -> Iterator[Iterator[str]]:
    """The input's lines: stdin for "-", else the file (UTF-8 without a byte-order mark, newlines translated)."""
    if path == "-":
        yield _decoded(sys.stdin, "stdin")
        return
    with open(path, encoding="utf-8-sig", newline="" if Path(path).suffix.lower() in (".csv", ".tsv") else None) as f:
        yield _decoded(f, path)


def _decoded(source: IO[str], name: str) -> Iterator[str]:
    """Lines of a text stream; a byte that is not UTF-8 is refused in one line wherever it sits."""
    try:
        yield from source
    except UnicodeDecodeError as e:
        raise not_utf8(name, e) from None


@contextmanager
def write_output(out: str | Path) -> Iterator[IO[str]]:
    """stdout for "-"; else a temporary sibling file renamed to `out` only when every line is written."""
    if str(out) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_items(source: Iterator[str], fmt: str, config: PredictConfig, task: str) -> Iterator[Any]:
    """Pipeline inputs, one per text line, JSON line or CSV row: texts, [text, pair] or {question, context}."""
    if fmt == "txt":
        for line in source:
            yield line[:-1] if line.endswith("\n") else line
        return
    if fmt == "jsonl":
        rows: Iterator[tuple[int, Any]] = ((n, _json(line, n)) for n, line in enumerate(source, 1) if line.strip())
    else:
        reader = csv.DictReader(source, **({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}))
        rows = ((n, row) for n, row in enumerate(reader, 2))
    for n, row in rows:
        if isinstance(row, str) and task != QA:
            yield row
            continue
        if not isinstance(row, dict):
            raise UserError(f"{config.input} record {n} is a {type(row).__name__}: give an object with the "
                            f"{'question and context' if task == QA else config.text_column} fields")
        if task == QA:
            yield {name: _field(row, name, n, config) for name in ("question", "context")}
        elif config.text_pair_column:
            yield [_field(row, config.text_column, n, config), _field(row, config.text_pair_column, n, config)]
        else:
            yield _field(row, config.text_column, n, config)


def _json(line: str, n: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"line {n} of the input is not JSON ({e}): fix it, or read the file as --format txt") from None


def _field(row: dict, name: str, n: int, config: PredictConfig) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise UserError(f"{config.input} record {n} has no text field {name!r} (it has {', '.join(map(str, row))}): "
                        "name the column with --text-column / --text-pair-column")
    return value
