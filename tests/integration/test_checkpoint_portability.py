"""Checkpoints that travel: a real LoRA run's checkpoint, copied to another directory and loaded where the original
model directory is gone and the Hugging Face cache is empty, by plain peft and by forgekit's own loaders.

One run of the tiny model (tests/conftest.py) on one CPU worker, `model_id` given as a relative path (`base-model`,
in the driver's working directory); world rank 0 draws its evaluation bar into its log (FORGEKIT_PROGRESS=1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

IDS = torch.tensor([[1, 17, 256, 1024, 5, 9, 33, 2]])
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """The run: `model_id: base-model`, the tiny model copied there; its workers see FORGEKIT_PROGRESS=1."""
    import ray

    from forgekit.config import load_config
    from forgekit.examples.sample_data import write_quickstart_dataset
    from forgekit.train import finetune, init_ray

    root = tmp_path_factory.mktemp("portable")
    work = root / "work"
    shutil.copytree(tiny_model_dir, work / "base-model")
    data = write_quickstart_dataset(root / "data", n_train=8, n_valid=4, n_test=1)
    cfg = {"model_id": "base-model", "train_path": str(data["train"]), "valid_path": str(data["valid"]),
           "context_length": 256, "num_devices": 1, "train_batch_size_per_device": 4, "max_steps": 2,
           "learning_rate": 1e-2, "num_warmup_steps": 0, "lr_scheduler_type": "constant", "lora_config": LORA,
           "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 2}, "output_dir": str(root / "runs")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setenv("FORGEKIT_PROGRESS", "1")  # init_ray hands it to the workers
        init_ray(None, num_devices=1)
        try:
            result = finetune(load_config(cfg), progress=False)
        finally:
            ray.shutdown()
    return {"root": root, "base": work / "base-model", "ckpt": Path(result["best_checkpoint"]), **result}


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


@pytest.fixture(scope="module")
def reference(run):
    """The checkpoint's logits on IDS where it was trained, and the base model's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(run["base"])
    plain = _logits(base)
    return _logits(PeftModel.from_pretrained(base, run["ckpt"])), plain


def test_the_checkpoint_records_the_name_the_user_wrote_and_keeps_where_it_was_found(run):
    ckpt = run["ckpt"]
    assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == "base-model"
    card = (ckpt / "README.md").read_text()  # peft's model card: the same name, no local path
    assert "base_model: base-model" in card and str(run["root"]) not in card
    meta = json.loads((ckpt / "forgekit_checkpoint.json").read_text())["base_model"]
    assert meta == {"name": "base-model", "model_id": "base-model", "initial_base_model_ckpt_path": None,
                    "local_path": str(run["base"].resolve())}


def test_a_copied_checkpoint_loads_in_plain_peft_elsewhere_with_a_fresh_cache(run, reference, tmp_path):
    """Another machine: the checkpoint copied, the base placed where the recorded name points (`base-model` in the
    working directory), the original model directory gone, an empty Hugging Face cache, offline."""
    machine = tmp_path / "machine"
    shutil.copytree(run["ckpt"], machine / "ckpt")
    moved = tmp_path / "moved"
    os.replace(run["base"], moved)
    try:
        shutil.copytree(moved, machine / "base-model")
        script = (
            "import sys, torch\n"
            "from peft import AutoPeftModelForCausalLM, PeftModel\n"
            "from transformers import AutoModelForCausalLM\n"
            f"ids = torch.tensor({IDS.tolist()})\n"
            "with torch.no_grad():\n"
            "    auto = AutoPeftModelForCausalLM.from_pretrained('ckpt').eval()(input_ids=ids).logits\n"
            "    base = AutoModelForCausalLM.from_pretrained('base-model')\n"
            "    peft = PeftModel.from_pretrained(base, 'ckpt').eval()(input_ids=ids).logits\n"
            "torch.save({'auto': auto, 'peft': peft}, 'logits.pt')\n"
        )
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "FORGEKIT_CACHE": str(tmp_path / "forgekit-cache")}
        done = subprocess.run([sys.executable, "-c", script], cwd=machine, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        os.replace(moved, run["base"])
    got = torch.load(machine / "logits.pt")
    want, base = reference
    assert torch.allclose(got["auto"], want, atol=1e-5) and torch.allclose(got["peft"], want, atol=1e-5)
    assert not torch.allclose(want, base, atol=1e-3)  # the adapter changes the model: it was loaded


def test_forgekit_loaders_fall_back_to_where_the_run_found_the_base(run, reference, tmp_path, monkeypatch):
    """Where `base-model` does not resolve (another working directory), generation, merge and continued training
    load the base from forgekit_checkpoint.json and compute what the checkpoint computed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgekit.config import load_config
    from forgekit.export import merge_checkpoint
    from forgekit.generate import load_adapter
    from forgekit.worker.model import load_model

    ckpt = shutil.copytree(run["ckpt"], tmp_path / "copied")
    monkeypatch.chdir(tmp_path)  # no base-model here
    want, _ = reference
    model, _, named = load_adapter(ckpt, dtype=torch.float32)
    assert named == "base-model" and torch.allclose(_logits(model), want, atol=1e-5)
    info = merge_checkpoint(ckpt, tmp_path / "merged", dtype="float32")
    assert info["base"] == "base-model"
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")), want, atol=1e-4)

    # a next stage from the copied adapter records its own config's model_id
    cfg = load_config({"model_id": str(run["base"]), "train_path": "unused.jsonl", "lora_config": LORA,
                       "initial_adapter_model_ckpt_path": str(ckpt)})
    tok = AutoTokenizer.from_pretrained(ckpt)
    stage2, _ = load_model(cfg, tok, torch.float32, "sdpa", False, source=str(run["base"]), context_length=128,
                           adapter=str(ckpt))
    assert torch.allclose(_logits(stage2), want, atol=1e-5)
    stage2.save_pretrained(tmp_path / "stage2")
    saved = json.loads((tmp_path / "stage2" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(run["base"])


def test_rank_0_draws_the_evaluation_bar_into_its_log(run):
    lines = (Path(run["run_dir"]) / "logs" / "rank-0.log").read_text().replace("\r", "\n").splitlines()
    for step in (0, 2):  # the baseline, and the evaluation after step 2: each bar ends at its total
        frames = [f for f in lines if f.startswith(f"evaluating (step {step})")]
        assert frames and re.search(r" (\d+)/\1 \[", frames[-1]) and "batch/s" in frames[-1], frames
