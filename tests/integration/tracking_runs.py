"""A tiny `forgekit.train.finetune` run on one CPU Ray worker, reporting to a tracker (the tracking tests')."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def finetune_config(model_dir: Path, tmp_path: Path, logger: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """3 steps of LoRA on 8 rows (4 validation rows, evaluated at the start and at the last step) with `logger`."""
    from forgekit.examples.sample_data import write_quickstart_dataset

    data = write_quickstart_dataset(tmp_path / "data", n_train=8, n_valid=4, n_test=1)
    return {"model_id": str(model_dir), "train_path": str(data["train"]), "valid_path": str(data["valid"]),
            "context_length": 256, "num_devices": 1, "train_batch_size_per_device": 4,
            "gradient_accumulation_steps": 1, "max_steps": 3, "learning_rate": 1e-3, "num_warmup_steps": 0,
            "lr_scheduler_type": "constant", "lora_config": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
            "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 3},
            "output_dir": str(tmp_path / "runs"), "logger": logger, **extra}


def run_finetune(cfg: dict[str, Any]) -> dict[str, Any]:
    """`finetune` of the config (no progress bar), Ray shut down after it: result.json's content and `run_dir`."""
    import ray

    from forgekit.config import load_config
    from forgekit.train import finetune

    try:
        return finetune(load_config(cfg), progress=False)
    finally:
        ray.shutdown()
