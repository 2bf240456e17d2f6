"""Experiment tracking: the `logger` section (or the environment) → the Trainer's `report_to` and the providers' settings.

transformers' callbacks (WandbCallback, MLflowCallback, TensorBoardCallback) read their settings from environment
variables; this module turns the config into those variables, on each worker, and checks on the driver that the
provider can work before Ray starts.

Where the settings come from (Silogen's precedence: command line > YAML > environment):

- `logger: {provider: mlflow | wandb | tensorboard, provider_config: {...}}` (LLMForge), or Silogen's
  `tracking: {mlflow_server_uri, experiment_name, hf_mlflow_log_artifacts}`, which `load_config` translates into
  the same `logger` section. Each `provider_config` key becomes the variable the callback reads (`MLFLOW_<KEY>`,
  `WANDB_<KEY>`; `hf_mlflow_log_artifacts` is `HF_MLFLOW_LOG_ARTIFACTS`), overriding the environment's value.
  Command-line overrides (`logger.provider_config.tracking_uri=...`) change the config, so they win over both.
- No `logger` section, but `MLFLOW_TRACKING_URI` set: the run reports to MLflow with the environment's `MLFLOW_*`
  settings (as Silogen's engine and transformers do). No other variable turns a provider on.
- `DISABLE_MLFLOW_INTEGRATION=TRUE` is honoured: MLflow is off for the run, with one warning on the driver when
  the config asked for it (transformers would otherwise raise in every worker).

Secrets (an MLflow password or token, `WANDB_API_KEY`) come only from the environment: the config rejects them
(`forgekit.config`), and no message here prints one (`redact`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from forgekit.config import ConfigError, FinetuneConfig
from forgekit.storage import redact

__all__ = ["MLFLOW_RUN_ID_FILE", "check_logger", "continue_mlflow_run", "logger_env", "logger_setup",
           "mlflow_disabled", "plan_params", "provider", "tracking_uri_key"]

log = logging.getLogger("forgekit")

# transformers' ENV_VARS_TRUE_VALUES: how its callbacks read a boolean variable
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
# provider_config keys whose variable is not <PROVIDER>_<KEY>
SPECIAL_VARIABLES = {("wandb", "group"): "WANDB_RUN_GROUP", ("mlflow", "hf_mlflow_log_artifacts"): "HF_MLFLOW_LOG_ARTIFACTS",
                     ("mlflow", "log_artifacts"): "HF_MLFLOW_LOG_ARTIFACTS"}
# rank 0 writes the MLflow run's id here (in the run directory): a resumed run continues that MLflow run
MLFLOW_RUN_ID_FILE = "mlflow_run_id"
# plan.json's sections logged as MLflow params (`plan.<section>.<key>`), and its top-level values
PLAN_SECTIONS = ("batch", "schedule")
PLAN_VALUES = ("precision", "pad_to_multiple_of", "derived")


def mlflow_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `DISABLE_MLFLOW_INTEGRATION` turns MLflow off (transformers' test: the value TRUE, any case)."""
    environ = os.environ if environ is None else environ
    return environ.get("DISABLE_MLFLOW_INTEGRATION", "FALSE").upper() == "TRUE"


