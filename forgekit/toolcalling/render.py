"""Tool calls as plain chat text: flatten tool conversations into tagged messages, parse calls back out.

Most chat templates of small models (SmolLM2, Gemma 2, role templates from a config) know only `system`,
`user` and `assistant`. forgekit renders a tool conversation for them in one documented tagged format, used
the same way in training, generation and evaluation (`forgekit.formats.render` calls `flatten_tool_messages`
whenever the template cannot render `tools=` itself):

* the tools offered go into the system message (after the conversation's own system text, if any), one
  line each as a compact signature (about half the tokens of the JSON schema, which matters on a CPU)::

      To call tools, reply [TOOL_CALLS] [{"name": ..., "arguments": {...}}]; if none fits, answer in text.
      [TOOL_LIST]
      search_flights(origin: string, date: string /* YYYY-MM-DD */, cabin?: "economy" | "business") - Find flights
      [/TOOL_LIST]

  `?` marks an optional parameter (`optional_style="labelled"` writes `cabin (optional): ...` instead, which
  a small model may read more easily: a choice of the renderer, not yet of the training config); types are
  JSON-schema names (`string`, `integer`, `number`, `boolean`), `"a" | "b"` an enum, `T[]` an array,
  `{key: T}` an object; descriptions, defaults and formats go in `/* ... */` (see `tool_signature`). Each
  tool stays on one line whatever its texts hold (line breaks become spaces, a `*/` in a description is
  written `* /`), and names are written as given, dots included (`math.factorial`);
* an assistant turn that calls tools becomes an assistant message (so it is a trained span), its text (if
  any) followed by ``[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]``;
* `tool` results become a user message (so they are never trained: the model must not learn to invent
  them), one line per result: ``[TOOL_RESULT] {"name": "get_weather", "content": {...}} [/TOOL_RESULT]``;
  consecutive user-side messages are joined, so strictly alternating templates still render.

`parse_tool_calls` reads calls back out of a generation in this format, and also in the formats that
chat templates with native tool support produce (`<tool_call>{...}</tool_call>` as in Qwen 2.5 / Hermes, or
a bare JSON object as in Llama 3.1), so one evaluator serves both paths.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

__all__ = [
    "CALLS_TAG",
    "LIST_CLOSE",
    "LIST_OPEN",
    "OPTIONAL_STYLES",
    "RESULT_CLOSE",
    "RESULT_OPEN",
    "TOOL_INSTRUCTION",
    "call_arguments",
    "flatten_tool_messages",
    "for_chat_template",
    "format_calls",
    "function_spec",
    "parse_tool_calls",
    "template_supports_tools",
    "to_openai_tool_calls",
    "tool_signature",
]

CALLS_TAG = "[TOOL_CALLS]"
LIST_OPEN, LIST_CLOSE = "[TOOL_LIST]", "[/TOOL_LIST]"
RESULT_OPEN, RESULT_CLOSE = "[TOOL_RESULT]", "[/TOOL_RESULT]"
OPTIONAL_STYLES = ("?", "labelled")
OptionalStyle = Literal["?", "labelled"]
TOOL_INSTRUCTION = (
    f'To call tools, reply {CALLS_TAG} [{{"name": ..., "arguments": {{...}}}}]; if none fits, answer in text.'
)


def function_spec(tool: dict) -> dict:
    """The function spec of an OpenAI tool (`{"type": "function", "function": {...}}` or the bare spec).

    Raises:
        TypeError: the tool has no function name.
    """
    spec = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise TypeError(f"a tool must be {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r:.120}")
    return spec


def call_arguments(call: dict) -> dict:
    """The arguments of an OpenAI tool call as a dict (they are usually a JSON string).

    Raises:
        TypeError: the arguments are not a JSON object.
        json.JSONDecodeError: the arguments are not valid JSON.
    """
    fn = call.get("function", call)
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    if not isinstance(args, dict):
        raise TypeError(f"tool call {fn.get('name')!r}: arguments must be a JSON object, got {args!r:.80}")
    return args


def _type(schema: Any, style: OptionalStyle = "?") -> str:
    """A JSON schema as a TypeScript-like type."""
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return " | ".join(_dumps(v) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type(s, style) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(_type({**schema, "type": k}, style) for k in kind)
    if kind == "array":
        item = _type(schema.get("items"), style)
        return f"({item})[]" if " | " in item else f"{item}[]"
    if kind == "object" and schema.get("properties"):
        return "{" + _fields(schema, style) + "}"
    return kind if isinstance(kind, str) else "any"


def _one_line(text: str) -> str:
    """`text` on one line, safe inside `/* ... */`."""
    return " ".join(text.split()).replace("*/", "* /")


def _note(schema: Any) -> str:
    if not isinstance(schema, dict):
        return ""
    parts = [_one_line(schema["description"])] if isinstance(schema.get("description"), str) else []
    parts += [f"{k}: {_dumps(schema[k])}" for k in ("format", "default", "minimum", "maximum") if k in schema]
    parts = [p for p in parts if p]
    return f" /* {'; '.join(parts)} */" if parts else ""


def _fields(schema: dict, style: OptionalStyle = "?") -> str:
    required = set(schema.get("required") or [])

    def name_of(name: str) -> str:
        if name in required:
            return name
        return f"{name}?" if style == "?" else f"{name} (optional)"

    return ", ".join(
        f"{name_of(name)}: {_type(sub, style)}{_note(sub)}" for name, sub in (schema.get("properties") or {}).items()
    )


def tool_signature(tool: dict, optional_style: OptionalStyle = "?") -> str:
    """One line describing a tool: `name(param: type, optional?: type) - description`.

    Args:
        tool: an OpenAI tool or bare function spec; its name is written as given (dots included).
        optional_style: how optional parameters are marked: `"?"` (`cabin?: T`, the format forgekit trains
            with) or `"labelled"` (`cabin (optional): T`).
    """
    if optional_style not in OPTIONAL_STYLES:
        raise ValueError(f"optional_style: {optional_style!r}; expected one of {', '.join(OPTIONAL_STYLES)}")
    spec = function_spec(tool)
    params = spec.get("parameters") or {}
    line = f"{spec['name']}({_fields(params, optional_style) if isinstance(params, dict) else ''})"
    desc = _one_line(spec.get("description") or "")
    return f"{line} - {desc}" if desc else line


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def format_calls(calls: list[dict]) -> str:
    """`[TOOL_CALLS] [...]` for OpenAI tool calls or `{"name", "arguments"}` dicts."""
    plain = [{"name": c.get("function", c)["name"], "arguments": call_arguments(c)} for c in calls]
    return f"{CALLS_TAG} {_dumps(plain)}"


def _result_payload(content: Any) -> Any:
    """A tool result's content, as JSON when it is JSON text (so it is not escaped twice)."""
    if isinstance(content, str):
        try:
            return json.loads(content)
        except json.JSONDecodeError:
            return content
    return content


