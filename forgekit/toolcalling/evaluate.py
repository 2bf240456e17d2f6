"""Exact-match evaluation of tool calling: replay each test conversation turn by turn and score every answer.

For every assistant turn of every conversation, the model generates from the gold history before it (the
real tool results included, never its own earlier mistakes), the tool calls are parsed out of the text
(`forgekit.toolcalling.render.parse_tool_calls`), and the turn is scored:

* gold calls tools → correct when the calls match as a multiset: same function names, and arguments equal
  after type normalisation (1 == 1.0 == "1", true == "true", key order ignored, null-valued arguments
  dropped); strings must match exactly (case included), so an enum or a date in the wrong form is wrong;
* gold answers in text → correct when no call is made.

Each turn may generate what it needs and no more: the gold calls' length plus slack for call turns
(`turn_budgets`), and a generation that has not started a call within its first 32 tokens is a text answer
(`no_call_started`), so models that answer at length (base models do) are not decoded to the limit. Text
turns get the full `max_new_tokens`: a text answer still stops after 32 tokens, but a call started there is
written out, so the predictions show what was called.

Each failure gets one outcome: `malformed_call` (a call turn whose call cannot be parsed), `wrong_function`,
`wrong_arguments`, `missed_call` or `spurious_call` (a text turn where the model calls, or starts a call that
cannot be parsed: it still chose to call).

The headline, `exact_match`, is **turn-level**: the share of assistant turns scored correct (the measure of
LLMForge's function-calling example). `conversation_exact_match` (every turn of a conversation right) is
stricter and reported beside it, and `no_call_accuracy` is the share of turns of `no_call` conversations
(no offered tool applies) where the model rightly did not call. Beside the headline always stands
`call_turn_exact_match` (the turns whose gold answer calls tools) and `never_call_score`, the headline a model
that never calls would get (the share of text turns: 0.44 on forgekit's synthetic test split). `measures`
holds the separate measures (`MEASURES`): seen tools in new requests and held-out tools (forgekit's synthetic
test split, from `metadata.held_out`), parallel, single and multi-turn conversations, and no-call; each with
its turn-level, call-turn and conversation-level exact match (`summarise`).

Works on any JSONL in the OpenAI tool-calling format (`messages` + `tools`), not only the generated one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgekit.toolcalling.render import call_arguments, format_calls, parse_tool_calls

__all__ = [
    "CATEGORIES",
    "HEADLINE",
    "MEASURES",
    "OUTCOMES",
    "Turn",
    "conversation_category",
    "evaluate_tool_calling",
    "no_call_started",
    "normalise",
    "replay_turns",
    "score_turn",
    "summarise",
    "turn_budgets",
]

CATEGORIES = ("single", "parallel", "multi_turn", "no_call")
MEASURES = ("seen_tools", "held_out_tools", "parallel", "single", "multi_turn", "no_call")
OUTCOMES = ("correct", "malformed_call", "wrong_function", "wrong_arguments", "missed_call", "spurious_call")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass(frozen=True)
class Turn:
    """One assistant turn to replay: the history before it and what the gold answer did."""

    conversation: int
    index: int  # position of the assistant message in the conversation
    messages: list[dict]
    tools: list | None
    gold_calls: list[dict] | None  # [{"name", "arguments"}], or None for a text answer
    category: str
    held_out: bool | None


def conversation_category(messages: list[dict]) -> str:
    """`no_call` (no assistant turn calls a tool), `multi_turn` (several user turns, some call), `parallel`
    (one turn makes several calls) or `single`."""
    calls = [m["tool_calls"] for m in messages if m.get("role") == "assistant" and m.get("tool_calls")]
    if not calls:
        return "no_call"
    if sum(m.get("role") == "user" for m in messages) > 1:
        return "multi_turn"
    return "parallel" if any(len(c) > 1 for c in calls) else "single"


def _gold_calls(message: dict) -> list[dict] | None:
    if not message.get("tool_calls"):
        return None
    return [{"name": c.get("function", c)["name"], "arguments": call_arguments(c)} for c in message["tool_calls"]]


def replay_turns(records: list[dict]) -> list[Turn]:
    """Every assistant turn of every conversation, with the gold history before it.

    Args:
        records: `{"messages": [...], "tools": [...], "metadata": {...}?}` dicts.
    """
    turns = []
    for c, rec in enumerate(records):
        messages = rec["messages"]
        category = conversation_category(messages)
        held_out = (rec.get("metadata") or {}).get("held_out")
        for i, m in enumerate(messages):
            if m.get("role") == "assistant" and i > 0:
                turns.append(Turn(c, i, messages[:i], rec.get("tools"), _gold_calls(m), category, held_out))
    return turns


def normalise(value: Any) -> Any:
    """A JSON value with types normalised for comparison: numbers (and numeric strings) → float, "true" /
    "false" → bool, strings stripped, dict keys unordered, null-valued keys dropped."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        s = value.strip()
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        return float(s) if _NUMBER.match(s) else s
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _key(call: dict) -> str:
    return json.dumps({"name": call["name"], "arguments": normalise(call["arguments"])}, sort_keys=True)


