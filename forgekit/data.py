"""Reading chat data: OpenAI-format JSONL from local or remote paths, every line validated, one report.

A record is `{"messages": [{"role": ..., "content": ...}, ...]}`, optionally with `"tools"` (OpenAI function
specs); assistant messages may carry `tool_calls`, and `tool` messages carry their results. Paths may be
local, `file://`, any fsspec URL (`s3://`, `gs://`, `hf://`, `http(s)://`), or a Hugging Face datasets name
(`org/name` or `org/name:split`). Problems are collected for the whole file and raised once as
`DataError`, each as `file:line: problem`, so nothing trains on a half-broken file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgekit.errors import ForgekitError

__all__ = ["MAX_REPORTED", "DataError", "Example", "data_fingerprint", "is_hf_dataset_name", "read_examples", "validate_record"]

ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 50  # problems listed before the report says "... and N more"
_HF_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


class DataError(ForgekitError):
    """A data file has problems; `problems` lists them as `file:line: problem`."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.total = total if total is not None else len(problems)
        super().__init__(problems)

    def render(self) -> str:
        lines = [f"{self.total} problem(s) in the data; nothing was trained:"] + [f"  {p}" for p in self.problems]
        if self.total > len(self.problems):
            lines.append(f"  ... and {self.total - len(self.problems)} more")
        return "\n".join(lines)

    def as_problems(self) -> list[str]:
        """The problems as lines of a config report (a ConfigError's), with how many were left out."""
        more = self.total - len(self.problems)
        return self.problems + ([f"... and {more} more data problems"] if more > 0 else [])


