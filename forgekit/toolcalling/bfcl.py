"""Score tool calling on test files in the function-calling benchmark layout (question file + possible answers).

The layout, as the Berkeley Function Calling Leaderboard publishes its single-turn data: a **question file**
(JSON lines, whatever its extension) with one item per line,

    {"id": "simple_0", "question": [[{"role": "user", "content": "..."}]],
     "function": [{"name": "math.factorial", "description": "...",
                   "parameters": {"type": "dict", "properties": {"number": {"type": "integer"}}, "required": ["number"]}}]}

and an **answer file** listing, per item, the calls expected and for each argument the acceptable values
(`""` among them: the argument may be left out):

    {"id": "simple_0", "ground_truth": [{"math.factorial": {"number": [5]}}]}

Parameter types are the benchmark's (`dict`, `float`, `tuple`, `any` beside JSON schema's); they are
rewritten as JSON schema for the tool list. An item without an answer (irrelevance data ships none, or no
answer file is given) expects no call.

The AST rule (`match_call`): the function name is equal; every required argument is present; every argument
given is one the answer lists, with a value among its acceptable ones; an argument left out is acceptable
only when `""` is among its values. Values are compared after `evaluate.normalise` (`1 == 1.0 == "1"`,
`"true" == true`), strings also case-insensitively; a list must match one acceptable list element by element;
a nested object, given as `{key: [acceptable values]}`, is matched key by key with the same rule. Several
expected calls (parallel items) match the calls made one to one, in any order. Outcomes are evaluate's:
`correct`, `malformed_call`, `wrong_function` (other functions or another number of calls),
`wrong_arguments`, `missed_call`, `spurious_call` (a call where none is expected).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from forgekit.toolcalling.evaluate import normalise, summarise
from forgekit.toolcalling.render import parse_tool_calls

__all__ = ["AST_RULE", "evaluate_bfcl", "is_bfcl", "match_call", "read_bfcl", "score_bfcl", "to_json_schema"]

AST_RULE = (
    "AST match: function name equal, required arguments present, each value among the acceptable ones "
    "(normalised, strings case-insensitive), optional arguments absent (\"\" acceptable) or acceptable; "
    "expected calls matched one to one in any order"
)
_TYPES = {"dict": "object", "float": "number", "tuple": "array"}


def _lines(path: str | Path) -> list[tuple[str, dict]]:
    """`(file:line, object)` for each line of a JSON-lines file.

    Raises:
        forgekit.data.DataError: every line that is not a JSON object.
    """
    from forgekit.convert import _jsonl_rows
    from forgekit.data import DataError

    rows, problems = _jsonl_rows(Path(path))
    if problems:
        raise DataError(problems)
    return rows


def is_bfcl(path: str | Path) -> bool:
    """Whether `path` is a local question file in the benchmark layout (its first item has `question` and
    `function`)."""
    local = Path(str(path).removeprefix("file://"))
    if not local.is_file():
        return False
    with local.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(first, dict) and "question" in first and "function" in first
    return False


def to_json_schema(schema: Any) -> Any:
    """A benchmark parameter schema as JSON schema (`dict` → `object`, `float` → `number`, `tuple` → `array`,
    `any` → no type), recursively."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: to_json_schema(v) if k in ("properties", "items", "anyOf", "oneOf") else v for k, v in schema.items()}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items()}
    kind = out.get("type")
    if kind == "any":
        out.pop("type")
    elif isinstance(kind, str):
        out["type"] = _TYPES.get(kind, kind)
    return out


