"""Converters into forgekit's tool-calling JSONL: Glaive function-calling v2, and OpenAI chat logs.

Both produce `{"messages": [...], "tools": [...]}` records in the OpenAI format (assistant `tool_calls` with
JSON-text arguments and ids, `tool` messages answering them), ready for `forgekit finetune` and
`forgekit eval-tools`. Rows that cannot be converted are skipped and reported as `row N: problem`, since
public dumps always hold a few broken rows; the caller decides whether any problem is fatal.

* **Glaive v2** (`glaiveai/glaive-function-calling-v2`): a `system` text ("SYSTEM: ... Use them if
  required -" followed by JSON function specs) and a `chat` text of `USER:`, `ASSISTANT:` (a call is
  `<functioncall> {"name": ..., "arguments": '{...}'}`, with the arguments quoted in single quotes) and
  `FUNCTION RESPONSE:` turns, each assistant turn ending with `<|endoftext|>`.
* **OpenAI chat logs**: a record with `messages` (and `tools`), or a logged API call `{"request": {"messages",
  "tools"}, "response": {"choices": [{"message": ...}]}}`; the legacy `functions` / `function_call` /
  `function`-role fields are rewritten as `tools` / `tool_calls` / `tool`, `developer` becomes `system`. Logs
  of a growing conversation hold each prefix again; `dedupe_prefixes` keeps only the longest.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from forgekit.convert import write_jsonl

__all__ = [
    "convert_glaive",
    "convert_openai_logs",
    "glaive_record",
    "openai_log_record",
    "read_records",
    "split_records",
    "write_splits",
]

_GLAIVE_TURN = re.compile(r"(?:^|\n)\s*(USER|ASSISTANT|FUNCTION RESPONSE):\s?")
_GLAIVE_ARGS = re.compile(r"""("arguments"\s*:\s*)'(.*)'(\s*\}\s*)$""", re.DOTALL)
_DECODER = json.JSONDecoder()


class ConversionError(ValueError):
    """One row cannot be converted."""


def _json_objects(text: str) -> list[Any]:
    """Consecutive JSON values in `text` (separated by whitespace)."""
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        value, i = _DECODER.raw_decode(text, i)
        out.append(value)


def _glaive_tools(system: str) -> tuple[str | None, list[dict]]:
    text = re.sub(r"^\s*SYSTEM:\s*", "", system or "")
    brace = text.find("{")
    if brace < 0:
        return (text.strip() or None), []
    try:
        specs = _json_objects(text[brace:])
    except json.JSONDecodeError as e:
        raise ConversionError(f"system: function specs are not valid JSON ({e.msg})") from None
    preamble = text[:brace].strip().rstrip("-").strip()
    if "following functions" in preamble:  # Glaive's stock preamble: the tool format has its own
        preamble = ""
    tools = []
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConversionError("system: a function spec without a name")
        tools.append({"type": "function", "function": spec})
    return preamble or None, tools


def _glaive_call(text: str) -> dict:
    body = text.strip()
    quoted = _GLAIVE_ARGS.search(body)
    if quoted:  # '{"a": 1}' → {"a": 1}
        body = body[: quoted.start()] + quoted.group(1) + quoted.group(2) + quoted.group(3)
    try:
        call, _ = _DECODER.raw_decode(body)
    except json.JSONDecodeError as e:
        raise ConversionError(f"<functioncall> is not valid JSON ({e.msg})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ConversionError("<functioncall> without a function name")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ConversionError("<functioncall> arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise ConversionError("<functioncall> arguments are not a JSON object")
    return {"name": call["name"], "arguments": args}


def glaive_record(system: str, chat: str) -> dict:
    """One Glaive v2 row as an OpenAI-format record.

    Raises:
        ConversionError: the row cannot be parsed (the message says where).
    """
    preamble, tools = _glaive_tools(system)
    messages: list[dict] = [{"role": "system", "content": preamble}] if preamble else []
    parts = _GLAIVE_TURN.split(chat or "")
    if len(parts) < 3:
        raise ConversionError("chat: no USER:/ASSISTANT: turns")
    pending: list[str] = []
    n_calls = 0
    for role, text in zip(parts[1::2], parts[2::2]):
        text = text.replace("<|endoftext|>", "").strip()
        if role == "USER":
            messages.append({"role": "user", "content": text})
        elif role == "FUNCTION RESPONSE":
            if not pending:
                raise ConversionError("chat: FUNCTION RESPONSE without a preceding <functioncall>")
            messages.append({"role": "tool", "tool_call_id": pending.pop(0), "content": text})
        elif "<functioncall>" in text:
            before, after = text.split("<functioncall>", 1)
            call = _glaive_call(after)
            call_id = f"call_{n_calls}"
            n_calls += 1
            pending = [call_id]
            messages.append({"role": "assistant", "content": before.strip() or None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]})
        else:
            pending = []
            messages.append({"role": "assistant", "content": text})
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversionError("chat: no ASSISTANT turn")
    if any(m["role"] in ("user", "assistant") and m.get("content") == "" for m in messages):
        raise ConversionError("chat: an empty turn")
    return {"messages": messages, "tools": tools}


def convert_glaive(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Convert Glaive v2 rows (`{"system": ..., "chat": ...}`).

    Returns:
        `(records, problems)`: the converted records and one `row N: problem` per skipped row (N from 1).
    """
    records, problems = [], []
    for n, row in enumerate(rows, start=1):
        try:
            records.append(glaive_record(row.get("system", ""), row.get("chat", "")))
        except ConversionError as e:
            problems.append(f"row {n}: {e}")
    return records, problems


