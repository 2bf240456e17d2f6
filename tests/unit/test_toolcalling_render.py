"""The tagged tool format: flattening, trained spans with the real SmolLM2 tokenizer, and call parsing."""

from __future__ import annotations

import json

import pytest

from forgekit.formats import BUILTIN_FORMATS, render, tokenize_rendered
from forgekit.toolcalling.render import (
    CALLS_TAG,
    TOOL_INSTRUCTION,
    flatten_tool_messages,
    for_chat_template,
    parse_tool_calls,
    template_supports_tools,
    to_openai_tool_calls,
    tool_signature,
)

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]


def _call(cid: str, name: str, args: dict) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather and time in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        _call("c1", "get_weather", {"city": "Oslo"}), _call("c2", "get_time", {"city": "Oslo"})]},
    {"role": "tool", "tool_call_id": "c2", "content": "14:05"},
    {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 3}'},
    {"role": "assistant", "content": "3 °C, and it is 14:05."},
]


def test_flatten_roles_and_tags():
    flat = flatten_tool_messages(CONVERSATION, TOOLS)
    assert [m["role"] for m in flat] == ["system", "user", "assistant", "user", "assistant"]
    system = flat[0]["content"]
    assert system.startswith("Be brief.\n\n") and "[TOOL_LIST]" in system and system.endswith("[/TOOL_LIST]")
    assert "\nget_weather(city: string) - Current weather in a city\nget_time(city: string) - " in system
    assert flat[2]["content"] == (
        CALLS_TAG + ' [{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
        '{"name": "get_time", "arguments": {"city": "Oslo"}}]'
    )
    # results keep their order, are named through tool_call_id, and JSON results are not escaped twice
    assert flat[3]["content"] == (
        '[TOOL_RESULT] {"name": "get_time", "content": "14:05"} [/TOOL_RESULT]\n\n'
        '[TOOL_RESULT] {"name": "get_weather", "content": {"temp_c": 3}} [/TOOL_RESULT]'
    )
    assert CONVERSATION[2]["content"] is None  # input untouched


def test_tool_signature_covers_schema_types():
    tool = {"type": "function", "function": {
        "name": "f", "description": "Does f.\nTwice.",
        "parameters": {"type": "object", "required": ["s", "addr"], "properties": {
            "s": {"type": "string", "description": "a name"},
            "e": {"type": "string", "enum": ["a", "b"]},
            "i": {"type": "integer", "default": 3, "minimum": 1},
            "n": {"type": ["number", "null"]},
            "b": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "modes": {"type": "array", "items": {"enum": ["x", "y"]}},
            "addr": {"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string"}, "zip": {"type": "string", "format": "postal"}}},
            "free": {},
        }}}}
    assert tool_signature(tool) == (
        'f(s: string /* a name */, e?: "a" | "b", i?: integer /* default: 3; minimum: 1 */, n?: number | null, '
        'b?: boolean, tags?: string[], modes?: ("x" | "y")[], addr: {city: string, zip?: string /* format: '
        '"postal" */}, free?: any) - Does f. Twice.'
    )
    assert tool_signature({"name": "g"}) == "g()"


def test_flatten_without_ids_matches_results_by_position():
    msgs = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "noon"},
    ]
    flat = flatten_tool_messages(msgs, None)
    assert flat[0]["role"] == "user"  # no tools, no system message
    assert flat[1]["content"] == 'Checking.\n[TOOL_CALLS] [{"name": "get_time", "arguments": {}}]'
    assert '"name": "get_time"' in flat[2]["content"]


def test_render_smollm2_trains_calls_not_results(tokenizer):
    assert not template_supports_tools(tokenizer)
    out = render(CONVERSATION, tokenizer, None, tools=TOOLS)
    trained = [out.text[s:e] for s, e in out.spans]
    assert len(trained) == 2
    assert trained[0].startswith(CALLS_TAG) and trained[0].rstrip().endswith("<|im_end|>")
    assert trained[1].startswith("3 °C")
    assert all("[TOOL_RESULT]" not in t and "[TOOL_LIST]" not in t for t in trained)
    ids, labels = tokenize_rendered(out, tokenizer)
    assert 0 < sum(label != -100 for label in labels) < len(ids)
    # the generation prompt for the first turn is a prefix of the training text: same rendering in both
    prompt = render(CONVERSATION[:2], tokenizer, None, tools=TOOLS, add_generation_prompt=True)
    assert out.text.startswith(prompt.text) and prompt.text.endswith("<|im_start|>assistant\n")


def test_render_role_templates_flatten_too(tokenizer):
    out = render(CONVERSATION, tokenizer, BUILTIN_FORMATS["llama3"], tools=TOOLS)
    assert "[TOOL_LIST]" in out.text
    assert out.text.count(CALLS_TAG) == TOOL_INSTRUCTION.count(CALLS_TAG) + 1
    assert out.text[slice(*out.spans[0])].startswith(CALLS_TAG)


class _Tok:
    def __init__(self, template):
        self.chat_template = template