def read_bfcl(question_path: str | Path, answer_path: str | Path | None = None) -> list[dict]:
    """The items of a question file with their expected calls.

    Args:
        question_path: JSON lines of `{"id", "question": [[message, ...], ...], "function": [spec, ...]}`.
        answer_path: JSON lines of `{"id", "ground_truth": [{name: {argument: [acceptable values]}}]}`;
            None: every item expects no call.

    Returns:
        `{"id", "messages", "tools" (OpenAI tool specs), "functions" (the specs as given), "ground_truth"}`
        dicts, in file order; `ground_truth` is `[]` where no call is expected.

    Raises:
        forgekit.data.DataError: every problem found, as file:line (bad JSON, missing fields, answers for
            unknown items).
    """
    from forgekit.data import DataError

    problems: list[str] = []
    answers: dict[str, list] = {}
    if answer_path is not None:
        for where, row in _lines(answer_path):
            truth = row.get("ground_truth")
            if "id" not in row or not isinstance(truth, list) or not all(
                    isinstance(c, dict) and len(c) == 1 and all(isinstance(a, dict) for a in c.values()) for c in truth):
                problems.append(f"{where}: expected {{'id', 'ground_truth': [{{name: {{argument: "
                                "[acceptable values]}}}}]}}")
                continue
            answers[str(row["id"])] = truth
    items = []
    for where, row in _lines(question_path):
        question, functions = row.get("question"), row.get("function")
        if isinstance(functions, dict):
            functions = [functions]
        if "id" not in row or not isinstance(question, list) or not isinstance(functions, list):
            problems.append(f"{where}: expected {{'id', 'question': [[messages]], 'function': [...]}}")
            continue
        turns = [question] if question and isinstance(question[0], dict) else question
        if len(turns) != 1:
            problems.append(f"{where}: {len(turns)} question turns; only single-turn items "
                            "(one turn of messages) can be scored")
            continue
        messages = turns[0]
        if not messages or not all(isinstance(m, dict) and m.get("role") and "content" in m for m in messages):
            problems.append(f"{where}: a question message needs 'role' and 'content'")
            continue
        if not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions):
            problems.append(f"{where}: every function needs a 'name'")
            continue
        tools = [{"type": "function", "function": {**f, "parameters": to_json_schema(f.get("parameters") or {})}}
                 for f in functions]
        items.append({"id": str(row["id"]), "messages": messages, "tools": tools, "functions": functions,
                      "ground_truth": answers.pop(str(row["id"]), [])})
    problems += [f"{answer_path}: answer for unknown id {i!r}" for i in answers]
    if problems:
        raise DataError(problems)
    return items


def _same(value: Any, acceptable: Any) -> bool:
    if isinstance(acceptable, dict) and isinstance(value, dict) and all(isinstance(v, list) for v in acceptable.values()):
        return _arguments_match(value, acceptable, required=()) is None
    a, b = normalise(value), normalise(acceptable)
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(value, acceptable))
    return a == b


def _arguments_match(args: dict, accepted: dict, required: tuple | list) -> str | None:
    for name in required:
        if name not in args:
            return f"required argument {name!r} missing"
    for name, value in args.items():
        if name not in accepted:
            return f"unexpected argument {name!r}"
        if value is None and "" in accepted[name]:
            continue
        if not any(_same(value, ok) for ok in accepted[name] if ok != ""):
            return f"argument {name!r}: {json.dumps(value, ensure_ascii=False)} is not among {accepted[name]!r}"
    for name, values in accepted.items():
        if name not in args and "" not in values:
            return f"argument {name!r} missing"
    return None


def match_call(call: dict, expected: dict, functions: list[dict]) -> str | None:
    """Why `call` does not match one expected call, or None when it does (the AST rule).

    Args:
        call: `{"name", "arguments"}` as parsed from the generation.
        expected: `{name: {argument: [acceptable values]}}`, one entry of `ground_truth`.
        functions: the item's function specs (for the required arguments).
    """
    (name, accepted), = expected.items()
    if call["name"] != name:
        return f"function {call['name']!r} instead of {name!r}"
    spec = next((f for f in functions if f.get("name") == name), {})
    required = (spec.get("parameters") or {}).get("required") or ()
    return _arguments_match(call["arguments"], accepted, required)


