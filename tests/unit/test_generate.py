"""Generation from base models, LoRA adapters and full checkpoints; batching; the `forgekit generate` command."""

from __future__ import annotations

import json

import pytest
import torch

from forgekit.generate import GenerationError, default_dtype, generate, load_for_generation, render_prompt

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour of the sky."}],
    [{"role": "user", "content": "Count from one to five, then say which number is the largest of them all."}],
]


def test_embedded_model_answers_and_stops(embedded_model_dir):
    model, tok = load_for_generation(embedded_model_dir)
    [text] = generate((model, tok), [[{"role": "user", "content": "What is the capital of France?"}]],
                      max_new_tokens=40)
    assert "Paris" in text
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    assert n_tokens < 40 and "<|im_end|>" not in text and "<|im_start|>" not in text  # stopped at end of turn


def test_left_padded_batches_match_one_by_one(tiny_model_dir):
    loaded = load_for_generation(tiny_model_dir)
    assert loaded[1].padding_side == "left" and not loaded[0].training
    batched = generate(loaded, CONVERSATIONS, max_new_tokens=6, batch_size=3)
    single = generate(loaded, CONVERSATIONS, max_new_tokens=6, batch_size=1)
    assert batched == single and all(isinstance(t, str) for t in batched)


def test_per_row_budgets_and_stop_when(tiny_model_dir):
    loaded = load_for_generation(tiny_model_dir)
    tok = loaded[1]
    n_tokens = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])
    texts = generate(loaded, CONVERSATIONS, max_new_tokens=[3, 12, 20], batch_size=3)
    full = generate(loaded, CONVERSATIONS, max_new_tokens=20, batch_size=3)
    assert [n_tokens(t) <= b + 1 for t, b in zip(texts, (3, 12, 20))] == [True] * 3
    assert texts[2] == full[2] and full[0].startswith(texts[0])  # budgets cut, never change, a generation
    stopped = generate(loaded, CONVERSATIONS, max_new_tokens=20, batch_size=3, stop_when=lambda text, n: n >= 8)
    assert all(full[i].startswith(stopped[i]) and n_tokens(stopped[i]) <= 9 for i in range(3))


def test_a_stop_string_saved_with_a_checkpoint_ends_the_generation_before_it(embedded_model_dir, tmp_path):
    """generation_config.json's stop_strings (a run's stopping_sequences): generation stops there, text cut before."""
    question = [[{"role": "user", "content": "What is the capital of France?"}]]
    [full] = generate(load_for_generation(embedded_model_dir), question, max_new_tokens=40)
    assert "Paris" in full
    ckpt = tmp_path / "ckpt"  # the embedded model with a generation_config.json that has stop strings
    ckpt.mkdir()
    for f in embedded_model_dir.iterdir():
        if f.name != "generation_config.json":
            (ckpt / f.name).symlink_to(f)
    gen = json.loads((embedded_model_dir / "generation_config.json").read_text())
    (ckpt / "generation_config.json").write_text(json.dumps({**gen, "stop_strings": ["Paris"]}))
    loaded = load_for_generation(ckpt)
    assert loaded[0].generation_config.stop_strings == ["Paris"]
    [cut] = generate(loaded, question, max_new_tokens=40)
    assert cut == full.split("Paris", 1)[0].strip() and cut


def test_prompt_uses_the_checkpoint_template_with_tools(tokenizer):
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    prompt = render_prompt([{"role": "user", "content": "Time?"}], tokenizer, tools)
    assert "[TOOL_LIST]\nget_time()\n[/TOOL_LIST]" in prompt and prompt.endswith("<|im_start|>assistant\n")


def test_lora_adapter_is_loaded_merged_with_its_tokenizer(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"  # the "training" format
    tok.save_pretrained(adapter)

    model, loaded_tok = load_for_generation(adapter, dtype=torch.float32)
    assert loaded_tok.chat_template == tok.chat_template
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = peft_model.eval()(ids).logits
        assert torch.allclose(model(ids).logits, expected, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits, expected)


def test_default_dtype_and_threads(tiny_model_dir, monkeypatch):
    import forgekit.hardware

    assert default_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(forgekit.hardware, "cpu_has_bf16", lambda: False)
    assert default_dtype("cpu") == torch.float32
    monkeypatch.setattr(forgekit.hardware, "cpu_has_bf16", lambda: True)
    assert default_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("FORGEKIT_GENERATE_DTYPE", "float32")
    assert default_dtype("cpu") == torch.float32
    loaded = load_for_generation(tiny_model_dir)
    assert loaded[0].dtype == torch.float32

    before = torch.get_num_threads()
    one = generate(loaded, CONVERSATIONS[:2], max_new_tokens=4, num_threads=1)
    assert torch.get_num_threads() == before  # restored
    assert one == generate(loaded, CONVERSATIONS[:2], max_new_tokens=4)


def test_adapter_without_base_is_an_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(GenerationError, match="base_model_name_or_path"):
        load_for_generation(tmp_path)


def test_cli_generate(tiny_model_dir, tmp_path, capsys):
    from forgekit.cli import main

    src = tmp_path / "in.jsonl"
    rows = [
        {"messages": CONVERSATIONS[0]},
        {"messages": [*CONVERSATIONS[1], {"role": "assistant", "content": "Blue."}]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["generate", str(tiny_model_dir), str(src), "-o", str(out), "--max-new-tokens", "4"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["response"]["role"] for g in got] == ["assistant", "assistant"]
    assert "reference" not in got[0] and got[1]["reference"] == {"role": "assistant", "content": "Blue."}
    assert got[1]["messages"] == CONVERSATIONS[1]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    assert main(["generate", str(tiny_model_dir), str(bad)]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
