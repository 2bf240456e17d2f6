"""`quant_conf` (QLoRA): checked key by key against BitsAndBytesConfig, the machine check, the memory estimate, and a
4-bit LoRA that trains on a CPU through peft's k-bit preparation."""

from __future__ import annotations

import itertools

import pytest
import torch

from forgekit.config import ConfigError, load_config
from forgekit.quantization import bnb_config, quantization_problems, quantized_weight_bytes

BASE = {"model_id": "m", "train_path": "t.jsonl", "lora_config": {"r": 8, "target_modules": "all-linear"}}
QLORA = {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_compute_dtype": "float32",
         "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


def _problems(**data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config({**BASE, **data})
    return e.value.problems


def test_the_silogen_section_is_accepted_as_written_and_every_bad_key_is_named():
    cfg = load_config({**BASE, "quant_conf": {**QLORA, "bnb_4bit_quant_storage": "bfloat16"}})
    assert cfg.quant_conf["bnb_4bit_quant_type"] == "nf4"
    assert _problems(quant_conf={"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4", "bnb_4bit_quant_type": "nf5",
                                 "quantization_type": "gptq", "bnb_4bit_compute_dtype": "bf16"}) == [
        "quant_conf.bnb_4bit_quant_typ: not a transformers BitsAndBytesConfig field (did you mean "
        "'bnb_4bit_quant_type'?)",
        "quant_conf.bnb_4bit_quant_type: expected one of 'nf4', 'fp4' (got 'nf5')",
        "quant_conf.quantization_type: expected one of bits-and-bytes (got 'gptq'); forgekit quantizes with "
        "bitsandbytes only",
        "quant_conf.bnb_4bit_compute_dtype: expected one of 'bfloat16', 'float16', 'float32' or null (got 'bf16')",
    ]
    assert _problems(quant_conf={"load_in_4bit": True, "load_in_8bit": True}) == [
        "quant_conf: load_in_4bit and load_in_8bit are both true; choose one"]
    assert _problems(quant_conf={"load_in_8bit": True, "bnb_4bit_quant_type": "nf4"}) == [
        "quant_conf.bnb_4bit_quant_type: only used with load_in_4bit (load_in_8bit is set)"]
    assert "quantizes nothing" in _problems(quant_conf={"quantization_type": "bits-and-bytes"})[0]
    assert _problems(quant_conf={"llm_int8_threshold": "high", "load_in_8bit": True}) == [
        "quant_conf.llm_int8_threshold: expected float (got 'high')"]


def test_full_fine_tuning_of_a_quantized_base_is_an_error_reported_with_the_other_problems():
    data = {k: v for k, v in BASE.items() if k != "lora_config"}
    with pytest.raises(ConfigError) as e:
        load_config({**data, "learning_rate": -1, "quant_conf": QLORA})
    assert e.value.problems[0].startswith("learning_rate:")
    assert e.value.problems[1].startswith("quant_conf: a quantized base model cannot be fully fine-tuned")
    # default mode's LoRA makes it a QLoRA run
    assert load_config({**data, "quant_conf": QLORA}, default=True).is_lora


def test_bnb_config_and_the_machine_check(monkeypatch):
    q = bnb_config({**QLORA, "bnb_4bit_compute_dtype": None}, compute_dtype=torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16  # the run's dtype where the section names none
    assert bnb_config(QLORA).bnb_4bit_compute_dtype == torch.float32
    assert bnb_config(None) is None
    assert bnb_config({"load_in_8bit": True}).load_in_8bit
    assert quantization_problems(QLORA, use_gpu=False) == []  # this bitsandbytes runs 4-bit layers on CPUs
    assert quantization_problems({"load_in_8bit": True}, use_gpu=False) == []
    [zero3] = quantization_problems(QLORA, use_gpu=None, zero_stage=3)
    assert zero3.startswith("quant_conf.bnb_4bit_quant_storage: DeepSpeed ZeRO-3 shards 4-bit weights only")
    assert quantization_problems({**QLORA, "bnb_4bit_quant_storage": "bfloat16"}, use_gpu=None, zero_stage=3) == []
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    [missing] = quantization_problems(QLORA, use_gpu=False)
    assert missing.startswith("quant_conf: needs bitsandbytes, which is not installed")
    assert "pip install 'forgekit[quant]' (bitsandbytes==0.50.2)" in missing


@pytest.mark.parametrize("quant", [QLORA, {**QLORA, "bnb_4bit_use_double_quant": False}, {"load_in_8bit": True}],
                         ids=["nf4-double", "nf4", "int8"])
def test_the_weight_estimate_matches_what_bitsandbytes_allocates(tiny_model_dir, quant):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    estimate = quantized_weight_bytes(config, quant, dtype_bytes=4)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert estimate["unquantized"] == plain.get_memory_footprint()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, device_map="cpu",
                                                 quantization_config=bnb_config(quant))
    real = model.get_memory_footprint()
    assert abs(estimate["quantized"] - real) <= 0.01 * real, (estimate, real)
    linear = sum(m.weight.numel() for n, m in plain.named_modules()
                 if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert estimate["quantized_params"] == linear > 0


def test_qlora_trains_on_a_cpu_and_merges_into_the_unquantized_base(tiny_model_dir, tokenizer, tmp_path):
    """The tiny model in 4 bits (nf4, double quantization), peft's k-bit preparation, LoRA, AdamW: the loss falls;
    the adapter then merges into the float32 base (`forgekit merge`), which checks the logits."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from forgekit.export import merge_checkpoint

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, device_map="cpu",
                                                 quantization_config=bnb_config(QLORA))
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = tokenizer(["The ticket was routed to billing because the invoice was wrong."] * 2, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    model.train()
    for _ in range(8):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < losses[0] - 0.3, losses
    ckpt = tmp_path / "step-000008"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    info = merge_checkpoint(ckpt, tmp_path / "merged", dtype="float32")
    assert info["kind"] == "merged_lora" and info["max_abs_logit_diff"] < 1e-3
