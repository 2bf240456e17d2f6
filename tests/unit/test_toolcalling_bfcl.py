"""The function-calling benchmark layout: reading question + answer files, the AST rule, and eval-tools on them."""

from __future__ import annotations

import json

import pytest

from forgekit.data import DataError
from forgekit.toolcalling.bfcl import is_bfcl, match_call, read_bfcl, score_bfcl, to_json_schema
from forgekit.toolcalling.render import format_calls, tool_signature

FACTORIAL = {"name": "math.factorial", "description": "Factorial of a number.", "parameters": {
    "type": "dict", "properties": {"number": {"type": "integer", "description": "The number."}}, "required": ["number"]}}
HOTEL = {"name": "book_hotel", "description": "Book a hotel room.", "parameters": {"type": "dict", "properties": {
    "city": {"type": "string"}, "nights": {"type": "integer"}, "price": {"type": "float"},
    "guests": {"type": "array", "items": {"type": "string"}},
    "room": {"type": "dict", "properties": {"kind": {"type": "string"}, "view": {"type": "boolean"}}},
    "note": {"type": "any"}}, "required": ["city", "nights"]}}
WEATHER = {"name": "weather.get_forecast", "description": "Forecast for a city.", "parameters": {
    "type": "dict", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}

QUESTIONS = [
    {"id": "simple_0", "question": [[{"role": "user", "content": "What is 5 factorial?"}]], "function": [FACTORIAL]},
    {"id": "multiple_0", "question": [[{"role": "user", "content": "Book 3 nights in Paris at 120.5 a night."}]],
     "function": [HOTEL, WEATHER]},
    {"id": "parallel_0", "question": [[{"role": "user", "content": "Forecast for Oslo and for Rome, 3 days."}]],
     "function": [WEATHER]},
    {"id": "irrelevance_0", "question": [[{"role": "user", "content": "Who wrote Hamlet?"}]], "function": [WEATHER]},
]
ANSWERS = [
    {"id": "simple_0", "ground_truth": [{"math.factorial": {"number": [5]}}]},
    {"id": "multiple_0", "ground_truth": [{"book_hotel": {
        "city": ["Paris", "Paris, France"], "nights": [3], "price": [120.5, ""], "guests": [""],
        "room": [{"kind": ["double", "twin"], "view": [True, ""]}, ""], "note": [""]}}]},
    {"id": "parallel_0", "ground_truth": [{"weather.get_forecast": {"city": ["Oslo"], "days": [3, ""]}},
                                         {"weather.get_forecast": {"city": ["Rome"], "days": [3]}}]},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    return _write(tmp_path / "questions.json", QUESTIONS), _write(tmp_path / "possible_answer.json", ANSWERS)


def test_reads_items_with_json_schema_tools(files):
    items = read_bfcl(*files)
    assert [i["id"] for i in items] == ["simple_0", "multiple_0", "parallel_0", "irrelevance_0"]
    assert items[3]["ground_truth"] == []  # no answer: the model must not call
    params = items[1]["tools"][0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["price"]["type"] == "number"
    assert params["properties"]["room"]["type"] == "object" and "type" not in params["properties"]["note"]
    assert tool_signature(items[0]["tools"][0]) == "math.factorial(number: integer /* The number. */) - Factorial of a number."
    assert to_json_schema({"type": "tuple", "items": {"type": "float"}}) == {"type": "array", "items": {"type": "number"}}
    assert is_bfcl(files[0]) and not is_bfcl(files[1])


def test_ast_rule_single_and_optional_arguments(files):
    simple, hotel, _, _ = read_bfcl(*files)
    assert score_bfcl(simple, format_calls([{"name": "math.factorial", "arguments": {"number": 5}}]))[0] == "correct"
    assert score_bfcl(simple, format_calls([{"name": "math.factorial", "arguments": {"number": "5"}}]))[0] == "correct"
    outcome, _, reason = score_bfcl(simple, format_calls([{"name": "math.factorial", "arguments": {"number": 6}}]))
    assert outcome == "wrong_arguments" and "'number'" in reason
    assert score_bfcl(simple, format_calls([{"name": "factorial", "arguments": {"number": 5}}]))[0] == "wrong_function"
    assert score_bfcl(simple, "5! is 120.")[0] == "missed_call"
    assert score_bfcl(simple, '[TOOL_CALLS] [{"name": "math.factorial", "argu')[0] == "malformed_call"

    def hotel_call(**args):
        return score_bfcl(hotel, format_calls([{"name": "book_hotel", "arguments": args}]))

    assert hotel_call(city="paris", nights=3)[0] == "correct"  # optional args absent, strings case-insensitive
    assert hotel_call(city="Paris, France", nights=3.0, price=120.5)[0] == "correct"
    assert hotel_call(city="Paris", nights=3, room={"kind": "twin"})[0] == "correct"  # nested, optional key absent
    assert hotel_call(city="Paris", nights=3, room={"kind": "suite"})[0] == "wrong_arguments"
    assert hotel_call(city="Paris", nights=3, price=99)[0] == "wrong_arguments"
    outcome, _, reason = hotel_call(city="Paris")
    assert outcome == "wrong_arguments" and reason == "required argument 'nights' missing"
    outcome, _, reason = hotel_call(city="Paris", nights=3, breakfast=True)
    assert outcome == "wrong_arguments" and reason == "unexpected argument 'breakfast'"
    assert hotel_call(city="Paris", nights=3, guests=["Ann"])[0] == "wrong_arguments"  # acceptable only absent


def test_ast_rule_parallel_in_any_order_and_irrelevance(files):
    _, _, parallel, irrelevance = read_bfcl(*files)
    rome = {"name": "weather.get_forecast", "arguments": {"city": "Rome", "days": 3}}
    oslo = {"name": "weather.get_forecast", "arguments": {"city": "Oslo"}}
    assert score_bfcl(parallel, format_calls([rome, oslo]))[0] == "correct"
    assert score_bfcl(parallel, format_calls([oslo, {**rome, "arguments": {"city": "Rome"}}]))[0] == "wrong_arguments"
    assert score_bfcl(parallel, format_calls([oslo]))[0] == "wrong_function"  # one call of two
    assert score_bfcl(irrelevance, "William Shakespeare.")[0] == "correct"
    assert score_bfcl(irrelevance, format_calls([oslo]))[0] == "spurious_call"
    assert match_call(oslo, {"weather.get_forecast": {"city": ["Oslo"], "days": [""]}}, [WEATHER]) is None


def test_layout_problems_are_reported_with_lines(tmp_path, files):
    bad_q = _write(tmp_path / "bad_q.json", [QUESTIONS[0], {"id": "x", "question": "hi"},
                                             {"id": "y", "question": [[{"role": "user", "content": "a"}],
                                                                      [{"role": "user", "content": "b"}]],
                                              "function": [WEATHER]}])
    bad_a = _write(tmp_path / "bad_a.json", [ANSWERS[0], {"id": "simple_0", "ground_truth": {"f": 1}},
                                             {"id": "nope", "ground_truth": []}])
    with pytest.raises(DataError) as e:
        read_bfcl(bad_q, bad_a)
    text = str(e.value)
    assert "bad_q.json:2:" in text and "bad_q.json:3: 2 question turns" in text and "bad_a.json:2:" in text
    assert "unknown id 'nope'" in text


def test_eval_tools_scores_the_benchmark_layout(tiny_model_dir, files, tmp_path, capsys):
    from forgekit.cli import main

    out, preds = tmp_path / "report.json", tmp_path / "preds.jsonl"
    questions, answers = files
    assert main(["eval-tools", str(tiny_model_dir), str(questions), "--answers", str(answers), "-o", str(out),
                 "--predictions", str(preds), "--max-new-tokens", "8"]) == 0
    report = json.loads(out.read_text())
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert report["format"] == "bfcl" and report["turns"] == report["conversations"] == 4
    assert [r["category"] for r in rows] == ["single", "single", "parallel", "no_call"]
    items = {i["id"]: i for i in read_bfcl(questions, answers)}
    for row in rows:  # the report is exactly the AST scores of what was generated
        assert score_bfcl(items[row["id"]], row["generated"])[0] == row["outcome"]
    assert report["exact_match"] == round(sum(r["outcome"] == "correct" for r in rows) / 4, 4)
    assert "AST match" in capsys.readouterr().err
    # --answers with a file in forgekit's own layout is a usage error
    jsonl = _write(tmp_path / "t.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}]}])
    assert main(["eval-tools", str(tiny_model_dir), str(jsonl), "--answers", str(answers)]) == 2
