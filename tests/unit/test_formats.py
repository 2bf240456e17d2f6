"""Tests for forgekit.formats: built-in formats render known strings, role templates, trained spans and masks.

Expected strings are written by hand from each family's published chat format, not produced by the code
under test. The tokenizer is SmolLM2's (real, from the embedded model); rendering is text-only, so formats
of other families are checked as text and their markers need not be tokens of this vocabulary.
"""

from __future__ import annotations

import pytest

from forgekit.config import PromptFormatConfig
from forgekit.formats import (
    BUILTIN_FORMATS,
    FormatError,
    Rendered,
    render,
    resolve_prompt_format,
    role_format_to_jinja,
    tokenize_rendered,
)

SYS = {"role": "system", "content": "You are terse."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
CONV = [SYS, *TURNS]

# (format, conversation, expected text). Llama 3.1's official template additionally writes a knowledge-date
# line into the system turn; forgekit's llama3.1 format, like LLMForge's, leaves it out.
KNOWN = [
    (
        "llama3",
        CONV,
        (
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        ),
    ),
    (
        "llama3.1",
        TURNS,
        (
            "<|begin_of_text|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
        ),
    ),
    # Mistral Instruct v0.3, exactly as its tokenizer's template renders a conversation without a system turn
    ("mistral", TURNS, "<s>[INST] Hi[/INST] Hello!</s>[INST] 2+2?[/INST] 4</s>"),
    # ... and with one: forgekit puts the system text at the top of the first user turn
    ("mistral", CONV, "<s>[INST] You are terse.\n\nHi[/INST] Hello!</s>[INST] 2+2?[/INST] 4</s>"),
    (
        "gemma2",
        TURNS,
        (
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
        ),
    ),
    # Gemma 2 has no system role: the system text opens the first user turn
    (
        "gemma2",
        CONV,
        (
            "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
        ),
    ),
    (
        "chatml",
        CONV,
        (
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
            "<|im_start|>assistant\n4<|im_end|>\n"
        ),
    ),
    # plain ChatML adds no system turn of its own
    (
        "chatml",
        TURNS[:2],
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
    ),
    # Qwen 2.5 writes its default system message when the conversation has none
    (
        "qwen2.5",
        TURNS[:2],
        (
            "<|im_start|>system\n"
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        ),
    ),
    (
        "qwen2.5",
        [SYS, *TURNS[:2]],
        (
            "<|im_start|>system\nYou are terse.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        ),
    ),
    (
        "smollm2",
        TURNS[:2],
        (
            "<|im_start|>system\n"
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        ),
    ),
    # pass-through: plain concatenation; the assistant template closes nothing, so the EOS token
    # (SmolLM2's is <|im_end|>) ends each assistant turn
    ("passthrough", CONV, "You are terse.HiHello!<|im_end|>2+2?4<|im_end|>"),
]

# (format, the text each assistant span covers: its content through the end-of-turn marker)
END_OF_TURN = {
    "llama3": "<|eot_id|>",
    "llama3.1": "<|eot_id|>",
    "mistral": "</s>",
    "gemma2": "<end_of_turn>\n",
    "chatml": "<|im_end|>\n",
    "qwen2.5": "<|im_end|>\n",
    "qwen2": "<|im_end|>\n",
    "smollm2": "<|im_end|>\n",
    "passthrough": "<|im_end|>",
}

# text appended by add_generation_prompt after a conversation that ends with a user turn
GENERATION_PROMPT = {
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma2": "<start_of_turn>model\n",
    "chatml": "<|im_start|>assistant\n",
    "smollm2": "<|im_start|>assistant\n",
}


@pytest.mark.parametrize(
    ("name", "messages", "expected"), KNOWN, ids=[f"{k[0]}-{len(k[1])}msgs" for k in KNOWN]
)
def test_builtin_format_renders_known_string(tokenizer, name, messages, expected):
    assert render(messages, tokenizer, resolve_prompt_format(name, tokenizer)).text == expected


def test_every_builtin_format_is_covered():
    assert {k[0] for k in KNOWN} | {"qwen2"} == set(BUILTIN_FORMATS) == set(END_OF_TURN)
    assert BUILTIN_FORMATS["llama3.1"] == BUILTIN_FORMATS["llama3"]
    assert BUILTIN_FORMATS["qwen2"] == BUILTIN_FORMATS["qwen2.5"]


@pytest.mark.parametrize("messages", [CONV, TURNS, TURNS[:2]])
def test_smollm2_format_equals_the_tokenizers_own_template(tokenizer, messages):
    ours = render(messages, tokenizer, BUILTIN_FORMATS["smollm2"]).text
    assert ours == tokenizer.apply_chat_template(messages, tokenize=False)
    ours = render(messages[:-1], tokenizer, BUILTIN_FORMATS["smollm2"], add_generation_prompt=True).text
    assert ours == tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_trained_spans_are_assistant_content_through_end_of_turn(tokenizer, name):
    out = render(CONV, tokenizer, BUILTIN_FORMATS[name])
    eot = END_OF_TURN[name]
    assert [out.text[s:e] for s, e in out.spans] == ["Hello!" + eot, "4" + eot]


@pytest.mark.parametrize("name", sorted(GENERATION_PROMPT))
def test_generation_prompt(tokenizer, name):
    fmt = BUILTIN_FORMATS[name]
    without = render(TURNS[:3], tokenizer, fmt).text
    with_prompt = render(TURNS[:3], tokenizer, fmt, add_generation_prompt=True).text
    assert with_prompt == without + GENERATION_PROMPT[name]


def test_mistral_generation_prompt_ends_at_the_instruction(tokenizer):
    # as Mistral's own template: the space before a reply is part of the reply's first token (`▁4`), so the
    # prompt must not end with it
    text = render(TURNS[:3], tokenizer, BUILTIN_FORMATS["mistral"], add_generation_prompt=True).text
    assert text == "<s>[INST] Hi[/INST] Hello!</s>[INST] 2+2?[/INST]"


# --- LLMForge role templates (a Llama-2-style format exercising every field)
LLAMA2 = PromptFormatConfig(
    system="<<SYS>>\n{instruction}\n<</SYS>>\n\n",
    user="[INST] {system}{instruction} [/INST]",
    assistant=" {instruction} </s>",
    trailing_assistant=" ",
    bos="<s>",
    system_in_user=True,
    default_system_message="Be kind.",
)


def test_role_templates_system_in_user_goes_into_first_user_turn_only(tokenizer):
    out = render(CONV, tokenizer, LLAMA2)
    assert out.text == (
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] 2+2? [/INST] 4 </s>"
    )


def test_role_templates_default_system_message_when_none_given(tokenizer):
    out = render(TURNS, tokenizer, LLAMA2)
    assert (
        out.text
        == "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] 2+2? [/INST] 4 </s>"
    )
    assert [out.text[s:e] for s, e in out.spans] == ["Hello! </s>", "4 </s>"]


def test_role_templates_separate_system_turn_and_bos(tokenizer):
    fmt = PromptFormatConfig(
        system="### System: {instruction}\n",
        user="### User: {instruction}\n",
        assistant="### Assistant: {instruction}\n",
        bos="<BOS>",
        default_system_message="Default.",
    )
    assert render(CONV[:3], tokenizer, fmt).text == (
        "<BOS>### System: You are terse.\n### User: Hi\n### Assistant: Hello!\n"
    )
    # no system message in the example: the default one is rendered with the system template
    assert (
        render(TURNS[:2], tokenizer, fmt).text
        == "<BOS>### System: Default.\n### User: Hi\n### Assistant: Hello!\n"
    )
    # without default_system_message nothing is rendered for the missing system turn
    bare = fmt.model_copy(update={"default_system_message": ""})
    assert render(TURNS[:2], tokenizer, bare).text == "<BOS>### User: Hi\n### Assistant: Hello!\n"
    # trailing_assistant unset: the generation prompt is the assistant template's prefix, trailing space left
    # to the reply's first token
    assert render(TURNS[:1], tokenizer, fmt, add_generation_prompt=True).text.endswith(
        "### User: Hi\n### Assistant:"
    )


FORMATS = {**BUILTIN_FORMATS, "llama2-style": LLAMA2}
SHAPES = {"with-system": CONV, "no-system": TURNS, "open": CONV[:4], "open-no-system": TURNS[:3]}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(FORMATS))
def test_saved_chat_template_renders_exactly_like_the_role_templates(tokenizer, name, shape):
    messages = SHAPES[shape]
    gen = messages[-1]["role"] == "user"
    jinja = role_format_to_jinja(FORMATS[name])
    expected = render(messages, tokenizer, FORMATS[name], add_generation_prompt=gen).text
    assert (
        tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=gen
        )
        == expected
    )


