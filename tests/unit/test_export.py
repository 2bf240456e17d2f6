"""`forgekit merge`: a LoRA checkpoint merged into its base (or full weights re-saved) as one servable model dir."""

from __future__ import annotations

import json

import pytest
import torch

from forgekit.export import ExportError, merge_checkpoint

IDS = torch.tensor([[1, 2, 3, 4, 5, 6]])
TEMPLATE = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"  # the "training" format


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero weights and its tokenizer (custom chat template), and its logits on IDS."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    path = tmp_path_factory.mktemp("ckpt") / "step-000004"
    model.save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    with torch.no_grad():
        logits = model.eval()(IDS).logits
    return path, logits


def _load(path, dtype="auto"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def test_merged_adapter_computes_what_the_adapter_did_without_peft(adapter, tiny_model_dir, tmp_path):
    path, want = adapter
    out = tmp_path / "merged"
    info = merge_checkpoint(path, out, dtype="float32")
    assert info["kind"] == "merged_lora" and info["base"] == str(tiny_model_dir) and info["dtype"] == "float32"
    assert info["max_abs_logit_diff"] < 1e-4 < info["max_abs_logit"]
    assert json.loads((out / "forgekit_export.json").read_text()) == info
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model, tok = _load(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        got = model(IDS).logits
    assert torch.allclose(got, want, atol=1e-4)
    base, _ = _load(tiny_model_dir)
    with torch.no_grad():
        assert not torch.allclose(base(IDS).logits, want, atol=1e-2)  # the adapter changed something
    assert tok.chat_template == TEMPLATE  # serving renders prompts the way training did
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left behind


def test_dtype_and_full_weights(adapter, tmp_path):
    path, want = adapter
    info = merge_checkpoint(path, tmp_path / "bf16", dtype="bfloat16")
    model, _ = _load(tmp_path / "bf16")
    assert info["dtype"] == "bfloat16" and model.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.allclose(model(IDS).logits.float(), want, atol=0.15)  # bf16 rounding of the same weights
    # a full checkpoint is re-saved (here the bf16 export, back as float32)
    info = merge_checkpoint(tmp_path / "bf16", tmp_path / "fp32", dtype="float32")
    assert info["kind"] == "full" and "max_abs_logit_diff" not in info
    assert _load(tmp_path / "fp32")[0].dtype == torch.float32


def test_bad_requests_are_refused_and_lose_nothing(adapter, tmp_path, monkeypatch):
    from forgekit import export

    path, _ = adapter
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=f"{taken}: exists and is not empty"):
        merge_checkpoint(path, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="dtype: expected one of auto, bfloat16, float16, float32, got 'int8'"):
        merge_checkpoint(path, tmp_path / "x", dtype="int8")
    with pytest.raises(ExportError, match="not a checkpoint directory"):
        merge_checkpoint(tmp_path / "nowhere", tmp_path / "x")
    for bad in (path, path.parent, tmp_path.parent):  # never the checkpoint or a directory holding it
        with pytest.raises(ExportError, match="is the checkpoint, holds it, or holds the working directory"):
            merge_checkpoint(path, bad, overwrite=True)
    assert (path / "adapter_model.safetensors").is_file()
    with pytest.raises(ExportError, match="replaces only an earlier export"):  # a directory of the user's own
        merge_checkpoint(path, taken, overwrite=True)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    # merged logits that do not match the adapter's: an error, and nothing written
    real = export._probe_logits
    calls = []

    def drifting(model, tok):
        calls.append(1)
        return real(model, tok) + (len(calls) - 1)

    monkeypatch.setattr(export, "_probe_logits", drifting)
    with pytest.raises(ExportError, match=r"differ from the adapter's by 1 \(largest logit .*\); nothing was written"):
        merge_checkpoint(path, tmp_path / "drift")
    assert not (tmp_path / "drift").exists()


def test_cli_merge(adapter, tmp_path, capsys):
    from forgekit.cli import main

    path, _ = adapter
    assert main(["merge", str(path), str(tmp_path / "m"), "--dtype", "float32"]) == 0
    assert f"wrote {tmp_path / 'm'}" in capsys.readouterr().out
    assert main(["merge", str(path), str(tmp_path / "m")]) == 2  # exists: refused, exit code 2, no traceback
    assert "exists and is not empty" in capsys.readouterr().err
    before = (tmp_path / "m" / "forgekit_export.json").stat().st_mtime_ns
    assert main(["merge", str(path), str(tmp_path / "m"), "--overwrite", "--no-verify", "--dtype", "bfloat16"]) == 0
    replaced = json.loads((tmp_path / "m" / "forgekit_export.json").read_text())
    assert replaced["dtype"] == "bfloat16" and "max_abs_logit_diff" not in replaced
    assert (tmp_path / "m" / "forgekit_export.json").stat().st_mtime_ns > before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing left aside