def test_template_supports_tools():
    assert template_supports_tools(_Tok("{% if tools %}{{ tools | tojson }}{% endif %}"))
    assert template_supports_tools(_Tok({"default": "x", "tool_use": "{% for t in tools %}{% endfor %}"}))
    assert not template_supports_tools(_Tok("{{ messages }} toolset"))
    assert not template_supports_tools(_Tok(None))


def test_for_chat_template_decodes_arguments():
    msgs = for_chat_template(CONVERSATION)
    assert msgs[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert isinstance(CONVERSATION[2]["tool_calls"][0]["function"]["arguments"], str)


@pytest.mark.parametrize(
    "text, calls",
    [
        ('[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}}]<|im_end|>', [{"name": "f", "arguments": {"a": 1}}]),
        ('Sure. [TOOL_CALLS] {"name": "f", "arguments": "{\\"a\\": 2}"}', [{"name": "f", "arguments": {"a": 2}}]),
        ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n<tool_call>{"name": "g", "arguments": {}}',
         [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]),
        ('{"name": "f", "parameters": {"b": true}}', [{"name": "f", "arguments": {"b": True}}]),
        ("Paris is the capital of France.", None),
        ('{"answer": 4}', None),
    ],
)
def test_parse_tool_calls(text, calls):
    assert parse_tool_calls(text) == (calls, None)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('[TOOL_CALLS] [{"name": "f", "arguments": {"a": ', "invalid JSON"),
        ("[TOOL_CALLS]", "nothing after"),
        ('[TOOL_CALLS] [{"arguments": {}}]', "no name"),
        ('[TOOL_CALLS] [{"name": "f", "arguments": [1]}]', "must be a JSON object"),
        ("[TOOL_CALLS] []", "empty"),
        ('{"name": "f", "arguments": {', "invalid JSON"),
    ],
)
def test_parse_tool_calls_malformed(text, fragment):
    calls, error = parse_tool_calls(text)
    assert calls is None and fragment in error


def test_to_openai_tool_calls_round_trip():
    calls = [{"name": "f", "arguments": {"a": [1, 2]}}]
    assert parse_tool_calls(flatten_tool_messages(
        [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": to_openai_tool_calls(calls)}], None
    )[1]["content"]) == (calls, None)


DOTTED = [{"type": "function", "function": {
    "name": "math.factorial", "description": "Factorial of a number.\nReturns n! (an integer).",
    "parameters": {"type": "object", "properties": {
        "number": {"type": "integer", "description": "The number.\n  Must be >= 0 */ not a comment end"},
        "exact": {"type": "boolean"}}, "required": ["number"]}}},
    {"type": "function", "function": {"name": "weather.get_forecast", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def test_dotted_tool_names_survive_the_tool_list_and_the_call(tokenizer):
    from forgekit.toolcalling.evaluate import score_turn

    line = tool_signature(DOTTED[0])
    assert line.startswith("math.factorial(number: integer /* The number. Must be >= 0 * / not a comment end */, ")
    assert line.endswith(" - Factorial of a number. Returns n! (an integer).") and "\n" not in line
    convo = [{"role": "user", "content": "5! and the forecast for Oslo?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 _call("a", "math.factorial", {"number": 5}), _call("b", "weather.get_forecast", {"city": "Oslo"})]}]
    text = render(convo, tokenizer, None, tools=DOTTED).text
    listing = text.split("[TOOL_LIST]\n", 1)[1].split("\n[/TOOL_LIST]", 1)[0].splitlines()
    assert [entry.split("(", 1)[0] for entry in listing] == ["math.factorial", "weather.get_forecast"]  # one line each
    answer = text.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("\n").removesuffix("<|im_end|>")
    calls, error = parse_tool_calls(answer)
    assert error is None and [c["name"] for c in calls] == ["math.factorial", "weather.get_forecast"]
    gold = [{"name": "weather.get_forecast", "arguments": {"city": "Oslo"}}, {"name": "math.factorial",
                                                                              "arguments": {"number": 5}}]
    assert score_turn(gold, answer)[0] == "correct"
    assert score_turn([{"name": "math", "arguments": {"number": 5}}], answer)[0] == "wrong_function"


def test_labelled_optional_style():
    default = tool_signature(DOTTED[0])
    labelled = tool_signature(DOTTED[0], optional_style="labelled")
    assert ", exact?: boolean)" in default and "(optional)" not in default
    assert ", exact (optional): boolean)" in labelled and "?" not in labelled.split(" - ")[0]
    nested = {"name": "ship", "parameters": {"type": "object", "required": ["to"], "properties": {
        "to": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"},
                                                                       "zip": {"type": "string"}}}}}}
    assert tool_signature(nested, "labelled") == "ship(to: {city: string, zip (optional): string})"
    flat = flatten_tool_messages([{"role": "user", "content": "hi"}], DOTTED, optional_style="labelled")
    assert "exact (optional): boolean" in flat[0]["content"]
    with pytest.raises(ValueError, match="optional_style"):
        tool_signature(DOTTED[0], optional_style="bold")