def score_turn(gold_calls: list[dict] | None, text: str) -> tuple[str, list[dict] | None, str | None]:
    """Score one generated turn.

    Args:
        gold_calls: the gold `[{"name", "arguments"}]`, or None when the gold turn answers in text.
        text: the generated text.

    Returns:
        `(outcome, predicted_calls, parse_error)`; outcome is one of `OUTCOMES`.
    """
    calls, error = parse_tool_calls(text)
    if gold_calls is None:  # any attempt to call, readable or not, is the wrong decision
        return ("spurious_call" if calls or error else "correct"), calls, error
    if error:
        return "malformed_call", None, error
    if not calls:
        return "missed_call", None, None
    if Counter(c["name"] for c in calls) != Counter(c["name"] for c in gold_calls):
        return "wrong_function", calls, None
    if Counter(map(_key, calls)) != Counter(map(_key, gold_calls)):
        return "wrong_arguments", calls, None
    return "correct", calls, None


HEADLINE = (
    "exact_match: share of assistant turns (replayed from the gold history) whose tool calls match the gold calls "
    "exactly (names and normalised arguments), or that rightly make no call; conversation_exact_match: share of "
    "conversations with every turn right"
)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _accuracy(rows: list[dict]) -> dict[str, Any]:
    """Turn-level exact match (the headline), call-turn exact match and conversation-level exact match."""
    by_conv: dict[int, bool] = {}
    for r in rows:
        by_conv[r["conversation"]] = by_conv.get(r["conversation"], True) and r["outcome"] == "correct"
    calls = [r for r in rows if r["gold_calls"]]
    return {
        "turns": len(rows),
        "exact_match": _share(sum(r["outcome"] == "correct" for r in rows), len(rows)),
        "call_turns": len(calls),
        "call_turn_exact_match": _share(sum(r["outcome"] == "correct" for r in calls), len(calls)),
        "conversations": len(by_conv),
        "conversation_exact_match": _share(sum(by_conv.values()), len(by_conv)),
    }


def summarise(rows: list[dict]) -> dict[str, Any]:
    """Exact match overall, per category, per turn type and for held-out tools, and failure counts.

    The headline `exact_match` is turn-level: the share of assistant turns scored correct; beside it,
    `call_turn_exact_match` (turns whose gold answer calls tools) and `never_call_score` (the headline of a
    model that never calls: the share of text turns). A conversation counts in `conversation_exact_match`
    only when every one of its turns is right. `call_turns` / `text_turns` split the turns by what the gold
    answer does; `no_call_accuracy` is the exact match of the turns of `no_call` conversations (no offered
    tool applies: the model must answer, not call). `measures` holds the separate measures of `MEASURES`:
    `seen_tools` (the training tools in new requests: conversations that call no held-out tool, no-call ones
    excluded) and `held_out_tools` (conversations that call a held-out tool) where rows carry `held_out`,
    then the categories.

    Args:
        rows: scored turns (`conversation`, `category`, `gold_calls`, `outcome`, `held_out`), as
            `evaluate_tool_calling` writes them.
    """
    by_category = {c: _accuracy([r for r in rows if r["category"] == c]) for c in CATEGORIES}
    overall = _accuracy(rows)
    text_turns = [r for r in rows if not r["gold_calls"]]
    report: dict[str, Any] = {
        "headline": HEADLINE,
        **{k: v for k, v in overall.items() if k != "call_turns"},
        "never_call_score": _share(len(text_turns), len(rows)),
        "no_call_accuracy": by_category["no_call"]["exact_match"],
        "by_category": by_category,
        "call_turns": _accuracy([r for r in rows if r["gold_calls"]]),
        "text_turns": _accuracy(text_turns),
        "failures": {o: sum(r["outcome"] == o for r in rows) for o in OUTCOMES[1:]},
    }
    measures: dict[str, dict] = {}
    if any(r.get("held_out") is not None for r in rows):
        report["seen_tools"] = measures["seen_tools"] = _accuracy(
            [r for r in rows if r.get("held_out") is False and r["category"] != "no_call"])
        report["held_out_tools"] = measures["held_out_tools"] = _accuracy([r for r in rows if r.get("held_out")])
    measures.update(by_category)
    report["measures"] = {m: measures[m] for m in MEASURES if m in measures}
    return report


def turn_budgets(turns: list[Turn], tokenizer: Any, max_new_tokens: int = 192, call_slack_tokens: int = 24) -> list[int]:
    """New-token budget per turn: the gold calls' length in forgekit's format plus slack for call turns (a
    longer generation cannot be an exact match), at most `max_new_tokens`; text turns get `max_new_tokens`:
    `no_call_started` ends a text answer after `CALL_START_TOKENS`, and a call started there is written out
    to be scored as the `spurious_call` it is (with a budget of `CALL_START_TOKENS` it was cut off and read as
    malformed)."""
    out = []
    for t in turns:
        if t.gold_calls is None:
            out.append(max_new_tokens)
        else:
            n = len(tokenizer(format_calls(t.gold_calls), add_special_tokens=False)["input_ids"])
            out.append(min(n + call_slack_tokens, max_new_tokens))
    return out


