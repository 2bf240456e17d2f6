"""Converting your data into chat JSONL: table rows → conversations with a function you write, raw text → documents.

A conversion is one small function, `fn(row) -> messages`, from a row of your data (a dict of column
values) to an OpenAI-format conversation. forgekit reads the rows (CSV/TSV, JSONL, parquet, a `datasets`
folder written by `save_to_disk`, an in-memory `datasets.Dataset` or list of dicts, or a Hugging Face Hub
dataset name), calls your function on each, checks every result with the same rules training uses
(`forgekit.data.validate_record`), and writes the JSONL only when every row converted cleanly. Problems are
collected for the whole source and raised once as `DataError`, each as `source:line: problem`, like the
errors of `forgekit.data.read_examples`.

    from forgekit.convert import chat, to_chat
    to_chat("faq.csv", lambda row: chat(row["question"], row["answer"]), "data/faq.jsonl")

Raw text for continued pre-training (task `causal_lm`) becomes one single-message record per document or
paragraph (`text_to_pretraining`), the LLMForge layout for unstructured text.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forgekit.data import MAX_REPORTED, DataError, _load_hf, is_hf_dataset_name, validate_record

__all__ = [
    "chat",
    "csv_to_chat",
    "read_rows",
    "rows_to_chat",
    "split_train_valid",
    "text_to_pretraining",
    "to_chat",
    "write_jsonl",
]

RowFn = Callable[[dict[str, Any]], Any]
_TEXT_SUFFIXES = (".txt", ".md", ".rst")


def chat(user: str, assistant: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    """The messages of a one-turn conversation: optional system, user, and assistant (omit it for raw text)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages


def _csv_rows(path: Path, delimiter: str | None) -> list[tuple[str, dict]]:
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    rows = []
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would end up in the first column name
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        start = 2  # line 1 is the header
        for row in reader:
            rows.append((f"{path}:{start}", row))
            # a quoted field may span several lines: report the line where each record starts
            start = reader.line_num + 1
    return rows