def provider(cfg: FinetuneConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The provider the run reports to: the `logger` section's; without one, mlflow where `MLFLOW_TRACKING_URI` is
    set; None for no tracking (and for mlflow while `DISABLE_MLFLOW_INTEGRATION=TRUE`)."""
    environ = os.environ if environ is None else environ
    chosen = cfg.logger.provider if cfg.logger else ("mlflow" if environ.get("MLFLOW_TRACKING_URI") else None)
    return None if chosen == "mlflow" and mlflow_disabled(environ) else chosen


def _variable(name: str, key: str) -> str:
    return SPECIAL_VARIABLES.get((name, key)) or f"{name.upper()}_{key.upper()}"


def _value(value: Any) -> str:
    # lists joined by commas (WANDB_TAGS wants that), mappings as JSON (MLFLOW_TAGS), booleans as TRUE/FALSE
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def logger_env(cfg: FinetuneConfig, run_dir: str | Path,
               environ: Mapping[str, str] | None = None) -> tuple[list[str], str | None, dict[str, str]]:
    """What a worker's Trainer needs for tracking, without touching the environment.

    Args:
        cfg: the run's config.
        run_dir: the run directory (TensorBoard's default log dir is `<run_dir>/tensorboard`; W&B's `WANDB_DIR`,
            so an offline run is `<run_dir>/wandb/offline-run-*`).
        environ: the worker's environment (default `os.environ`): `MLFLOW_TRACKING_URI` and
            `DISABLE_MLFLOW_INTEGRATION` there choose the provider as `provider` says; a `WANDB_DIR` there is kept.

    Returns:
        `report_to` for `TrainingArguments`, TensorBoard's log dir (or None), and the variables to set.
    """
    environ = os.environ if environ is None else environ
    name = provider(cfg, environ)
    settings = dict(cfg.logger.provider_config) if cfg.logger and cfg.logger.provider == name else {}
    match name:
        case None:
            return [], None, {}
        case "wandb" | "mlflow":
            env = {_variable(name, key): _value(value) for key, value in settings.items()}
            # W&B's files (an offline run's .wandb log) in the run directory, not in the worker's working directory
            # (Ray's session folder); `provider_config.dir` or the environment's WANDB_DIR choose another
            if name == "wandb" and "WANDB_DIR" not in env and not environ.get("WANDB_DIR"):
                env["WANDB_DIR"] = str(run_dir)
            return [name], None, env
        case _:
            logging_dir = str(settings.get("log_dir", Path(run_dir) / "tensorboard"))
            # transformers 5 dropped TrainingArguments.logging_dir; its TensorBoard callback reads this
            return ["tensorboard"], logging_dir, {"TENSORBOARD_LOGGING_DIR": logging_dir}


def logger_setup(cfg: FinetuneConfig, run_dir: str | Path) -> tuple[list[str], str | None]:
    """On each worker: set the providers' variables in this process's environment (`logger_env`) and return
    `report_to` and TensorBoard's log dir."""
    report_to, logging_dir, env = logger_env(cfg, run_dir)
    os.environ.update(env)
    return report_to, logging_dir


def tracking_uri_key(cfg: FinetuneConfig) -> str:
    """The config key (or variable) a run's MLflow tracking URI comes from, for messages."""
    if cfg.logger is None or "tracking_uri" not in cfg.logger.provider_config:
        return "MLFLOW_TRACKING_URI"
    if any(note.startswith("tracking:") for note in cfg.notes):  # Silogen's section, translated by load_config
        return "tracking.mlflow_server_uri"
    return "logger.provider_config.tracking_uri"


def check_logger(cfg: FinetuneConfig, environ: Mapping[str, str] | None = None, timeout: float = 5.0) -> None:
    """On the driver, before Ray starts: the provider's package is installed and an MLflow server answers.

    Raises:
        ConfigError: naming `logger.provider` (or the variable that chose MLflow) when the package is missing, and
            the tracking URI's key when no server answers there (the URI shown without its password).
    """
    import importlib.util

    environ = os.environ if environ is None else environ
    name = provider(cfg, environ)
    if cfg.logger and cfg.logger.provider == "mlflow" and name is None:
        log.warning("forgekit: DISABLE_MLFLOW_INTEGRATION=TRUE turns MLflow off: this run is not tracked "
                    "(unset it to report to the logger section's MLflow)")
    if name is None:
        return
    key = "logger.provider" if cfg.logger else "MLFLOW_TRACKING_URI"
    if importlib.util.find_spec(name) is None:  # each provider's package has its name
        raise ConfigError([f"{key}: {name} needs the {name} package, which is not installed: "
                           f"pip install {name} (on every node of the cluster)"])
    if name == "mlflow":
        settings = cfg.logger.provider_config if cfg.logger else {}
        uri = str(settings.get("tracking_uri") or environ.get("MLFLOW_TRACKING_URI") or "")
        why = _unreachable(uri, timeout)
        if why:
            raise ConfigError([f"{tracking_uri_key(cfg)}: no MLflow tracking server answers at {redact(uri)} ({why}); "
                               "start it, or correct the URI"])


def _unreachable(uri: str, timeout: float) -> str | None:
    """Why nothing answers HTTP at an http(s) tracking URI, or None (any HTTP answer, also 401/404, is a server;
    other schemes, a file store or `databricks`, are not checked)."""
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    # no user info in the probe: urllib takes none, and the answer to an unauthenticated request is enough
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    probe = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(probe, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return getattr(reason, "strerror", None) or str(reason) or type(e).__name__


def plan_params(plan_json: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow params of a run's plan (`Plan.to_json()`, plan.json's content): its batch and schedule numbers,
    the data's context length and packing, precision and the derived config keys, as MLflow stores them (strings;
    lists joined by commas)."""
    out = {f"plan.{section}.{key}": value for section in PLAN_SECTIONS for key, value in plan_json[section].items()}
    out.update({f"plan.data.{key}": plan_json["data"][key] for key in ("context_length", "packing", "train_rows")})
    out.update({f"plan.{key}": plan_json[key] for key in PLAN_VALUES})
    return {key: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for key, v in out.items()}


def continue_mlflow_run(run_dir: str | Path) -> str | None:
    """On each worker of a resumed run: set `MLFLOW_RUN_ID` to the id rank 0 saved in the run directory (local or
    remote), so that transformers' MLflowCallback continues that MLflow run; the id, or None (no MLflow run yet)."""
    from forgekit import storage

    path = storage.join(run_dir, MLFLOW_RUN_ID_FILE)
    if not storage.exists(path):
        return None
    run_id = storage.read_text(path).strip()
    os.environ["MLFLOW_RUN_ID"] = run_id
    return run_id

