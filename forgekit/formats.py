"""Prompt formats: turn a conversation into text plus the character spans that are trained.

Two ways to format, as in LLMForge:

* Role templates (`generation_config.prompt_format` as a mapping, or a built-in name): `system`, `user`,
  `assistant` with `{instruction}` (the message text) and `{system}` (the rendered system message, for
  `system_in_user`), `bos` once at the start, `trailing_assistant` at generation time,
  `default_system_message` when an example has none. `role_format_to_jinja` turns these into a chat
  template, saved with the tokenizer so serving formats prompts exactly as training did.
* The tokenizer's own `chat_template` (the default when no prompt format is given). Assistant spans are found
  by rendering growing prefixes of the conversation; a template that rewrites earlier turns is rejected
  with a hint.

What is trained: the assistant text from the first character of its content to the end of its turn, so the
end-of-turn marker (`<|eot_id|>`, `<|im_end|>`, `</s>`, ...) is learnt and the model knows when to stop.
When an assistant template has no closing text at all (e.g. `passthrough`), the tokenizer's EOS token is
appended to each assistant turn (and, for `causal_lm`, to each document) for the same reason.

Tool calls: when the chat template supports `tools=`, it renders them; otherwise the conversation is first
flattened into forgekit's tagged format (`forgekit.toolcalling.render`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgekit.errors import ForgekitError

__all__ = [
    "BUILTIN_FORMATS",
    "FormatError",
    "Rendered",
    "render",
    "resolve_prompt_format",
    "role_format_to_jinja",
    "tokenize_rendered",
]


class PromptFormatConfig(BaseModel):
    """LLMForge role templates; `{instruction}` is the message text, `{system}` the rendered system text."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    system: str = Field("{instruction}", description="Template for a system message.")
    user: str = Field("{instruction}", description="Template for a user message; may contain {system}.")
    assistant: str = Field(
        "{instruction}",
        description="Template for an assistant message. The text from {instruction} to the end is trained.",
    )
    trailing_assistant: str = Field("", description="Appended after the last user turn at generation time.")
    bos: str = Field("", description="Prepended once to every example.")
    system_in_user: bool = Field(False, description="Render the system message inside the first user turn.")
    default_system_message: str = Field("", description="System text used when an example has none.")

    @model_validator(mode="after")
    def _slots(self) -> PromptFormatConfig:
        problems = []
        for name in ("system", "user", "assistant"):
            if "{instruction}" not in getattr(self, name):
                problems.append(f"{name}: template must contain '{{instruction}}'")
        if self.system_in_user and "{system}" not in self.user:
            problems.append("user: system_in_user is true, so the user template must contain '{system}'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class FormatError(ForgekitError, ValueError):
    """A conversation cannot be rendered with the chosen format."""


def _fmt(**kw: Any) -> PromptFormatConfig:
    return PromptFormatConfig(**kw)


_CHATML = {
    "system": "<|im_start|>system\n{instruction}<|im_end|>\n",
    "user": "<|im_start|>user\n{instruction}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{instruction}<|im_end|>\n",
    "trailing_assistant": "<|im_start|>assistant\n",
}

# Built-in role templates for popular families; each is tested against a known rendering.
BUILTIN_FORMATS: dict[str, PromptFormatConfig] = {
    # Llama 3 / 3.1 Instruct (3.1's official template also adds a knowledge-date line to the system turn)
    "llama3": _fmt(
        system="<|start_header_id|>system<|end_header_id|>\n\n{instruction}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>",
        assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{instruction}<|eot_id|>",
        trailing_assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        bos="<|begin_of_text|>",
    ),
    # Mistral Instruct v0.3 ([INST] turns; the system text goes into the first user turn)
    "mistral": _fmt(
        system="{instruction}\n\n",
        user="[INST] {system}{instruction}[/INST]",
        assistant=" {instruction}</s>",
        trailing_assistant="",
        bos="<s>",
        system_in_user=True,
    ),
    # Gemma 2 (no system role: the system text is prepended to the first user turn)
    "gemma2": _fmt(
        system="{instruction}\n\n",
        user="<start_of_turn>user\n{system}{instruction}<end_of_turn>\n",
        assistant="<start_of_turn>model\n{instruction}<end_of_turn>\n",
        trailing_assistant="<start_of_turn>model\n",
        bos="<bos>",
        system_in_user=True,
    ),
    "chatml": _fmt(**_CHATML),
    "qwen2.5": _fmt(**_CHATML, default_system_message="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "smollm2": _fmt(**_CHATML, default_system_message="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    # Pre-templated data (e.g. Llama Guard prompts): plain concatenation
    "passthrough": _fmt(),
}
BUILTIN_FORMATS["llama3.1"] = BUILTIN_FORMATS["llama3"]
BUILTIN_FORMATS["qwen2"] = BUILTIN_FORMATS["qwen2.5"]


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: the text and the [start, end) character spans that are trained."""

    text: str
    spans: tuple[tuple[int, int], ...]


def resolve_prompt_format(prompt_format: PromptFormatConfig | str | None, tokenizer: Any) -> PromptFormatConfig | None:
    """The role templates to use, or None for the tokenizer's chat template.

    Raises:
        FormatError: an unknown built-in name, or no format and a tokenizer without a chat template.
    """
    if isinstance(prompt_format, PromptFormatConfig):
        return prompt_format
    if isinstance(prompt_format, str):
        if prompt_format not in BUILTIN_FORMATS:
            import difflib

            near = difflib.get_close_matches(prompt_format, list(BUILTIN_FORMATS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise FormatError(
                f"generation_config.prompt_format: unknown built-in format '{prompt_format}'{hint}; "
                f"known: {', '.join(sorted(BUILTIN_FORMATS))}"
            )
        return BUILTIN_FORMATS[prompt_format]
    if not getattr(tokenizer, "chat_template", None):
        raise FormatError(
            "generation_config.prompt_format: the tokenizer has no chat_template; give role templates "
            "(system/user/assistant) or a built-in name such as 'passthrough' or 'chatml'"
        )
    return None


_SLOT = re.compile(r"\{(instruction|system)\}")


def _fill(template: str, instruction: str, system: str = "") -> str:
    values = {"instruction": instruction, "system": system}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def _needs_flattening(messages: list[dict], tools: list | None) -> bool:
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _flatten(messages: list[dict], tools: list | None) -> list[dict]:
    from forgekit.toolcalling.render import flatten_tool_messages

    return flatten_tool_messages(messages, tools)


def _generation_prefix(prefix: str) -> str:
    """The generation prompt when `trailing_assistant` is unset: the assistant prefix without trailing spaces.

    A space before the reply belongs to the reply's first token (`▁Hello`, `Ġ4`), which is what the model
    learnt to produce; a prompt ending in a space would make it start from a token it never saw there.
    """
    return _fill(prefix, "").rstrip(" ")


def _render_roles(
    messages: list[dict], fmt: PromptFormatConfig, eos: str, task: str, add_generation_prompt: bool, train_last_only: bool
) -> Rendered:
    msgs = list(messages)
    sys_content = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    if sys_content is None and fmt.default_system_message:
        sys_content = fmt.default_system_message
    rendered_sys = _fill(fmt.system, sys_content) if sys_content is not None else ""
    text = fmt.bos
    if rendered_sys and not fmt.system_in_user:
        text += rendered_sys
    prefix, suffix = fmt.assistant.split("{instruction}", 1)
    close = "" if suffix else eos  # a turn with no closing marker gets EOS so the model learns to stop
    spans = []
    first_user = True
    for m in msgs:
        role, content = m["role"], m.get("content") or ""
        if role == "user":
            text += _fill(fmt.user, content, rendered_sys if (fmt.system_in_user and first_user) else "")
            first_user = False
        elif role == "assistant":
            text += _fill(prefix, "")
            start = len(text)
            text += content + _fill(suffix, "") + close
            if m.get("weight", 1) != 0:  # weight 0: the turn is context, not trained (OpenAI / LLMForge)
                spans.append((start, start + len(content) if train_last_only else len(text)))
        else:
            raise FormatError(f"role '{role}' has no template (role templates know system, user, assistant)")
    if add_generation_prompt:
        text += fmt.trailing_assistant or _generation_prefix(prefix)
    if task == "causal_lm":
        if not suffix and not text.endswith(eos) and eos:
            text += eos
        spans = [(0, len(text))]
    return Rendered(text, tuple(spans))


def _render_chat_template(
    messages: list[dict], tokenizer: Any, tools: list | None, task: str, add_generation_prompt: bool, train_last_only: bool
) -> Rendered:
    kw = {"tools": tools} if tools else {}

    def apply(msgs: list[dict], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)

    text = apply(messages, add_generation_prompt)
    if task == "causal_lm":
        return Rendered(text, ((0, len(text)),))
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = apply(messages[:i], True)
        through = apply(messages[: i + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise FormatError(
                "the tokenizer's chat_template renders earlier turns differently as the conversation grows, so "
                "assistant spans cannot be located; Hint: set generation_config.prompt_format (role templates or "
                "a built-in name)"
            )
        if m.get("weight", 1) == 0:  # weight 0: the turn is context, not trained (OpenAI / LLMForge)
            continue
        content = m.get("content") or ""
        end = len(before) + len(content) if train_last_only else len(through)
        spans.append((len(before), end))
    return Rendered(text, tuple(spans))


def render(
    messages: list[dict],
    tokenizer: Any,
    fmt: PromptFormatConfig | None,
    *,
    tools: list | None = None,
    task: str = "instruction_tuning",
    add_generation_prompt: bool = False,
) -> Rendered:
    """Render a conversation and locate the trained spans.

    Args:
        messages: OpenAI-format messages.
        tokenizer: a transformers tokenizer (its chat template, EOS token, tool support).
        fmt: role templates, or None for the tokenizer's chat template.
        tools: OpenAI function specs offered in this conversation.
        task: `instruction_tuning` trains assistant turns; `causal_lm` trains everything; `classification`
            trains only the final assistant turn's label (its content, without the closing marker).
        add_generation_prompt: end with the assistant prefix (for generation).
    """
    if _needs_flattening(messages, tools):
        from forgekit.toolcalling.render import template_supports_tools

        if fmt is not None or not template_supports_tools(tokenizer):
            messages, tools = _flatten(messages, tools), None
    classification = task == "classification"
    if fmt is not None:
        out = _render_roles(messages, fmt, tokenizer.eos_token or "", task, add_generation_prompt, classification)
    else:
        out = _render_chat_template(messages, tokenizer, tools, task, add_generation_prompt, classification)
    if classification and out.spans:
        out = Rendered(out.text, out.spans[-1:])
    return out


def tokenize_rendered(rendered: Rendered, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where not trained) for a rendered conversation.

    A token is trained when any of its characters lies inside a trained span, so every character of a trained
    span is produced by a trained token. (SentencePiece-style tokenizers, e.g. Mistral's, fold the space
    before a word into the word's token: `[/INST] Hello` gives `▁Hello` starting at the space, outside the
    span; testing only the token's first character would never train the first word of a reply.) Special
    tokens written in the text (e.g. `<|im_start|>`) are recognised as such; no BOS/EOS is added beyond what
    the format wrote.
    """
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [-100] * len(ids)
    spans = [(s, e) for s, e in rendered.spans if e > s]  # an empty span trains nothing
    for k, (start, end) in enumerate(enc["offset_mapping"]):
        end = max(end, start + 1)  # a zero-width token counts at its position
        if any(start < e and end > s for s, e in spans):
            labels[k] = ids[k]
    return ids, labels


def _lit(text: str) -> str:
    return "{{ " + json.dumps(text) + " }}" if text else ""


def _jinja_template(template: str, instruction: str, system: str = "''") -> str:
    out = []
    for piece in re.split(r"(\{instruction\}|\{system\})", template):
        if piece == "{instruction}":
            out.append("{{ " + instruction + " }}")
        elif piece == "{system}":
            out.append("{{ " + system + " }}")
        else:
            out.append(_lit(piece))
    return "".join(out)


def role_format_to_jinja(fmt: PromptFormatConfig) -> str:
    """A chat template (Jinja) that renders exactly like `fmt`, for saving with the tokenizer."""
    prefix, suffix = fmt.assistant.split("{instruction}", 1)
    close = "" if suffix else "{{ eos_token }}"
    sys_render = _jinja_template(fmt.system, "sys")
    parts = [
        "{%- set ns = namespace(first_user=true, sys_text='') -%}",
        _lit(fmt.bos),
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set sys = messages[0]['content'] -%}"
        "{%- set msgs = messages[1:] -%}{%- else -%}{%- set msgs = messages -%}"
        f"{{%- set sys = {json.dumps(fmt.default_system_message) if fmt.default_system_message else 'none'} -%}}"
        "{%- endif -%}",
        "{%- if sys is not none -%}{%- set ns.sys_text -%}" + sys_render + "{%- endset -%}{%- endif -%}",
    ]
    if not fmt.system_in_user:
        parts.append("{{ ns.sys_text }}")
    user_sys = "(ns.sys_text if ns.first_user else '')" if fmt.system_in_user else "''"
    parts += [
        "{%- for m in msgs -%}",
        "{%- if m['role'] == 'user' -%}" + _jinja_template(fmt.user, "m['content']", user_sys)
        + "{%- set ns.first_user = false -%}",
        "{%- elif m['role'] == 'assistant' -%}"
        + _jinja_template(prefix, "''") + "{{ m['content'] }}" + _jinja_template(suffix, "''") + close,
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}"
        + _lit(fmt.trailing_assistant or _generation_prefix(prefix))
        + "{%- endif -%}",
    ]
    return "".join(parts)