def _jsonl_rows(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    rows, problems = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(value, dict):
            problems.append(f"{path}:{lineno}: expected a JSON object, got {type(value).__name__}")
            continue
        rows.append((f"{path}:{lineno}", value))
    return rows, problems


def _dataset_rows(ds: Any, name: str, split: str) -> list[tuple[str, dict]]:
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in ds:
            raise DataError([f"{name}: no split {split!r} (splits: {', '.join(ds.keys())})"])
        ds = ds[split]
    return [(f"{name}:row {i}", dict(row)) for i, row in enumerate(ds, start=1)]


def read_rows(source: Any, *, split: str = "train", delimiter: str | None = None) -> list[tuple[str, dict]]:
    """Every row of a tabular source, with where it came from (for error messages).

    Args:
        source: one of
            - a `.csv` / `.tsv` file (first line: column names),
            - a `.jsonl` / `.json` file with one JSON object per line,
            - a `.parquet` file,
            - a folder written by `datasets`' `save_to_disk` (a `Dataset`, or a `DatasetDict`: see `split`),
            - a `datasets.Dataset`, a pandas `DataFrame` or a list of dicts,
            - a Hugging Face Hub dataset name, `org/name` or `org/name:split` (needs network access).
        split: the split of a `DatasetDict` folder or Hub dataset (a `:split` suffix on the name wins).
        delimiter: CSV delimiter; default `,` (`\\t` for `.tsv`).

    Returns:
        `(location, row)` pairs: `file:line` for CSV and JSONL, `file:row N` for parquet and datasets,
        `row N` for in-memory rows.

    Raises:
        DataError: the source does not exist, has no rows, or has unreadable lines (all listed).
    """
    problems: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        path = Path(text)
        suffix = path.suffix.lower()
        if path.is_dir():
            import datasets

            rows = _dataset_rows(datasets.load_from_disk(text), text, split)
        elif path.is_file() and suffix in (".csv", ".tsv"):
            rows = _csv_rows(path, delimiter)
        elif path.is_file() and suffix in (".jsonl", ".json"):
            rows, problems = _jsonl_rows(path)
        elif path.is_file() and suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = [
                (f"{text}:row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist(), start=1)
            ]
        elif path.is_file():
            raise DataError(
                [f"{text}: unknown file type {suffix!r} (expected .csv, .tsv, .jsonl, .json or .parquet)"]
            )
        elif is_hf_dataset_name(text):
            rows = _dataset_rows(_load_hf(text, default_split=split), text, split)
        else:
            raise DataError([f"{text}: file not found"])
        name = text
    elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas DataFrame
        rows = [(f"row {i}", row) for i, row in enumerate(source.to_dict(orient="records"), start=1)]
        name = "rows"
    elif hasattr(source, "column_names"):  # datasets.Dataset
        rows = _dataset_rows(source, "dataset", split)
        name = "dataset"
    else:
        rows, name = [], "rows"
        for i, row in enumerate(source, start=1):
            if isinstance(row, Mapping):
                rows.append((f"row {i}", dict(row)))
            else:
                problems.append(f"row {i}: expected a dict of column values, got {type(row).__name__}")
    if problems:
        raise DataError(problems[:MAX_REPORTED], len(problems))
    if not rows:
        raise DataError([f"{name}: no rows"])
    return rows


def _as_record(result: Any) -> dict | None | str:
    """The record a row function returned, None to skip the row, or a problem (str)."""
    if result is None:
        return None
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, (list, tuple)):
        return {"messages": list(result)}
    return f"the row function returned {type(result).__name__}; expected a list of messages, a record dict or None"


def rows_to_chat(
    rows: Iterable[Mapping[str, Any]],
    fn: RowFn,
    *,
    task: str = "instruction_tuning",
    where: Sequence[str] | None = None,
    max_reported: int = MAX_REPORTED,
) -> list[dict]:
    """Apply `fn` to every row and validate each conversation it returns.

    Args:
        rows: dicts of column values.
        fn: `row -> messages` (a list of `{"role", "content"}` dicts), or a whole record
            (`{"messages": [...], "tools": [...]}`), or None to leave the row out.
        task: the task the data is for (`causal_lm` accepts records without an assistant message).
        where: a location per row for error messages (default `row N`).
        max_reported: problems listed in the error before it summarises the rest.

    Returns:
        The records `{"messages": [...]}` (plus `tools` when `fn` returned them), in row order.

    Raises:
        DataError: `fn` raised or returned an invalid conversation for at least one row; lists each as
            `location: problem`, so you can fix your function (or your data) in one go.
    """
    records, problems, total = [], [], 0
    for i, row in enumerate(rows):
        loc = where[i] if where is not None else f"row {i + 1}"
        try:
            record = _as_record(fn(row))
        except Exception as e:  # noqa: BLE001 -- any failure of the user's function is reported with its row
            hint = f" (columns: {', '.join(map(str, row))})" if isinstance(e, KeyError) else ""
            found = [f"the row function raised {type(e).__name__}: {e}{hint}"]
        else:
            if record is None:
                continue
            found = [record] if isinstance(record, str) else validate_record(record, task)
        if found:
            total += len(found)
            problems.extend(f"{loc}: {p}" for p in found[: max(0, max_reported - len(problems))])
            continue
        records.append(record)
    if total:
        raise DataError(problems, total)
    return records


def to_chat(
    source: Any,
    fn: RowFn,
    out: str | os.PathLike,
    *,
    task: str = "instruction_tuning",
    split: str = "train",
    delimiter: str | None = None,
) -> Path:
    """Convert any tabular source (see `read_rows`) into chat JSONL with your row function.

    Nothing is written unless every row converts: the error lists every problem with its `file:line`.

    Returns:
        The path of the JSONL written.

    Raises:
        DataError: unreadable source, or rows whose conversion failed validation.
    """
    located = read_rows(source, split=split, delimiter=delimiter)
    records = rows_to_chat([row for _, row in located], fn, task=task, where=[loc for loc, _ in located])
    if not records:
        raise DataError([f"{source}: the row function skipped every row; nothing to write"])
    return write_jsonl(records, out)


def csv_to_chat(
    path: str | os.PathLike,
    fn: RowFn,
    out: str | os.PathLike,
    *,
    task: str = "instruction_tuning",
    delimiter: str | None = None,
) -> Path:
    """`to_chat` for a CSV or TSV file (a header line, then one row per line; quoted fields may span lines)."""
    if Path(path).suffix.lower() not in (".csv", ".tsv"):
        raise DataError([f"{path}: expected a .csv or .tsv file"])
    return to_chat(path, fn, out, task=task, delimiter=delimiter)


def _text_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files, missing = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _TEXT_SUFFIXES)
            )
        elif p.is_file():
            files.append(p)
        else:
            missing.append(f"{p}: file not found")
    if missing:
        raise DataError(missing)
    if not files:
        raise DataError([f"{', '.join(map(str, items))}: no text files ({', '.join(_TEXT_SUFFIXES)})"])
    return files


