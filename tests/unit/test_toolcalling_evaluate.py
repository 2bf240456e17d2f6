"""Tool-calling evaluation: normalisation, per-turn outcomes, replay, summaries, and the eval-tools command."""

from __future__ import annotations

import json

import pytest

from forgekit.toolcalling.evaluate import (
    CALL_START_TOKENS,
    MEASURES,
    conversation_category,
    evaluate_tool_calling,
    no_call_started,
    normalise,
    replay_turns,
    score_turn,
    summarise,
    turn_budgets,
)
from forgekit.toolcalling.render import format_calls

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
         for n in ("get_weather", "get_time")]


def _call(name: str, args: dict, cid: str = "c") -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


MULTI = {"tools": TOOLS, "metadata": {"held_out": True}, "messages": [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "Oslo"})]},
    {"role": "tool", "tool_call_id": "c", "content": "3 C"},
    {"role": "assistant", "content": "It is 3 C."},
    {"role": "user", "content": "And the time?"},
    {"role": "assistant", "content": None, "tool_calls": [_call("get_time", {"city": "Oslo"})]},
]}
NO_CALL = {"tools": TOOLS, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
PARALLEL = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Weather and time in Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        _call("get_weather", {"city": "Rome"}, "a"), _call("get_time", {"city": "Rome"}, "b")]}]}


def test_normalise_types():
    assert normalise({"b": 1, "a": "2.50", "c": " x ", "d": "TRUE", "e": None, "f": [1, {"g": False}]}) == {
        "a": 2.5, "b": 1.0, "c": "x", "d": True, "f": [1.0, {"g": False}]}
    assert normalise("Celsius") != normalise("celsius")  # strings are exact


GOLD = [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]


@pytest.mark.parametrize("text, outcome", [
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"days": 3.0, "city": "Oslo"}}]', "correct"),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"days": "3", "city": "Oslo", "unit": null}}]', "correct"),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "oslo", "days": 3}}]', "wrong_arguments"),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}]', "wrong_arguments"),
    ('[TOOL_CALLS] [{"name": "get_time", "arguments": {"city": "Oslo", "days": 3}}]', "wrong_function"),
    (('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}, '
     '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]'), "wrong_function"),
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Os', "malformed_call"),
    ("It is sunny in Oslo.", "missed_call"),
])
def test_score_call_turn(text, outcome):
    assert score_turn(GOLD, text)[0] == outcome


def test_score_text_turn_and_parallel_order():
    assert score_turn(None, "Hello!")[0] == "correct"
    assert score_turn(None, format_calls(GOLD))[0] == "spurious_call"
    gold = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    assert score_turn(gold, format_calls(gold[::-1]))[0] == "correct"


def test_no_call_started():
    assert not no_call_started("The weather in Oslo is", 8)  # too early to tell
    assert no_call_started("The weather in Oslo is mild today, with a light breeze and", 32)
    for text in ('Sure. [TOOL_CALLS] [{"name"', '[TOOL_CALLS] [{"name": "get_weather", "arguments":', '{"name": "f",',
                 "<tool_call>\n{"):
        assert not no_call_started(text, 40)


def test_replay_turns_and_categories():
    turns = replay_turns([MULTI, NO_CALL, PARALLEL])
    assert [(t.conversation, t.index, t.category) for t in turns] == [
        (0, 1, "multi_turn"), (0, 3, "multi_turn"), (0, 5, "multi_turn"), (1, 1, "no_call"), (2, 1, "parallel")]
    assert turns[1].messages[-1]["role"] == "tool" and turns[1].gold_calls is None
    assert turns[2].gold_calls == [{"name": "get_time", "arguments": {"city": "Oslo"}}]
    assert turns[0].held_out is True and turns[3].held_out is None
    assert conversation_category(MULTI["messages"][:2]) == "single"


