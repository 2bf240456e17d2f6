"""`forgekit generate CONFIG OUTPUT` (the Silogen engine's generate): a strict YAML config, prompt records in,
`prompt` / `answer` / `correct_answers` records out; greedy by default, sampling and stop strings when asked."""

from __future__ import annotations

import json

import pytest
import yaml

from forgekit.config import ConfigError
from forgekit.data import DataError
from forgekit.generate import generate, generate_from_config, load_for_generation, load_generate_config


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Name a colour of the sky.", "correct_answers": ["blue"]},
            {"messages": [{"role": "system", "content": "Answer in one word."},
                          {"role": "user", "content": "What is two plus two?"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_records_carry_prompt_answer_and_correct_answers_greedy_by_default(tiny_model_dir, tmp_path, capsys):
    from forgekit.cli import main

    prompts, rows = _prompts(tmp_path)
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "prompts": str(prompts),
                                      "sampling": {"max_new_tokens": 6}}))
    assert main(["generate", str(config), str(tmp_path / "out.yaml")]) == 0
    assert "wrote 2 answers" in capsys.readouterr().err
    records = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert [list(r) for r in records] == [["prompt", "answer", "correct_answers"], ["prompt", "answer"]]
    assert records[0]["prompt"] == rows[0]["prompt"] and records[0]["correct_answers"] == ["blue"]
    assert records[1]["prompt"] == rows[1]["messages"]
    # greedy: what generate() answers greedily for the same conversations
    loaded = load_for_generation(tiny_model_dir)
    want = generate(loaded, [[{"role": "user", "content": rows[0]["prompt"]}], rows[1]["messages"]], max_new_tokens=6)
    assert [r["answer"] for r in records] == want
    # JSONL by suffix, the same answers
    again = generate_from_config(config, tmp_path / "out.jsonl")
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == again == records


def test_sampling_and_stop_strings(embedded_model_dir, tmp_path):
    prompts, _ = _prompts(tmp_path)
    base = {"model": str(embedded_model_dir), "prompts": str(prompts)}
    greedy = generate_from_config({**base, "sampling": {"max_new_tokens": 12}}, tmp_path / "g.jsonl")
    sampled = [generate_from_config({**base, "seed": seed, "sampling": {"max_new_tokens": 12, "temperature": 1.5,
                                                                        "top_p": 0.95}}, tmp_path / "s.jsonl")
               for seed in (1, 2)]
    assert sampled[0] != greedy or sampled[1] != greedy  # a random model's 1.5-temperature samples differ
    first = greedy[0]["answer"]
    assert len(first.split()) >= 3, first  # SmolLM2 answers in words
    stop = first.split()[2]
    cut = generate_from_config({**base, "sampling": {"max_new_tokens": 12, "stop": [stop]}}, tmp_path / "c.jsonl")
    assert stop not in cut[0]["answer"] and first.startswith(cut[0]["answer"])


def test_the_config_is_strict_and_names_every_bad_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_generate_config({"model": "m", "prompt": "x.jsonl", "sampling": {"temperature": -1, "topp": 0.9},
                              "quant_conf": {"load_in_4bit": True, "load_in_8bit": True}})
    assert e.value.problems == [
        "prompts: required but missing",
        "sampling.temperature: Input should be greater than or equal to 0 (got -1)",
        "sampling.topp: unknown key (did you mean 'top_p'?)",
        "quant_conf: load_in_4bit and load_in_8bit are both true; choose one",
        "prompt: unknown key (did you mean 'prompts'?)",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no"}\nnot json\n')
    with pytest.raises(DataError) as d:
        generate_from_config({"model": "m", "prompts": str(bad)}, tmp_path / "o.yaml")
    assert d.value.problems == [f"{bad}:2: expected {{prompt: <text>}} or {{messages: [...]}}",
                                f"{bad}:3: invalid JSON: Expecting value"]


def test_an_adapter_on_its_base_and_quantized_loading(tiny_model_dir, tmp_path):
    """`adapter` is loaded on `model` (merged); with quant_conf the same prompts run on the 4-bit base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    prompts, _ = _prompts(tmp_path)
    torch.manual_seed(0)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(tmp_path / "a")
    base = {"model": str(tiny_model_dir), "prompts": str(prompts), "sampling": {"max_new_tokens": 5}}
    plain = generate_from_config(base, tmp_path / "p.jsonl")
    adapted = generate_from_config({**base, "adapter": str(tmp_path / "a")}, tmp_path / "a.jsonl")
    assert [r["answer"] for r in adapted] != [r["answer"] for r in plain]
    quant = {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    q = generate_from_config({**base, "adapter": str(tmp_path / "a"), "quant_conf": quant}, tmp_path / "q.jsonl")
    assert len(q) == 2 and all(isinstance(r["answer"], str) for r in q)