def flatten_tool_messages(
    messages: list[dict], tools: list | None, optional_style: OptionalStyle = "?"
) -> list[dict]:
    """Rewrite a tool conversation as plain system/user/assistant messages in forgekit's tagged format.

    Args:
        messages: OpenAI-format messages; assistant messages may carry `tool_calls`, `tool` messages the
            results (matched to their call by `tool_call_id`, else by position).
        tools: OpenAI function specs offered in the conversation (None or empty: no tool list is written).
        optional_style: how the tool list marks optional parameters (see `tool_signature`).

    Returns:
        New messages (the input is not modified) with only `system`, `user` and `assistant` roles.
    """
    out: list[dict] = []
    rest = list(messages)
    system = rest.pop(0)["content"] if rest and rest[0].get("role") == "system" else None
    if tools:
        listing = "\n".join(tool_signature(t, optional_style) for t in tools)
        tool_text = f"{TOOL_INSTRUCTION}\n{LIST_OPEN}\n{listing}\n{LIST_CLOSE}"
        system = f"{system}\n\n{tool_text}" if system else tool_text
    if system is not None:
        out.append({"role": "system", "content": system})

    names_by_id: dict[str, str] = {}
    pending: list[str] = []  # names of the last assistant turn's calls, for results without an id

    def add(role: str, content: str) -> None:
        if role == "user" and out and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})

    for m in rest:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            names = [c.get("function", c)["name"] for c in calls]
            names_by_id.update({c["id"]: n for c, n in zip(calls, names) if c.get("id")})
            pending = list(names)
            text = (m.get("content") or "").strip()
            add("assistant", f"{text}\n{format_calls(calls)}" if text else format_calls(calls))
        elif role == "tool":
            name = names_by_id.get(m.get("tool_call_id") or "") or m.get("name")
            if name is None and pending:
                name = pending[0]
            if name in pending:
                pending.remove(name)
            payload = {"name": name, "content": _result_payload(m.get("content"))} if name else {
                "content": _result_payload(m.get("content"))
            }
            add("user", f"{RESULT_OPEN} {_dumps(payload)} {RESULT_CLOSE}")
        else:
            add(role, m.get("content") or "")
    return out


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a `tools` list itself (it references `tools`)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates (older transformers): the "tool_use" one, else any
        template = template.get("tool_use") or " ".join(template.values())
    return bool(template) and re.search(r"\btools\b", template) is not None


