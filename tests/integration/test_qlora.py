"""QLoRA through `forgekit.train.finetune`: a 4-bit (nf4) base with a LoRA adapter on 2 CPU Ray workers.

bitsandbytes 0.50.2 runs its 4-bit layers on CPUs, so the whole path runs here: the preflight check, the plan's
quantization entry (`forgekit validate`), loading in the workers, DeepSpeed ZeRO-2, adapter-only checkpoints and
`forgekit merge` into the unquantized base. ZeRO-3 on CPU workers is a config error (forgekit.quantization says why;
the GPU tier runs it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from forgekit.runs import list_checkpoints, read_metrics
from tests.integration.test_train import CLI, LORA, REPO, config, write_config

QLORA = {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
         "bnb_4bit_use_double_quant": True}


def qlora_config(tiny_model_dir: Path, paths: dict, out: Path, stage: str = "zero_2", **quant) -> dict:
    return config(tiny_model_dir, paths, out, lora_config=LORA, quant_conf={**QLORA, **quant},
                  deepspeed={"config_path": str(REPO / "deepspeed_configs" / f"{stage}.json")})


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=600, check=False)


@pytest.fixture(scope="module")
def run(ray_cluster, tiny_model_dir, data, tmp_path_factory) -> dict:
    """The QLoRA run: 2 CPU workers, ZeRO-2, the 4-bit base in nf4 with double quantization."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    cfg = qlora_config(tiny_model_dir, data, tmp_path_factory.mktemp("qlora") / "runs")
    return finetune(load_config(cfg), progress=False)


def test_qlora_trains_on_cpu_workers_and_checkpoints_the_adapter_only(run):
    result = run
    run_dir = Path(result["run_dir"])
    losses = [r["loss"] for r in read_metrics(run_dir, "train")]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.25, losses  # the same 8 examples every step, as the bf16/fp32 LoRA runs
    evals = read_metrics(run_dir, "eval")
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    plan = json.loads((run_dir / "plan.json").read_text())
    q = plan["quantization"]
    assert q["bits"] == 4 and q["quant_type"] == "nf4" and q["double_quant"] and q["compute_dtype"] == "float32"
    assert q["quant_storage"] == "uint8"
    assert result["trainable_params"] > 0 and result["world_size"] == 2
    assert 0 < q["quantized_weights_bytes"] < q["weights_bytes"]
    for ckpt in list_checkpoints(run_dir):
        files = {p.name for p in ckpt.iterdir()}
        assert "adapter_model.safetensors" in files and "adapter_config.json" in files, files
        assert not any(n.startswith("model") and n.endswith(".safetensors") for n in files), files
        with safe_open(ckpt / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert keys and all("lora_" in k for k in keys), keys  # no quantized base weights, no quant state
        adapter_cfg = json.loads((ckpt / "adapter_config.json").read_text())
        assert Path(adapter_cfg["base_model_name_or_path"]) == Path(plan["model_path"])  # the unquantized base


def test_merge_of_a_qlora_checkpoint_goes_into_the_unquantized_base(run, tmp_path):
    """`forgekit merge` (the CLI) loads the base in float32, merges, and checks the merged logits against the adapter
    model's; the merged model is an ordinary one (no quantization config) with the adapter's effect on the loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    best = run["best_checkpoint"]
    proc = cli("merge", best, str(tmp_path / "merged"), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "merged" / "forgekit_export.json").read_text())
    assert info["kind"] == "merged_lora" and info["max_abs_logit_diff"] < 1e-3, info
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    base = AutoModelForCausalLM.from_pretrained(info["base"])
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tok("The ticket was routed to billing because the invoice was wrong.", return_tensors="pt").input_ids
    with torch.no_grad():
        moved = (merged(ids).logits - base(ids).logits).abs().max().item()
    assert moved > 1e-2  # the trained adapter is in the merged weights


def test_validate_prints_the_quantization_and_its_memory_effect(tiny_model_dir, data, tmp_path):
    path = write_config(tmp_path / "qlora.yaml", qlora_config(tiny_model_dir, data, tmp_path / "runs"))
    proc = cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("# quantization:")]
    assert "4-bit nf4 + double quantization, compute float32, storage uint8 (bitsandbytes)" in line, line
    assert "GB ->" in line and "checkpoints hold the adapter only" in line


@pytest.mark.parametrize("storage", [None, "float32"])
def test_zero3_qlora_on_cpu_workers_is_a_config_error_before_any_worker(tiny_model_dir, data, tmp_path, storage):
    """ZeRO-3 QLoRA trains on CPU workers, but bitsandbytes' CPU kernels repack the 4-bit weights ZeRO-3 partitions at
    the first evaluation, and the next checkpoint fails (tried: an AssertionError in bitsandbytes' state_dict)."""
    quant = {"bnb_4bit_quant_storage": storage} if storage else {}
    path = write_config(tmp_path / "qlora.yaml", qlora_config(tiny_model_dir, data, tmp_path / "runs", "zero_3", **quant))
    proc = cli("validate", str(path))
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "quant_conf: a 4-bit base under DeepSpeed ZeRO-3 does not run on CPU workers" in proc.stderr
    assert "on CPUs use a ZeRO-2 DeepSpeed config (or none)" in proc.stderr
    storage_problem = "quant_conf.bnb_4bit_quant_storage: DeepSpeed ZeRO-3 shards 4-bit weights only when"
    assert (storage_problem in proc.stderr) == (storage is None)