# --- resolving a format
def test_unknown_builtin_name_suggests_the_nearest(tokenizer):
    with pytest.raises(FormatError, match=r"unknown built-in format 'lama3' \(did you mean 'llama3'\?\)"):
        resolve_prompt_format("lama3", tokenizer)


def test_no_format_uses_the_chat_template_and_needs_one(tokenizer):
    assert resolve_prompt_format(None, tokenizer) is None

    class NoTemplate:
        chat_template = None

    with pytest.raises(FormatError, match="has no chat_template"):
        resolve_prompt_format(None, NoTemplate())


def test_chat_template_spans(tokenizer):
    out = render(CONV, tokenizer, None)
    assert out.text == render(CONV, tokenizer, BUILTIN_FORMATS["smollm2"]).text
    assert [out.text[s:e] for s, e in out.spans] == ["Hello!<|im_end|>\n", "4<|im_end|>\n"]


def test_chat_template_that_rewrites_earlier_turns_is_rejected_with_hint(tokenizer):
    # renders the number of messages first: every earlier prefix changes as the conversation grows
    template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"

    class Tok:
        chat_template = template
        eos_token = "</s>"

        def apply_chat_template(self, messages, **kw):
            return tokenizer.apply_chat_template(messages, chat_template=template, **kw)

    with pytest.raises(FormatError, match="Hint: set generation_config.prompt_format"):
        render(TURNS, Tok(), None)