def text_to_pretraining(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    unit: str = "paragraph",
    min_chars: int = 1,
) -> Path:
    """Raw text files → JSONL for continued pre-training (task `causal_lm`).

    Each document (or paragraph: text between blank lines) becomes `{"messages": [{"role": "user",
    "content": text}]}`. Train it with `task: causal_lm` and `generation_config.prompt_format: passthrough`,
    so that the text itself is trained, with no chat markup around it. Documents longer than
    `context_length` are truncated by the run (see `overlength`), so prefer paragraphs for long files.

    Args:
        sources: a text file, a folder (its `.txt`, `.md` and `.rst` files, sorted), or a list of them.
        out: the JSONL to write.
        unit: `paragraph` (split on blank lines) or `document` (one record per file).
        min_chars: drop pieces shorter than this (headings, page numbers).

    Returns:
        The path of the JSONL written.

    Raises:
        ValueError: an unknown `unit`.
        DataError: a missing source, or no text left after filtering.
    """
    if unit not in ("paragraph", "document"):
        raise ValueError(f"unit: expected 'paragraph' or 'document', got {unit!r}")
    records = []
    for path in _text_files(sources):
        text = path.read_text(encoding="utf-8").strip()
        pieces = re.split(r"\n\s*\n", text) if unit == "paragraph" else [text]
        for piece in pieces:
            piece = piece.strip()
            if len(piece) >= max(min_chars, 1):
                records.append({"messages": [{"role": "user", "content": piece}]})
    if not records:
        raise DataError([f"{sources}: no text of at least {min_chars} characters"])
    return write_jsonl(records, out)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON Lines file (empty lines skipped); no validation (see `forgekit.data`)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write records as JSON Lines (UTF-8, non-ASCII kept readable); the file appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def split_train_valid(
    path: str | os.PathLike,
    valid_fraction: float = 0.1,
    *,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Shuffle a JSONL file's records (seeded) and write `train.jsonl` and `valid.jsonl`.

    Args:
        path: the JSONL to split.
        valid_fraction: share of records for validation, strictly between 0 and 1 (at least one record each).
        seed: shuffle seed; the same inputs give the same files.
        out_dir: where to write (default: next to `path`).

    Returns:
        `{"train": path, "valid": path}` as strings.

    Raises:
        ValueError: a fraction outside (0, 1), or too few records for both files.
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction: expected a number between 0 and 1, got {valid_fraction!r}")
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    n_valid = max(1, round(len(lines) * valid_fraction))
    if len(lines) - n_valid < 1:
        raise ValueError(f"{path}: {len(lines)} record(s) cannot make both a training and a validation file")
    random.Random(seed).shuffle(lines)
    out = Path(out_dir) if out_dir is not None else Path(path).parent
    paths = {}
    for name, part in (("train", lines[n_valid:]), ("valid", lines[:n_valid])):
        paths[name] = str(write_jsonl([json.loads(line) for line in part], out / f"{name}.jsonl"))
    return paths


def split_jsonl(path: str | Path, out_dir: str | Path, parts: int = 2, *, seed: int | None = 0) -> list[Path]:
    """Split a JSONL file into `parts` files of (nearly) equal size: `part-1.jsonl`, `part-2.jsonl`, ...

    Lines are copied unchanged (empty lines dropped); with `seed`, they are shuffled first (the same seed gives
    the same parts), with `seed=None` the file order is kept (part 1 = the first lines).

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `parts` < 2, or fewer lines than parts.
    """
    path = Path(path)
    if parts < 2:
        raise ValueError(f"parts must be >= 2, got {parts}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < parts:
        raise ValueError(f"{path}: {len(lines)} non-empty line(s), cannot split into {parts} parts")
    if seed is not None:
        random.Random(seed).shuffle(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(parts):
        chunk = lines[i * len(lines) // parts : (i + 1) * len(lines) // parts]
        target = out / f"part-{i + 1}.jsonl"
        target.write_text("".join(f"{line}\n" for line in chunk), encoding="utf-8")
        paths.append(target)
    return paths