def for_chat_template(messages: list[dict]) -> list[dict]:
    """Messages as Hugging Face chat templates expect them: tool-call arguments as dicts, not JSON text.

    OpenAI data stores `function.arguments` as a JSON string; templates with tool support render it with
    `| tojson`, which would quote the string a second time.
    """
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [
                {**c, "type": c.get("type", "function"),
                 "function": {"name": c.get("function", c)["name"], "arguments": call_arguments(c)}}
                for c in m["tool_calls"]
            ]
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


_DECODER = json.JSONDecoder()
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_BARE_CALL = re.compile(r'^\s*\[?\s*\{\s*"name"\s*:')


def _normalise_calls(value: Any) -> tuple[list[dict] | None, str | None]:
    items = value if isinstance(value, list) else [value]
    if not items:
        return None, "empty list of calls"
    calls = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            return None, f"call {i} is not a JSON object"
        fn = item.get("function", item) if isinstance(item.get("function"), dict) else item
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            return None, f"call {i} has no name"
        try:
            args = call_arguments(fn)
        except (TypeError, ValueError) as e:
            return None, f"call {i} ({name}): {e}"
        calls.append({"name": name, "arguments": args})
    return calls, None


def parse_tool_calls(text: str) -> tuple[list[dict] | None, str | None]:
    """Tool calls in a generation.

    Recognises forgekit's `[TOOL_CALLS] [...]`, `<tool_call>{...}</tool_call>` blocks (Qwen 2.5, Hermes)
    and a generation that is a bare JSON call object or list (Llama 3.1); `"parameters"` is accepted for
    `"arguments"`, and arguments given as JSON text are decoded.

    Args:
        text: the generated assistant text (special tokens already removed).

    Returns:
        `(calls, None)` with calls as `[{"name": str, "arguments": dict}]`; `(None, None)` when the text makes
        no call; `(None, error)` when it tries to call but the call cannot be read (malformed).
    """
    if CALLS_TAG in text:
        rest = text.split(CALLS_TAG, 1)[1].lstrip()
        if not rest:
            return None, f"nothing after {CALLS_TAG}"
        try:
            value, _ = _DECODER.raw_decode(rest)
        except json.JSONDecodeError as e:
            return None, f"invalid JSON after {CALLS_TAG}: {e.msg} at column {e.colno}"
        return _normalise_calls(value)
    blocks = _HERMES.findall(text)
    if blocks:
        calls: list[dict] = []
        for block in blocks:
            try:
                value = json.loads(block)
            except json.JSONDecodeError as e:
                return None, f"invalid JSON in <tool_call>: {e.msg} at column {e.colno}"
            found, error = _normalise_calls(value)
            if error:
                return None, error
            calls.extend(found)
        return calls, None
    if _BARE_CALL.match(text):
        try:
            value, _end = _DECODER.raw_decode(text.strip())
        except json.JSONDecodeError as e:
            return None, f"invalid JSON call: {e.msg} at column {e.colno}"
        return _normalise_calls(value)
    return None, None


def to_openai_tool_calls(calls: list[dict], id_prefix: str = "call") -> list[dict]:
    """Parsed `{"name", "arguments"}` calls as OpenAI `tool_calls` (arguments as JSON text)."""
    return [
        {"id": f"{id_prefix}_{i}", "type": "function",
         "function": {"name": c["name"], "arguments": _dumps(c["arguments"])}}
        for i, c in enumerate(calls)
    ]