# --- tasks: what is trained
def _trained_text(tok, messages, fmt, task="instruction_tuning") -> str:
    ids, labels = tokenize_rendered(render(messages, tok, fmt, task=task), tok)
    assert len(ids) == len(labels)
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    return tok.decode([i for i, lab in zip(ids, labels) if lab != -100])


@pytest.mark.parametrize("fmt", [None, BUILTIN_FORMATS["smollm2"]], ids=["chat_template", "role_templates"])
def test_instruction_tuning_trains_assistant_turns_and_their_end_of_turn_token(tokenizer, fmt):
    ids, labels = tokenize_rendered(render(CONV, tokenizer, fmt), tokenizer)
    assert _trained_text(tokenizer, CONV, fmt) == "Hello!<|im_end|>\n4<|im_end|>\n"
    # the end-of-turn token, which is SmolLM2's EOS, is trained after each reply: the model learns to stop
    eos = tokenizer.eos_token_id
    trained_eos = [k for k, (i, lab) in enumerate(zip(ids, labels)) if i == eos and lab == eos]
    assert len(trained_eos) == 2
    assert sum(i == eos for i in ids) == 5  # system, two user and two assistant turns each end with it


def test_passthrough_appends_and_trains_eos(tokenizer):
    assert _trained_text(tokenizer, CONV, BUILTIN_FORMATS["passthrough"]) == "Hello!<|im_end|>4<|im_end|>"


@pytest.mark.parametrize("fmt", [None, BUILTIN_FORMATS["chatml"], BUILTIN_FORMATS["passthrough"]])
def test_causal_lm_trains_every_token(tokenizer, fmt):
    ids, labels = tokenize_rendered(render(CONV, tokenizer, fmt, task="causal_lm"), tokenizer)
    assert labels == ids


def test_causal_lm_passthrough_document_ends_with_eos(tokenizer):
    doc = [{"role": "user", "content": "Once upon a time."}]
    out = render(doc, tokenizer, BUILTIN_FORMATS["passthrough"], task="causal_lm")
    assert out.text == "Once upon a time.<|im_end|>"
    assert out.spans == ((0, len(out.text)),)


@pytest.mark.parametrize(
    "fmt", [None, BUILTIN_FORMATS["chatml"], LLAMA2], ids=["chat_template", "chatml", "llama2"]
)
def test_classification_trains_only_the_final_label(tokenizer, fmt):
    messages = [
        {"role": "user", "content": "My parcel is late"},
        {"role": "assistant", "content": "delivery"},
        {"role": "user", "content": "It arrived broken"},
        {"role": "assistant", "content": "damaged"},
    ]
    out = render(messages, tokenizer, fmt, task="classification")
    assert [out.text[s:e] for s, e in out.spans] == ["damaged"]  # not the earlier label, not the end-of-turn


def test_first_word_of_a_reply_is_trained_with_sentencepiece_offsets():
    """A Metaspace (SentencePiece-style) tokenizer folds the space before a word into its token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "▁Hi", "▁Hello", "!"]
    core = Tokenizer(
        models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="<unk>", continuing_subword_prefix="")
    )
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["[INST]", "[/INST]"],
    )
    rendered = render(TURNS[:2], tok, BUILTIN_FORMATS["mistral"])
    ids, labels = tokenize_rendered(rendered, tok)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == ["<s>", "[INST]", "▁Hi", "[/INST]", "▁Hello", "!", "</s>"]
    assert [t for t, lab in zip(tokens, labels) if lab != -100] == ["▁Hello", "!", "</s>"]


def test_a_token_overlapping_a_span_is_trained_and_others_are_not(tokenizer):
    # spans given by hand: only "World" of "Hello World" is trained
    text = "Hello World"
    ids, labels = tokenize_rendered(Rendered(text, ((6, 11),)), tokenizer)
    assert tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100]) == " World"
    assert labels[0] == -100
