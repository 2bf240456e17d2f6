"""Glaive v2 and OpenAI chat-log converters, on small hand-written samples."""

from __future__ import annotations

import json

from forgekit.data import validate_record
from forgekit.formats import render
from forgekit.toolcalling.convert import convert_glaive, convert_openai_logs, read_records, split_records

GLAIVE_SYSTEM = (
    "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
    '{\n    "name": "get_exchange_rate",\n    "description": "Get the exchange rate",\n    "parameters": {\n'
    '        "type": "object",\n        "properties": {\n            "base": {"type": "string"},\n'
    '            "target": {"type": "string"}\n        },\n        "required": ["base", "target"]\n    }\n}\n\n'
    '{\n    "name": "get_time",\n    "parameters": {"type": "object", "properties": {}}\n}\n'
)
GLAIVE_CHAT = (
    "USER: How many euros is one dollar?\n\n\n"
    "ASSISTANT: <functioncall> {\"name\": \"get_exchange_rate\", \"arguments\": '{\"base\": \"USD\", "
    "\"target\": \"EUR\"}'} <|endoftext|>\n\n\n"
    'FUNCTION RESPONSE: {"rate": 0.92}\n\n\n'
    "ASSISTANT: One dollar is 0.92 euros. <|endoftext|>\n\n\n"
    "USER: Thanks!\n\n\n"
    "ASSISTANT: You're welcome! <|endoftext|>\n"
)


def test_glaive_row_converts_to_openai_format(tokenizer):
    [record], problems = convert_glaive([{"system": GLAIVE_SYSTEM, "chat": GLAIVE_CHAT}])
    assert problems == []
    assert [t["function"]["name"] for t in record["tools"]] == ["get_exchange_rate", "get_time"]
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]  # stock preamble dropped
    call = record["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "get_exchange_rate", "arguments": '{"base": "USD", "target": "EUR"}'}
    assert record["messages"][2] == {"role": "tool", "tool_call_id": call["id"], "content": '{"rate": 0.92}'}
    assert record["messages"][3]["content"] == "One dollar is 0.92 euros."
    assert validate_record(record) == []
    text = render(record["messages"], tokenizer, None, tools=record["tools"]).text
    assert '[TOOL_CALLS] [{"name": "get_exchange_rate", "arguments": {"base": "USD", "target": "EUR"}}]' in text


def test_glaive_without_functions_and_broken_rows():
    rows = [
        {"system": "SYSTEM: You are a helpful assistant, with no access to external functions.",
         "chat": "USER: Tell me a joke.\n\n\nASSISTANT: Why did the chicken cross the road? <|endoftext|>"},
        {"system": GLAIVE_SYSTEM, "chat": "ASSISTANT: <functioncall> {\"name\": \"get_time\", \"arguments\": '{"},
        {"system": GLAIVE_SYSTEM, "chat": "USER: hi\n\n\nFUNCTION RESPONSE: {}"},
        {"system": "SYSTEM: x -\n{\"name\": ", "chat": "USER: hi\n\n\nASSISTANT: hello"},
    ]
    records, problems = convert_glaive(rows)
    assert len(records) == 1 and "tools" in records[0] and records[0]["tools"] == []
    assert records[0]["messages"][0] == {
        "role": "system", "content": "You are a helpful assistant, with no access to external functions."}
    assert [p.split(":")[0] for p in problems] == ["row 2", "row 3", "row 4"]
    assert "not valid JSON" in problems[0] and "without a preceding" in problems[1] and "system" in problems[2]


def test_openai_logs_request_response_and_legacy_functions():
    fn = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    first = {"request": {"functions": [fn], "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": None,
                                              "function_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}}]}}
    second = {"request": {"functions": [fn], "messages": [
        *first["request"]["messages"], first["response"]["choices"][0]["message"],
        {"role": "function", "name": "get_weather", "content": "3 C"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "It is 3 °C in Oslo."}}]}}
    plain = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                          {"role": "assistant", "content": "Hello!"}]}
    records, problems = convert_openai_logs([first, second, plain, {"foo": 1}])
    assert problems == ["row 4: no messages (expected 'messages' or 'request.messages')"]
    assert len(records) == 2  # the first log is a prefix of the second
    conv = records[0]
    assert conv["tools"] == [{"type": "function", "function": fn}]
    assert [m["role"] for m in conv["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    call = conv["messages"][2]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"city": "Oslo"}' and conv["messages"][3]["tool_call_id"] == call["id"]
    assert records[1]["messages"][0]["content"] == "Hi"
    assert all(validate_record(r) == [] for r in records)


def test_read_and_split(tmp_path):
    rows = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows))
    assert read_records(str(tmp_path / "a.jsonl")) == read_records(str(tmp_path / "b.json")) == rows
    parts = split_records(rows, valid=2, test=3, seed=1)
    assert [len(parts[k]) for k in ("train", "valid", "test")] == [5, 2, 3]
    assert sorted(json.dumps(r) for p in parts.values() for r in p) == sorted(json.dumps(r) for r in rows)
    assert split_records(rows, 2, 3, seed=1) == parts