@dataclass(frozen=True)
class Example:
    """One validated record and where it came from (for error messages)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    source: str
    line: int


def _content_problem(msg: dict, i: int) -> str | None:
    role = msg.get("role")
    content = msg.get("content")
    if role == "assistant" and msg.get("tool_calls"):
        calls = msg["tool_calls"]
        if not isinstance(calls, list):
            return f"messages[{i}].tool_calls: expected a list"
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn.get("name"):
                return f"messages[{i}].tool_calls[{j}]: expected {{'function': {{'name': ..., 'arguments': ...}}}}"
            args = fn.get("arguments", "{}")
            if isinstance(args, str):
                try:
                    json.loads(args or "{}")
                except json.JSONDecodeError:
                    return f"messages[{i}].tool_calls[{j}].function.arguments: not valid JSON"
        if content is not None and not isinstance(content, str):
            return f"messages[{i}].content: expected a string or null"
        return None
    if content is None:
        return f"messages[{i}] ({role}): missing content"
    if not isinstance(content, str):
        return f"messages[{i}] ({role}): content must be a string, got {type(content).__name__}"
    if not content.strip():
        return f"messages[{i}] ({role}): empty content"
    return None


def validate_record(record: Any, task: str = "instruction_tuning") -> list[str]:
    """Problems with one record (empty list = valid).

    Args:
        record: the parsed JSON value of one line.
        task: the config's task; `causal_lm` accepts records without an assistant message.
    """
    if not isinstance(record, dict):
        return [f"expected a JSON object with 'messages', got {type(record).__name__}"]
    if "messages" not in record:
        keys = ", ".join(sorted(record)[:5])
        return [f"missing 'messages' (keys found: {keys or 'none'})"]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    problems: list[str] = []
    seen_user = seen_assistant = False
    open_calls = False
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            problems.append(f"messages[{i}]: expected an object with role and content")
            continue
        role = msg.get("role")
        if role not in ROLES:
            problems.append(f"messages[{i}]: unknown role {role!r} (expected one of {', '.join(ROLES)})")
            continue
        p = _content_problem(msg, i)
        if p:
            problems.append(p)
        if "weight" in msg:  # OpenAI's and LLMForge's per-turn switch: 0 = this assistant turn is not trained
            if role != "assistant":
                problems.append(f"messages[{i}].weight: only assistant messages take a weight (0 or 1)")
            elif msg["weight"] not in (0, 1):
                problems.append(f"messages[{i}].weight: expected 0 (not trained) or 1 (trained), got {msg['weight']!r}")
            elif task == "causal_lm":
                problems.append(f"messages[{i}].weight: task causal_lm trains every token; weights need "
                                "task: instruction_tuning")
        if role == "system" and i != 0:
            problems.append(f"messages[{i}]: a system message must come first")
        elif role == "user":
            seen_user = True
        elif role == "assistant":
            if not seen_user:
                problems.append(f"messages[{i}]: assistant message before any user message")
            seen_assistant = True
            open_calls = bool(msg.get("tool_calls"))
        elif role == "tool" and not open_calls:
            problems.append(f"messages[{i}]: tool message without a preceding assistant tool_calls")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        problems.append("'tools' must be a list of function specs")
    if not seen_user and task != "causal_lm":
        problems.append("no user message")
    if not seen_assistant and task in ("instruction_tuning", "classification"):
        problems.append("no assistant message (nothing to train on for this task)")
    assistants = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if task == "classification" and assistants and assistants[-1].get("weight", 1) == 0:
        problems.append("the last assistant message is the label: weight 0 would leave nothing to train")
    elif seen_assistant and task == "instruction_tuning" and all(m.get("weight", 1) == 0 for m in assistants):
        problems.append("every assistant message has weight 0: nothing to train in this record")
    return problems


_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".gz")


def is_hf_dataset_name(path: str) -> bool:
    """`org/name` or `org/name:split` that is no local path; `dir/train.jsonl` is a (missing) file, not a name."""
    if "://" in path or Path(path.split(":")[0]).exists() or path.split(":")[0].lower().endswith(_FILE_SUFFIXES):
        return False
    return bool(_HF_NAME.match(path))


def _load_hf(name: str, default_split: str = "train") -> Any:
    """A Hugging Face dataset split (`org/name:split`, else `default_split`); DataError when it cannot be loaded."""
    import datasets

    repo, _, split = name.partition(":")
    try:
        return datasets.load_dataset(repo, split=split or default_split)
    except Exception as e:  # noqa: BLE001 - offline, no such dataset, no such split, gated: one message
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError([f"{name}: not a local file, and the Hugging Face dataset cannot be loaded: {first}"]) from None


def _read_text(path: str) -> str:
    """The file's text, from a local path or any fsspec URL."""
    from forgekit import storage

    if storage.is_remote(path):
        try:  # s3://, gs://, hf://, http(s)://: a missing backend, credentials or bucket is one message
            return storage.read_text(path)
        except storage.StorageError as e:
            raise DataError(e.problems) from None
    local = Path(path.removeprefix("file://")).expanduser()
    if not local.exists():
        hint = ""
        if "data/generated/" in local.as_posix():  # the shipped samples, written by scripts/make_sample_data.py
            hint = " (the project's sample data: run `make data` in the repository root to write it)"
        raise DataError([f"{path}: file not found{hint}"])
    if local.is_dir():
        raise DataError([f"{path}: a directory, not a data file (point it at a .jsonl file inside)"])
    try:
        raw = local.read_bytes()
    except OSError as e:  # unreadable: permissions, a broken mount
        raise DataError([f"{path}: cannot read: {e.strerror or e}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from forgekit.errors import utf8_problem

        raise DataError([f"{path}:{utf8_problem(raw, e)}"]) from None


def _hf_records(name: str) -> list[Any]:
    return [dict(row) for row in _load_hf(name)]


def data_fingerprint(path: str) -> str:
    """A content hash of the data at `path` (for the tokenization cache key)."""
    if is_hf_dataset_name(path):
        return _load_hf(path)._fingerprint
    return hashlib.sha256(_read_text(path).encode()).hexdigest()


def _parse_lines(lines: list[tuple[int, str]]) -> Any:
    """(line number, record or None, parse problem or None) of each numbered JSONL line."""
    for lineno, line in lines:
        try:
            yield lineno, json.loads(line), None
        except json.JSONDecodeError as e:
            yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"


def read_examples(path: str, task: str = "instruction_tuning", max_reported: int = MAX_REPORTED) -> list[Example]:
    """Read and validate every record of a chat dataset, with a bar over the records where bars show
    (`forgekit.progress`).

    Args:
        path: local path, file:// or fsspec URL of a JSONL file, or a HF datasets name (`org/name[:split]`).
        task: the config's task (changes which records are complete).
        max_reported: problems listed in the error before it summarises the rest.

    Raises:
        DataError: at least one line is invalid; lists each as `file:line: problem`.
    """
    from forgekit.progress import progress_bar

    problems: list[str] = []
    total = 0
    examples: list[Example] = []
    if is_hf_dataset_name(path):
        records = _hf_records(path)
        rows: Any = ((i + 1, rec, None) for i, rec in enumerate(records))
        count, unit = len(records), "row"
    else:
        lines = [(n, line) for n, line in enumerate(_read_text(path).splitlines(), start=1) if line.strip()]
        rows, count, unit = _parse_lines(lines), len(lines), None
    bar = progress_bar(count, f"reading {path.rstrip('/').rsplit('/', 1)[-1]}", "record")
    for lineno, record, parse_problem in rows:
        bar.update(1)
        found = [parse_problem] if parse_problem else validate_record(record, task)
        if found:
            total += len(found)
            where = f"{path}:{unit + ' ' if unit else ''}{lineno}"
            problems.extend(f"{where}: {p}" for p in found[: max(0, max_reported - len(problems))])
            continue
        examples.append(Example(record["messages"], record.get("tools"), path, lineno))
    bar.close()
    if problems or total:
        raise DataError(problems[:max_reported], total)
    if not examples:
        raise DataError([f"{path}: no records"])
    return examples
