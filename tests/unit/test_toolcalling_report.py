"""Before/after reporting: comparison rows and table, the bar plot, generations side by side, the results JSON."""

from __future__ import annotations

import json

import pytest

from forgekit.toolcalling.cli import format_report
from forgekit.toolcalling.evaluate import replay_turns, summarise
from forgekit.toolcalling.report import (
    comparison_rows,
    comparison_table,
    plot_comparison,
    side_by_side,
    write_results,
)


def _call(name: str, args: dict, cid: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
RECORDS = [
    {"tools": TOOLS, "metadata": {"held_out": False}, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Oslo"}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": "3 C"},
        {"role": "assistant", "content": "It is 3 C."},
        {"role": "user", "content": "And Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Rome"}, "b")]}]},
    {"tools": TOOLS, "metadata": {"held_out": False}, "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
]


def _report(outcomes: list[str]) -> tuple[dict, list[dict]]:
    turns = replay_turns(RECORDS)
    rows = [{"conversation": t.conversation, "turn": t.index, "category": t.category, "held_out": t.held_out,
             "gold_calls": t.gold_calls, "generated": f"text {i}", "outcome": o}
            for i, (t, o) in enumerate(zip(turns, outcomes))]
    return summarise(rows), rows


def test_rows_table_and_summary_lead_with_turn_level_exact_match():
    base, _ = _report(["missed_call", "correct", "missed_call", "correct"])
    tuned, _ = _report(["correct", "correct", "wrong_arguments", "correct"])
    rows = comparison_rows({"base": base, "tuned": tuned})
    assert rows["base"]["exact match"] == 0.5 and rows["tuned"]["exact match"] == 0.75  # turns
    assert rows["base"]["conversations"] == 0.5 and rows["tuned"]["conversations"] == 0.5  # whole conversations
    assert rows["tuned"]["multi-turn"] == pytest.approx(2 / 3, abs=1e-4) and rows["tuned"]["no-call"] == 1.0
    assert rows["tuned"]["call turns"] == 0.5 and rows["base"]["call turns"] == 0.0
    assert rows["tuned"]["held-out tools"] is None and rows["tuned"]["seen tools"] == pytest.approx(2 / 3, abs=1e-4)
    assert list(rows["tuned"])[:4] == ["exact match", "call turns", "seen tools", "held-out tools"]
    table = comparison_table({"base": base, "tuned": tuned}).splitlines()
    assert table[0].startswith("| model | exact match | call turns | seen tools |") and len(table) == 6
    assert table[3].startswith("| tuned | 0.750 | 0.500 |") and "| — |" in table[3]  # no held-out conversation
    assert "never calls a tool scores 0.500" in table[5]  # 2 text turns of 4
    summary = format_report(tuned, "tuned: ")
    assert summary.startswith("tuned: exact match (turns) 75.0% of 4 turns (conversations 50.0% of 2)")
    assert "call turns: 50.0% of 2; a model that never calls scores 50.0%" in summary
    assert "no-call accuracy 100.0%" in summary and "wrong_arguments 1" in summary
    assert "  seen tools: 66.7% of 3 turns; call turns 50.0% of 2" in summary


def test_plot_results_json_and_side_by_side(tmp_path):
    base, base_rows = _report(["missed_call", "correct", "missed_call", "correct"])
    tuned, tuned_rows = _report(["correct", "correct", "correct", "correct"])
    png = plot_comparison({"base": base, "tuned": tuned}, tmp_path / "plots" / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out = write_results(tmp_path / "r.json", {"base": {**base, "samples": {}}, "tuned": tuned}, model_id="m")
    saved = json.loads(out.read_text())
    assert saved["model_id"] == "m" and "samples" not in saved["evaluations"]["base"]
    assert saved["evaluations"]["tuned"]["exact_match"] == 1.0 and "turn" in saved["evaluations"]["tuned"]["headline"]

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    preds = {}
    for name, rows in (("base", base_rows), ("tuned", tuned_rows)):
        preds[name] = tmp_path / f"{name}.jsonl"
        preds[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = side_by_side(preds, test, n=4).splitlines()
    assert len(table) == 4  # header, rule, the first turn of each conversation
    assert table[2].startswith("| Weather in Oslo? |") and "**missed_call**" in table[2] and "**correct**" in table[2]
    assert table[3].startswith("| Hi | (answers in text) |")