def test_summarise_counts():
    turns = replay_turns([MULTI, NO_CALL, PARALLEL])
    outcomes = ["correct", "correct", "wrong_arguments", "spurious_call", "correct"]
    rows = [{"conversation": t.conversation, "category": t.category, "gold_calls": t.gold_calls,
             "held_out": t.held_out, "outcome": o} for t, o in zip(turns, outcomes)]
    report = summarise(rows)
    # the headline is turn-level: 3 of 5 turns right; only PARALLEL has every turn right
    assert (report["turns"], report["exact_match"]) == (5, 0.6)
    assert (report["conversations"], report["conversation_exact_match"]) == (3, pytest.approx(1 / 3, abs=1e-4))
    assert "turn" in report["headline"]
    assert report["call_turns"]["exact_match"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["text_turns"]["exact_match"] == 0.5
    assert report["by_category"]["no_call"] == {
        "turns": 1, "exact_match": 0.0, "call_turns": 0, "call_turn_exact_match": None, "conversations": 1,
        "conversation_exact_match": 0.0}
    # beside the headline: call turns (2 of 3 right) and what a model that never calls scores (2 text turns of 5)
    assert report["call_turn_exact_match"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["never_call_score"] == 0.4
    assert report["no_call_accuracy"] == 0.0  # the spurious call on "Hi"
    multi = report["by_category"]["multi_turn"]
    assert multi["exact_match"] == pytest.approx(2 / 3, abs=1e-4) and multi["conversation_exact_match"] == 0.0
    assert report["by_category"]["single"]["exact_match"] is None
    assert report["failures"] == {"malformed_call": 0, "wrong_function": 0, "wrong_arguments": 1,
                                  "missed_call": 0, "spurious_call": 1}
    assert report["held_out_tools"]["turns"] == 3 and report["seen_tools"]["conversations"] == 0
    assert list(report["measures"]) == list(MEASURES)
    assert report["measures"]["held_out_tools"]["call_turn_exact_match"] == 0.5  # MULTI: 1 of its 2 calls
    assert report["measures"]["parallel"] == report["by_category"]["parallel"]


def test_measures_split_seen_and_held_out_tools():
    rows = [
        {"conversation": 0, "category": "single", "gold_calls": [{}], "held_out": False, "outcome": "correct"},
        {"conversation": 1, "category": "parallel", "gold_calls": [{}, {}], "held_out": True, "outcome": "missed_call"},
        {"conversation": 2, "category": "no_call", "gold_calls": None, "held_out": False, "outcome": "correct"},
        {"conversation": 3, "category": "parallel", "gold_calls": [{}, {}], "held_out": False,
         "outcome": "wrong_arguments"},
    ]
    m = summarise(rows)["measures"]
    assert (m["seen_tools"]["turns"], m["seen_tools"]["exact_match"]) == (2, 0.5)  # no-call turns are not "seen tools"
    assert (m["held_out_tools"]["turns"], m["held_out_tools"]["exact_match"]) == (1, 0.0)
    assert (m["parallel"]["turns"], m["parallel"]["exact_match"]) == (2, 0.0)
    assert m["no_call"]["exact_match"] == 1.0 and m["single"]["exact_match"] == 1.0
    # without held-out metadata (any other test file) only the categories are measured
    plain = summarise([{**r, "held_out": None} for r in rows])
    assert list(plain["measures"]) == ["parallel", "single", "multi_turn", "no_call"]
    assert "held_out_tools" not in plain


def test_spurious_call_on_a_text_turn_is_counted_as_such():
    # a call started in a text turn is the wrong decision whether or not it can be parsed
    outcome, calls, error = score_turn(None, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Os')
    assert outcome == "spurious_call" and calls is None and error
    assert score_turn(None, '{"name": "get_weather", "arguments": {}}')[0] == "spurious_call"
    assert score_turn(None, "[1, 2] are the numbers.")[0] == "correct"  # JSON-looking text is not a call


def test_text_turns_get_a_budget_that_shows_a_started_call(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    turns = replay_turns([MULTI, NO_CALL, PARALLEL])
    budgets = turn_budgets(turns, tok, max_new_tokens=160, call_slack_tokens=8)
    text = [b for t, b in zip(turns, budgets) if t.gold_calls is None]
    calls = [b for t, b in zip(turns, budgets) if t.gold_calls is not None]
    assert text == [160, 160]  # ended by no_call_started after CALL_START_TOKENS unless a call has started
    assert CALL_START_TOKENS < 160 and all(b < 160 for b in calls)  # gold length + slack


def test_evaluate_end_to_end_with_tiny_model(tiny_model_dir, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in (MULTI, NO_CALL, PARALLEL)))
    preds = tmp_path / "preds.jsonl"
    report = evaluate_tool_calling(tiny_model_dir, test, max_new_tokens=8, predictions_path=preds)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == report["turns"] == 5 and report["conversations"] == 3
    for row in rows:  # the report is exactly the scores of what was generated
        assert score_turn(row["gold_calls"], row["generated"])[0] == row["outcome"]
    assert report["exact_match"] == round(sum(r["outcome"] == "correct" for r in rows) / 5, 4)
    by_conv = {}
    for r in rows:
        by_conv[r["conversation"]] = by_conv.get(r["conversation"], True) and r["outcome"] == "correct"
    assert report["conversation_exact_match"] == round(sum(by_conv.values()) / 3, 4)
    assert report["held_out_tools"]["turns"] == 3  # metadata read from the file
    assert set(report["samples"]) == {"single", "parallel", "multi_turn", "no_call"}


def test_cli_eval_tools(tiny_model_dir, tmp_path, capsys):
    from forgekit.cli import main

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(NO_CALL) + "\n" + json.dumps(PARALLEL) + "\n")
    out = tmp_path / "report.json"
    assert main(["eval-tools", str(tiny_model_dir), str(test), "-o", str(out), "--max-new-tokens", "4"]) == 0
    report = json.loads(out.read_text())
    assert report["turns"] == 2 and report["test"] == str(test)
    assert "exact match" in capsys.readouterr().out


def test_cli_tool_data(tmp_path, capsys):
    from forgekit.cli import main

    assert main(["tool-data", "synth", str(tmp_path / "s"), "--train", "12", "--valid", "4", "--test", "6"]) == 0
    assert "train: 12 conversations" in capsys.readouterr().out
    logs = tmp_path / "logs.jsonl"
    logs.write_text("".join(json.dumps(r) + "\n" for r in [NO_CALL, PARALLEL, MULTI, {"x": 1}]))
    assert main(["tool-data", "openai-logs", str(logs), str(tmp_path / "o"), "--valid", "1", "--test", "1"]) == 0
    captured = capsys.readouterr()
    assert "train: 1 conversations" in captured.out and "row 4" in captured.err
