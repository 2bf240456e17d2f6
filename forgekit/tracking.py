"""Experiment tracking: the `logger` section → the Trainer's `report_to` and the providers' settings.

`check_logger` runs on the driver (a missing package fails before Ray starts); `logger_setup` runs on each worker
and returns what `TrainingArguments(report_to=...)` takes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from forgekit.config import ConfigError, FinetuneConfig

__all__ = ["check_logger", "logger_setup"]


def check_logger(cfg: FinetuneConfig) -> None:
    """ConfigError naming `logger.provider` when its package is not installed on the driver."""
    import importlib.util

    if cfg.logger is not None:
        package = cfg.logger.provider  # each provider's package has its name
        if importlib.util.find_spec(package) is None:
            raise ConfigError([f"logger.provider: {cfg.logger.provider} needs the {package} package, which is not "
                               f"installed: pip install {package} (on every node of the cluster)"])


def logger_setup(cfg: FinetuneConfig, run_dir: Path) -> tuple[list[str], str | None]:
    if cfg.logger is None:
        return [], None
    pc = dict(cfg.logger.provider_config)
    match cfg.logger.provider:
        case "wandb" | "mlflow" as provider:
            # transformers' callbacks read their settings from the environment: every provider_config key becomes
            # WANDB_<KEY> / MLFLOW_<KEY> (lists joined by commas, as WANDB_TAGS wants; mappings as JSON, as
            # MLFLOW_TAGS wants), with wandb's `group` as WANDB_RUN_GROUP
            prefix = provider.upper() + "_"
            for key, value in pc.items():
                env = "WANDB_RUN_GROUP" if (provider, key) == ("wandb", "group") else prefix + key.upper()
                if isinstance(value, (list, tuple)):
                    value = ",".join(map(str, value))
                elif isinstance(value, dict):
                    value = json.dumps(value)
                os.environ[env] = str(value)
            return [provider], None
        case _:
            return ["tensorboard"], str(pc.get("log_dir", run_dir / "tensorboard"))
