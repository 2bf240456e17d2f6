"""The GPU tier's notebook runs (``pytest -m gpu tests/gpu/test_gpu_notebooks.py`` on a CUDA host).

The CPU tier removes the cells tagged ``gpu``; here they run, with each notebook's GPU switches on: README's
``GPU = True`` (the 1xA100 Llama-3.1-8B LoRA config: packing into 4096-token rows, ZeRO-2, bf16),
the function-calling example's ``GPU = True`` (its Llama-3.1-8B config and ``llama3.1`` prompt format), and the
cost and LoRA-vs-full cookbooks, whose ``gpu`` cells show MFU and GPU memory. The model is the tiny random
one (real tokenizer), so what is checked is the path: every cell runs, the GPU config is the one trained, and
the GPU figures (MFU, peak GPU memory) reach the artifacts the notebooks write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgekit.runs import read_metrics, read_result
from tests.notebooks.harness import run_notebook

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _on_gpu(result: dict) -> None:
    assert result["precision"] == "bf16"
    assert 0 < result["mfu"] < 1 and 0 < result["peak_memory_gb"] < 140


def test_readme_with_gpu_parameters(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook("README.ipynb", {"RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "GPU": True,
                                  "OVERRIDES": ["max_steps=2"], "MAX_NEW_TOKENS": 8}, tmp_path, gpu=True)
    run_dir = root / "first-finetune"
    result = read_result(run_dir)
    assert result["steps"] == 2
    _on_gpu(result)
    config = (run_dir / "config.yaml").read_text()
    # the gpu cell's config (packing into 4096-token rows, ZeRO-2, llama3.1 format) with any GPU allowed
    for line in ("context_length: 4096", "packing: true", "prompt_format: llama3.1", "worker_resources: {}"):
        assert line in config, line
    assert "zero_2.json" in config
    assert json.loads((run_dir / "manifest.json").read_text())["packed_rows"] > 0
    assert (root / "loss.png").stat().st_size > 10_000


def test_function_calling_with_gpu_parameters(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook("end_to_end_examples/fine_tune_function_calling/fine_tune_function_calling.ipynb", {
        "RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "GPU": True, "N_TRAIN": 16, "N_VALID": 4,
        "N_TEST": 4, "TRAIN_OVERRIDES": ["max_steps=2"], "EVAL_BATCH_SIZE": 8,
    }, tmp_path, gpu=True)
    results = json.loads((root / "results" / "function_calling_results.json").read_text())
    assert results["training"]["steps"] == 2 and results["n_train"] == 16  # a passed value stays as passed
    for report in results["evaluations"].values():
        assert report["conversations"] == 4
        assert report["settings"]["device"].startswith("cuda")  # generation ran on the GPU
    config = (root / "runs" / "function-calling" / "config.yaml").read_text()
    assert "prompt_format: llama3.1" in config and "packing: true" in config
    _on_gpu(read_result(root / "runs" / "function-calling"))


def test_optimize_cost_shows_mfu_and_gpu_memory(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook("cookbooks/optimize_cost/optimize_cost.ipynb", {
        "RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "NUM_DEVICES": 1, "TRAIN_STEPS": 3,
        "PRICE_PER_HOUR": 3.0, "VARIANTS": {"baseline": [], "packing": ["packing=true"],
                                            "zero_2": ["deepspeed.config_path=../../deepspeed_configs/zero_2.json"]},
    }, tmp_path, gpu=True)
    rows = {r["variant"]: r for r in json.loads((root / "throughput.json").read_text())}
    assert set(rows) == {"baseline", "packing", "zero_2"}
    for name in rows:
        result = read_result(root / "runs" / name)
        assert result["steps"] == 3
        _on_gpu(result)
        train = read_metrics(root / "runs" / name, "train")
        assert all(0 < r["mfu"] < 1 and r["peak_memory_gb"] > 0 for r in train)


def test_lora_vs_full_reports_gpu_memory(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook("cookbooks/lora_vs_full/lora_vs_full.ipynb", {
        "RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "NUM_DEVICES": 1, "TRAIN_STEPS": 3, "EVAL_EVERY": 3,
    }, tmp_path, gpu=True)
    lora, full = json.loads((root / "comparison.json").read_text())
    for row, run in ((lora, "lora"), (full, "full")):
        result = read_result(root / "runs" / run)
        _on_gpu(result)
        assert row["peak_gpu_memory_gb"] == result["peak_memory_gb"]
    assert (Path(root) / "lora-merged").is_dir()