def score_bfcl(item: dict, text: str) -> tuple[str, list[dict] | None, str | None]:
    """Score one generation against an item's `ground_truth`.

    Returns:
        `(outcome, parsed calls, reason)`: an outcome of `evaluate.OUTCOMES`, and for a failure why.
    """
    calls, error = parse_tool_calls(text)
    truth = item["ground_truth"]
    if not truth:
        if calls or error:
            return "spurious_call", calls, error or "a call where none is expected"
        return "correct", None, None
    if error:
        return "malformed_call", None, error
    if not calls:
        return "missed_call", None, "no call"
    if sorted(c["name"] for c in calls) != sorted(next(iter(e)) for e in truth):
        return "wrong_function", calls, f"called {[c['name'] for c in calls]}, expected {[next(iter(e)) for e in truth]}"
    first_reason = None
    for order in itertools.permutations(range(len(calls))):
        reasons = [match_call(calls[i], e, item["functions"]) for i, e in zip(order, truth)]
        if not any(reasons):
            return "correct", calls, None
        first_reason = first_reason or next(r for r in reasons if r)
    return "wrong_arguments", calls, first_reason


def _canonical(truth: list[dict]) -> list[dict] | None:
    """The expected calls with each argument's first acceptable value (for display), None for no call."""
    if not truth:
        return None
    out = []
    for entry in truth:
        (name, accepted), = entry.items()
        out.append({"name": name, "arguments": {k: next(v for v in vals if v != "") for k, vals in accepted.items()
                                                if any(v != "" for v in vals)}})
    return out


def evaluate_bfcl(
    model_or_path: Any,
    question_path: str | Path,
    answer_path: str | Path | None = None,
    *,
    tokenizer: Any = None,
    limit: int | None = None,
    max_new_tokens: int = 192,
    batch_size: int = 16,
    num_threads: int | None = None,
    predictions_path: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Generate one answer per item of a benchmark-layout question file and score it by the AST rule.

    Args:
        model_or_path: as for `evaluate.evaluate_tool_calling`.
        question_path: the question file.
        answer_path: its answer file (None: every item expects no call, as irrelevance data does).
        tokenizer: the tokenizer for a loaded model.
        limit: score only the first `limit` items.
        max_new_tokens: new tokens per item (a text answer stops after `evaluate.CALL_START_TOKENS`).
        batch_size: items generated together.
        num_threads: CPU threads while generating; None: unchanged.
        predictions_path: write one JSON line per item (id, generation, outcome, reason) here.
        progress: a bar over the items generated (None: in a terminal or notebook, or with
            FORGEKIT_PROGRESS=1; `forgekit.progress.progress_enabled`).

    Returns:
        `evaluate.summarise(...)` of the items (each item is one turn and one conversation; categories:
        `single`, `parallel` for several expected calls, `no_call`), plus `rule`, `format` and `seconds`.
    """
    import time

    from forgekit.generate import generate, load_for_generation
    from forgekit.toolcalling.evaluate import no_call_started

    start = time.perf_counter()
    items = read_bfcl(question_path, answer_path)[:limit] if limit else read_bfcl(question_path, answer_path)
    if isinstance(model_or_path, (str, Path)):
        model_or_path = load_for_generation(model_or_path)
    model, tok = model_or_path if isinstance(model_or_path, tuple) else (model_or_path, tokenizer)
    if tok is None:
        raise ValueError("evaluate_bfcl: a loaded model needs its tokenizer (tokenizer=...)")
    texts = generate(model, [i["messages"] for i in items], [i["tools"] for i in items], tokenizer=tok,
                     max_new_tokens=max_new_tokens, stop_when=no_call_started, batch_size=batch_size,
                     num_threads=num_threads, progress=progress)
    rows = []
    for n, (item, text) in enumerate(zip(items, texts)):
        outcome, calls, reason = score_bfcl(item, text)
        truth = item["ground_truth"]
        rows.append({"conversation": n, "turn": len(item["messages"]), "id": item["id"],
                     "category": "no_call" if not truth else ("parallel" if len(truth) > 1 else "single"),
                     "held_out": None, "gold_calls": _canonical(truth), "ground_truth": truth, "generated": text,
                     "predicted_calls": calls, "outcome": outcome, "reason": reason})
    if predictions_path:
        Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
        Path(predictions_path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = summarise(rows)
    report.update({"format": "bfcl", "rule": AST_RULE, "answers": str(answer_path) if answer_path else None,
                   "seconds": round(time.perf_counter() - start, 1)})
    return report
