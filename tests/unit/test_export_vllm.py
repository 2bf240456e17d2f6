"""`forgekit export vllm`: an adapter directory vLLM's LoRA loader takes, loaded back with peft onto the base and
compared with the original adapter; adapters vLLM cannot serve are flagged; `forgekit merge --max-shard-size`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from forgekit.export import ExportError, check_vllm_adapter, export_vllm, merge_checkpoint

IDS = torch.tensor([[1, 2, 3, 4, 5, 6]])
TEMPLATE = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"


def _adapter(tiny_model_dir, path, *, new_tokens=(), save_embedding_layers="auto", **lora):
    """A LoRA adapter with non-zero weights saved as peft saves it, its tokenizer (training chat template), and the
    adapter model's logits on IDS (plus the new tokens' ids)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TEMPLATE
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if new_tokens:  # as forgekit.train does for classification labels
        tok.add_special_tokens({"additional_special_tokens": list(new_tokens)})
        base.resize_token_embeddings(len(tok), mean_resizing=True)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, **lora))
    model.save_pretrained(path, save_embedding_layers=save_embedding_layers)
    tok.save_pretrained(path)
    ids = torch.cat([IDS, torch.tensor([tok.convert_tokens_to_ids(list(new_tokens))])], dim=1) if new_tokens else IDS
    with torch.no_grad():
        return model.eval()(ids).logits, ids


def _logits_of(path, ids):
    from forgekit.generate import load_adapter

    model, _, _ = load_adapter(path, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(ids).logits


def _tensor_names(path):
    with safe_open(path / "adapter_model.safetensors", framework="pt") as f:
        return set(f.keys())


def test_untrained_embedding_copies_go_and_the_adapter_computes_what_it_did(tiny_model_dir, tmp_path):
    """peft saved full embedding weights beside the LoRA (save_embedding_layers) and a modules_to_save copy of the
    embedding that was never trained: both removed, modules_to_save cleared; peft's logits unchanged."""
    ckpt = tmp_path / "step-000010"
    want, ids = _adapter(tiny_model_dir, ckpt, save_embedding_layers=True, modules_to_save=["embed_tokens"])
    assert any(not k.endswith(("lora_A.weight", "lora_B.weight")) for k in _tensor_names(ckpt))
    info = export_vllm(ckpt, tmp_path / "vllm")
    out = tmp_path / "vllm"
    assert info["vllm_ready"] and info["problems"] == [] and info["kept"] == [] and info["removed"]
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in _tensor_names(out))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and cfg["r"] == 4
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} >= {"q_proj", "down_proj"}
    assert torch.allclose(_logits_of(out, ids), want, atol=1e-5)
    assert torch.allclose(_logits_of(ckpt, ids), want, atol=1e-5)
    # the tokenizer and the training chat template beside it; the serve command points vLLM at the template
    assert (out / "tokenizer_config.json").is_file() and (out / "chat_template.jinja").read_text() == TEMPLATE
    assert info["serve"].startswith(f"vllm serve {tiny_model_dir} --enable-lora --lora-modules vllm=")
    assert "--chat-template" in info["serve"] and "--max-lora-rank" not in info["serve"]  # r=4 fits the default 16
    assert json.loads((out / "forgekit_export.json").read_text()) == info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000010", "vllm"]


def test_an_extended_vocabulary_is_kept_and_flagged_as_needing_the_merged_model(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    want, ids = _adapter(tiny_model_dir, ckpt, new_tokens=("<billing>", "<shipping>"))
    info = export_vllm(ckpt, tmp_path / "vllm")
    out = tmp_path / "vllm"
    assert not info["vllm_ready"] and info["serve"] is None and info["kept"] and not info["removed"]
    assert any("the vocabulary was extended in training (49152 -> 49154 tokens)" in p for p in info["problems"])
    assert info["problems"][-1].startswith("vLLM's LoRA loader takes LoRA weights only: serve the merged model")
    assert torch.allclose(_logits_of(out, ids), want, atol=1e-5)  # peft still loads it as it was


def test_check_against_vllms_constraints(tiny_model_dir):
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(tiny_model_dir)
    names = ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    good = {"peft_type": "LORA", "r": 64, "lora_alpha": 16, "target_modules": ["q_proj"], "bias": "none"}
    assert check_vllm_adapter(good, names, base) == ([], [], 64)
    problems, notes, rank = check_vllm_adapter(
        {**good, "r": 1024, "use_dora": True, "bias": "all", "rank_pattern": {"q_proj": 8},
         "modules_to_save": ["lm_head"]},
        [*names, "base_model.model.model.norm.weight", "base_model.model.model.embed_tokens.lora_embedding_A"], base)
    assert rank == 1024
    assert problems == [
        "modules_to_save: ['lm_head']; vLLM only supports modules_to_save being None (fully trained layers are not "
        "LoRA weights)",
        "use_dora: true; vLLM does not support DoRA",
        "bias / lora_bias: vLLM does not support adapter biases",
        "rank_pattern: {'q_proj': 8}; vLLM scales every module by lora_alpha / r, so modules with their own rank or "
        "alpha would be served with the wrong scale",
        "r: 1024; vLLM's largest --max-lora-rank is 512",
        "tensors that are not LoRA weights: base_model.model.model.norm.weight; vLLM's LoRA loader rejects them",
    ]
    assert notes[0].startswith("LoRA on embed_tokens: vLLM loads it only for architectures that list")


def test_rank_above_vllms_default_is_served_with_max_lora_rank_and_bad_inputs_are_refused(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "r32"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=32, target_modules=["q_proj", "v_proj"])).save_pretrained(ckpt)
    info = export_vllm(ckpt, tmp_path / "out")
    assert info["vllm_ready"] and info["max_lora_rank"] == 32 and info["serve"].endswith("--max-lora-rank 32")
    assert "--chat-template" not in info["serve"]  # the base model's own template: nothing to point at
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_vllm(ckpt, tmp_path / "out")
    assert export_vllm(ckpt, tmp_path / "out", overwrite=True)["vllm_ready"]
    with pytest.raises(ExportError, match="not a LoRA adapter .*full weights: vLLM serves the directory as it is"):
        export_vllm(tiny_model_dir, tmp_path / "full")


def test_cli_export_vllm_and_merge_shards(tiny_model_dir, tmp_path, capsys):
    from forgekit.cli import main

    ckpt = tmp_path / "ckpt"
    _adapter(tiny_model_dir, ckpt)
    assert main(["export", "vllm", str(ckpt), str(tmp_path / "v")]) == 0
    out = capsys.readouterr().out
    assert "vllm serve" in out and f"wrote {tmp_path / 'v'}" in out
    flagged = tmp_path / "flagged"
    _adapter(tiny_model_dir, flagged, new_tokens=("<x>",))
    assert main(["export", "vllm", str(flagged), str(tmp_path / "f")]) == 0  # written, for peft; vLLM flagged
    err = capsys.readouterr().err
    assert "warning: vLLM cannot serve this adapter" in err and "forgekit merge" in err
    # merge writes shards with an index when the model is larger than --max-shard-size
    info = merge_checkpoint(ckpt, tmp_path / "sharded", dtype="float32", max_shard_size="5MB")
    assert info["kind"] == "merged_lora"
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert main(["merge", str(ckpt), str(tmp_path / "m"), "--max-shard-size", "5MB", "--dtype", "float32"]) == 0
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