def _legacy_tools(functions: list) -> list[dict]:
    return [{"type": "function", "function": f} for f in functions]


def _openai_message(m: dict, state: dict) -> dict:
    role = m.get("role")
    if role == "developer":
        role = "system"
    out: dict[str, Any] = {"role": role, "content": m.get("content")}
    if isinstance(out["content"], list):  # content parts: keep the text ones
        out["content"] = "".join(p.get("text", "") for p in out["content"] if isinstance(p, dict))
    if role == "assistant":
        calls = m.get("tool_calls")
        if not calls and m.get("function_call"):
            calls = [{"type": "function", "function": m["function_call"]}]
        if calls:
            fixed = []
            for c in calls:
                fn = dict(c.get("function") or {})
                if not isinstance(fn.get("arguments", ""), str):
                    fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
                call_id = c.get("id") or f"call_{state['n']}"
                state["n"] += 1
                state["ids"][fn.get("name")] = call_id
                fixed.append({"id": call_id, "type": "function", "function": fn})
            out["tool_calls"] = fixed
            out["content"] = out["content"] or None
    elif role == "function":  # legacy result: matched to the last call of that name
        out = {"role": "tool", "tool_call_id": state["ids"].get(m.get("name"), ""), "content": m.get("content")}
    elif role == "tool":
        out["tool_call_id"] = m.get("tool_call_id", "")
    return out


def openai_log_record(row: dict) -> dict:
    """One OpenAI chat log row (`messages` or a logged request/response pair) as a record.

    Raises:
        ConversionError: the row has neither `messages` nor `request.messages`.
    """
    if "request" in row:
        req = row["request"] or {}
        messages = list(req.get("messages") or [])
        choices = (row.get("response") or {}).get("choices") or []
        if choices and choices[0].get("message"):
            messages.append(choices[0]["message"])
        tools = req.get("tools") or (_legacy_tools(req["functions"]) if req.get("functions") else None)
    else:
        messages = list(row.get("messages") or [])
        tools = row.get("tools") or (_legacy_tools(row["functions"]) if row.get("functions") else None)
    if not messages:
        raise ConversionError("no messages (expected 'messages' or 'request.messages')")
    state: dict = {"n": 0, "ids": {}}
    record: dict[str, Any] = {"messages": [_openai_message(m, state) for m in messages if isinstance(m, dict)]}
    if tools:
        record["tools"] = tools
    return record


def _is_prefix(short: list[dict], long: list[dict]) -> bool:
    return len(short) < len(long) and long[: len(short)] == short