CALL_START_TOKENS = 32
_CALL_MARKERS = ("[TOOL_CALLS]", "<tool_call>", "[TOOL_", "<tool")


def no_call_started(text: str, n_tokens: int) -> bool:
    """True once `CALL_START_TOKENS` tokens are written and no call has started (no call marker, and the text
    does not open a bare JSON call): the turn is then a text answer whatever follows."""
    if n_tokens < CALL_START_TOKENS:
        return False
    head = text.lstrip()
    return not (head.startswith(("{", "[")) or any(m in text for m in _CALL_MARKERS))


def evaluate_tool_calling(
    model_or_path: Any,
    test: str | Path | list[dict],
    *,
    tokenizer: Any = None,
    limit: int | None = None,
    max_new_tokens: int = 192,
    call_slack_tokens: int = 24,
    batch_size: int = 16,
    num_threads: int | None = None,
    predictions_path: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Replay a tool-calling test set turn by turn and score every assistant turn.

    Args:
        model_or_path: a checkpoint path or id (base model, LoRA adapter or full weights: see
            `forgekit.generate.load_for_generation`), a loaded `(model, tokenizer)` pair, or a model with
            `tokenizer=`.
        test: a JSONL path (validated, problems reported as file:line) or a list of records.
        tokenizer: the tokenizer for a loaded model.
        limit: evaluate only the first `limit` conversations.
        max_new_tokens: the most new tokens of any turn.
        call_slack_tokens: new tokens beyond the gold calls' length for call turns.
        batch_size: turns generated together.
        num_threads: CPU threads while generating (see `forgekit.generate.generate`); None: unchanged.
        predictions_path: write one JSON line per turn (gold, generation, outcome) here.
        progress: a bar over the turns generated (None: in a terminal or notebook, or with
            FORGEKIT_PROGRESS=1; `forgekit.progress.progress_enabled`).

    Returns:
        `summarise(...)` of the scored turns, plus `samples`: the first turn of up to 8 conversations per
        category with its generation, `settings`: the budgets, dtype and threads used, and `seconds`: the
        evaluation's wall time (loading from a path included).
    """
    import time

    import torch

    from forgekit.generate import generate, load_for_generation

    start = time.perf_counter()

    if isinstance(model_or_path, (str, Path)):
        model_or_path = load_for_generation(model_or_path)
    if isinstance(model_or_path, tuple):
        model, tokenizer = model_or_path
    else:
        model = model_or_path
    if tokenizer is None:
        raise ValueError("evaluate_tool_calling: a loaded model needs its tokenizer (tokenizer=...)")
    if isinstance(test, (str, Path)):
        from forgekit.data import read_examples

        examples = read_examples(str(test))
        metadata = _metadata(str(test))
        records = [{"messages": e.messages, "tools": e.tools, "metadata": metadata.get(e.line)} for e in examples]
    else:
        records = list(test)
    records = records[:limit] if limit else records
    turns = replay_turns(records)
    texts = generate(
        model, [t.messages for t in turns], [t.tools for t in turns], tokenizer=tokenizer,
        max_new_tokens=turn_budgets(turns, tokenizer, max_new_tokens, call_slack_tokens),
        stop_when=no_call_started, batch_size=batch_size, num_threads=num_threads, progress=progress,
    )
    rows = []
    for t, text in zip(turns, texts):
        outcome, calls, error = score_turn(t.gold_calls, text)
        rows.append({
            "conversation": t.conversation, "turn": t.index, "category": t.category, "held_out": t.held_out,
            "gold_calls": t.gold_calls, "generated": text, "predicted_calls": calls, "parse_error": error,
            "outcome": outcome,
        })
    if predictions_path:
        Path(predictions_path).parent.mkdir(parents=True, exist_ok=True)
        Path(predictions_path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = summarise(rows)
    samples: dict[str, list] = {c: [] for c in CATEGORIES}
    seen: set[int] = set()
    for t, r in zip(turns, rows):
        if t.conversation not in seen and len(samples[t.category]) < 8:
            seen.add(t.conversation)
            last_user = next((m["content"] for m in reversed(t.messages) if m["role"] == "user"), "")
            samples[t.category].append({"conversation": t.conversation, "user": last_user, **{
                k: r[k] for k in ("gold_calls", "generated", "outcome")}})
    report["samples"] = samples
    report["settings"] = {"max_new_tokens": max_new_tokens, "call_start_tokens": CALL_START_TOKENS,
                          "call_slack_tokens": call_slack_tokens, "dtype": str(model.dtype).removeprefix("torch."),
                          "device": str(model.device), "num_threads": num_threads or torch.get_num_threads()}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def _metadata(path: str) -> dict[int, dict]:
    """`metadata` of each line of a local JSONL (forgekit's synthetic data has it; others may not)."""
    local = Path(path.removeprefix("file://"))
    if not local.is_file():
        return {}
    out = {}
    for lineno, line in enumerate(local.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            meta = json.loads(line).get("metadata")
            if isinstance(meta, dict):
                out[lineno] = meta
    return out