def convert_openai_logs(rows: list[dict], dedupe_prefixes: bool = True) -> tuple[list[dict], list[str]]:
    """Convert OpenAI chat log rows.

    Args:
        rows: parsed log lines.
        dedupe_prefixes: drop a conversation whose messages (with the same tools) are the start of another's.

    Returns:
        `(records, problems)` as for `convert_glaive`.
    """
    records, problems = [], []
    for n, row in enumerate(rows, start=1):
        try:
            records.append(openai_log_record(row))
        except ConversionError as e:
            problems.append(f"row {n}: {e}")
    if dedupe_prefixes:
        by_tools: dict[str, list[dict]] = {}
        for r in records:
            by_tools.setdefault(json.dumps(r.get("tools"), sort_keys=True), []).append(r)
        keep = []
        for r in records:
            group = by_tools[json.dumps(r.get("tools"), sort_keys=True)]
            if not any(_is_prefix(r["messages"], other["messages"]) for other in group):
                keep.append(r)
        records = [r for i, r in enumerate(keep) if r not in keep[:i]]  # exact duplicates too
    return records, problems


def read_records(path: str) -> list[dict]:
    """Rows of a JSONL or JSON (a list) file, or of a Hugging Face dataset (`org/name[:split]`)."""
    local = Path(path)
    if local.is_file():
        text = local.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    import datasets

    name, _, split = path.partition(":")
    return [dict(r) for r in datasets.load_dataset(name, split=split or "train")]


def split_records(records: list[dict], valid: int, test: int, seed: int = 0) -> dict[str, list[dict]]:
    """Shuffle (seeded) and split into `train`, `valid` (`valid` records) and `test` (`test` records)."""
    rows = list(records)
    random.Random(seed).shuffle(rows)
    if valid + test >= len(rows):
        raise ValueError(f"{len(rows)} records cannot give {valid} valid + {test} test and leave some to train")
    return {"test": rows[:test], "valid": rows[test : test + valid], "train": rows[test + valid :]}


GLAIVE_DATASET = "glaiveai/glaive-function-calling-v2"


def write_splits(
    source: str,
    out_dir: str | Path,
    n_train: int | None = None,
    n_valid: int = 100,
    n_test: int = 200,
    seed: int = 0,
    input_path: str | None = None,
) -> tuple[dict[str, Path], list[str]]:
    """Write `train.jsonl`, `valid.jsonl` and `test.jsonl` under `out_dir` from one source.

    Args:
        source: `synthetic` (forgekit's generator, held-out tools in test), `glaive` (Glaive v2; `input_path`
            defaults to the Hugging Face dataset, which needs network access) or `openai-logs`.
        out_dir: where the three files go.
        n_train: training conversations (synthetic: default 1000; converted: at most this many).
        n_valid: validation conversations.
        n_test: test conversations.
        seed: generator seed / shuffle seed.
        input_path: the rows to convert (a JSON(L) file or a Hugging Face dataset name).

    Returns:
        `({"train": path, "valid": path, "test": path}, problems)`, problems being the rows that were skipped.
    """
    out = Path(out_dir)
    if source == "synthetic":
        from forgekit.examples.toolcalling_data import write_tool_calling_dataset

        n = 1000 if n_train is None else n_train
        return write_tool_calling_dataset(out, n, n_valid, n_test, seed=seed), []
    if source not in ("glaive", "openai-logs"):
        raise ValueError(f"source: unknown '{source}'; expected synthetic, glaive or openai-logs")
    if source == "openai-logs" and not input_path:
        raise ValueError("source openai-logs needs input_path (a JSONL of chat logs)")
    rows = read_records(input_path or GLAIVE_DATASET)
    records, problems = convert_glaive(rows) if source == "glaive" else convert_openai_logs(rows)
    splits = split_records(records, n_valid, n_test, seed=seed)
    if n_train is not None:
        splits["train"] = splits["train"][:n_train]
    return {k: write_jsonl(splits[k], out / f"{k}.jsonl") for k in ("train", "valid", "test")}, problems
