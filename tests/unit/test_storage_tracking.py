"""forgekit.storage on local paths and its error paths (missing backends, gs:// without a server), and
forgekit.tracking's mapping of the config and the environment to transformers' variables. No servers here: the
real S3 and MLflow servers are in tests/integration/test_storage_s3.py and test_tracking_mlflow.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from forgekit import storage
from forgekit.config import ConfigError, load_config
from forgekit.tracking import logger_env, provider

REPO = Path(__file__).resolve().parents[2]


def test_schemes_and_joins():
    assert [storage.is_remote(p) for p in ("runs", "/a/b", "file:///a", "s3://b/k", "gs://b", "hf://d/x")] == [
        False, False, False, True, True, True]
    assert storage.scheme("S3://b/k") == "s3" and storage.scheme("runs/x") == ""
    assert storage.join("s3://b/runs/", "r1", "/metrics.jsonl") == "s3://b/runs/r1/metrics.jsonl"
    assert storage.join("file:///tmp/runs", "r1") == "/tmp/runs/r1"
    assert storage.redact("http://me:secret@host:5000/x") == "http://me:***@host:5000/x"
    assert storage.redact("http://host:5000") == "http://host:5000"


def test_local_run_directory_and_file_urls(tmp_path):
    run = f"file://{tmp_path}/runs/r1"
    storage.write_text(storage.join(run, "metrics.jsonl"), '{"step": 1}\n')
    assert storage.read_text(f"{tmp_path}/runs/r1/metrics.jsonl") == '{"step": 1}\n'
    assert storage.listdir(run) == ["metrics.jsonl"] and storage.exists(run)
    assert not [p for p in (tmp_path / "runs" / "r1").iterdir() if ".tmp-" in p.name]  # renamed into place
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub" / "w.bin").write_bytes(b"w")
    storage.upload_dir(tmp_path / "ckpt", storage.join(run, "checkpoints", "step-1"))
    assert (tmp_path / "runs" / "r1" / "checkpoints" / "step-1" / "sub" / "w.bin").read_bytes() == b"w"
    assert storage.localize(run, tmp_path / "cache") == tmp_path / "runs" / "r1"  # local: used where it is
    storage.remove(storage.join(run, "checkpoints"))
    assert storage.listdir(run) == ["metrics.jsonl"] and storage.listdir(storage.join(run, "nothing")) == []
    assert storage.ray_storage(run) == (str(tmp_path / "runs" / "r1"), None)


@pytest.mark.parametrize(("url", "package", "extra"), [("s3://bucket/runs", "s3fs", "s3"),
                                                       ("gs://bucket/runs", "gcsfs", "gcs")])
def test_a_missing_backend_says_what_to_install(monkeypatch, url, package, extra):
    import importlib

    registry = importlib.import_module("fsspec.registry")._registry  # (fsspec.registry is its read-only view)
    for name in ("s3", "s3a", "gs", "gcs"):  # forget the imported classes; the packages cannot be imported
        monkeypatch.delitem(registry, name, raising=False)
    monkeypatch.setitem(sys.modules, package, None)
    version = storage.BACKENDS[storage.scheme(url)][1]
    with pytest.raises(storage.StorageError) as e:
        storage.filesystem(url, key="output_dir")
    assert str(e.value) == (f"output_dir: {url}: {storage.scheme(url)}:// needs {package}, which is not installed: "
                            f"pip install '{package}=={version}' (or 'forgekit[{extra}]'), on every node")
    from forgekit.data import DataError, read_examples

    with pytest.raises(DataError, match=rf"{url}/train.jsonl: {storage.scheme(url)}:// needs {package}"):
        read_examples(f"{url}/train.jsonl")


def test_an_unknown_scheme_is_a_storage_error():
    with pytest.raises(storage.StorageError, match=r"output_dir: nosuch://b/x: forgekit cannot read or write nosuch://"):
        storage.filesystem("nosuch://b/x", key="output_dir")


def test_the_backends_install_hint_is_the_locked_version():
    lock = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", (REPO / "requirements/lock-cpu.txt").read_text(), re.MULTILINE))
    for package, version, _ in storage.BACKENDS.values():
        assert lock[package] == version, f"storage.BACKENDS pins {package}=={version}, the lock {lock[package]}"


def test_gs_paths_take_the_same_code_path_to_a_clear_error(monkeypatch, tmp_path):
    """No GCS server here: gcsfs is pointed at a closed port on 127.0.0.1 (its emulator variable), anonymously."""
    pytest.importorskip("gcsfs")
    import gcsfs

    from tests.integration.servers import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")  # no credential lookup (the metadata server is off this machine)
    # gcsfs retries a refused connection 6 times, backing off up to 32 s: the same retries, without the waits
    import asyncio
    import types

    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=lambda _: asyncio.sleep(0)))
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        fs, inner = storage.filesystem("gs://bucket/runs")
        assert isinstance(fs, gcsfs.GCSFileSystem) and inner == "bucket/runs"
        with pytest.raises(storage.StorageError, match=r"^output_dir: gs://bucket/runs: the storage server does not answer"):
            storage.check_reachable("gs://bucket/runs", "output_dir", write=True)
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()


# --- tracking: the config and the environment -> transformers' variables


def _cfg(tmp_path, **extra):
    return load_config({"model_id": "m", "train_path": str(tmp_path / "t.jsonl"), **extra})


def test_mlflow_provider_config_maps_to_the_variables_mlflowcallback_reads(tmp_path):
    cfg = _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {
        "tracking_uri": "http://127.0.0.1:5000", "experiment_name": "e", "hf_mlflow_log_artifacts": True,
        "tags": {"k": "v"}, "nested_run": False, "flatten_params": True}})
    report_to, logging_dir, env = logger_env(cfg, tmp_path, environ={})
    assert (report_to, logging_dir) == (["mlflow"], None)
    assert env == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "MLFLOW_EXPERIMENT_NAME": "e",
                   "HF_MLFLOW_LOG_ARTIFACTS": "TRUE", "MLFLOW_TAGS": json.dumps({"k": "v"}),
                   "MLFLOW_NESTED_RUN": "FALSE", "MLFLOW_FLATTEN_PARAMS": "TRUE"}


def test_the_environment_chooses_mlflow_only_without_a_logger_section(tmp_path):
    plain = _cfg(tmp_path)
    assert provider(plain, {}) is None and logger_env(plain, tmp_path, {}) == ([], None, {})
    assert provider(plain, {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}) == "mlflow"
    # the environment's own MLFLOW_* variables then apply as they are: nothing is set over them
    assert logger_env(plain, tmp_path, {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}) == (["mlflow"], None, {})
    assert provider(plain, {"MLFLOW_TRACKING_URI": "x", "DISABLE_MLFLOW_INTEGRATION": "true"}) is None
    tb = _cfg(tmp_path, logger={"provider": "tensorboard"})
    assert provider(tb, {"MLFLOW_TRACKING_URI": "x"}) == "tensorboard"  # the config's choice wins
    assert logger_env(tb, tmp_path, {})[2] == {"TENSORBOARD_LOGGING_DIR": str(tmp_path / "tensorboard")}
    mlflow_cfg = _cfg(tmp_path, logger={"provider": "mlflow"})
    assert logger_env(mlflow_cfg, tmp_path, {"DISABLE_MLFLOW_INTEGRATION": "TRUE"}) == ([], None, {})


def test_wandb_writes_its_run_into_the_run_directory_unless_told_otherwise(tmp_path):
    wb = _cfg(tmp_path, logger={"provider": "wandb", "provider_config": {"project": "p"}})
    assert logger_env(wb, tmp_path / "run", {}) == (["wandb"], None, {"WANDB_PROJECT": "p",
                                                                        "WANDB_DIR": str(tmp_path / "run")})
    assert "WANDB_DIR" not in logger_env(wb, tmp_path / "run", {"WANDB_DIR": "/scratch/wandb"})[2]  # the user's
    there = _cfg(tmp_path, logger={"provider": "wandb", "provider_config": {"dir": "/scratch/w"}})
    assert logger_env(there, tmp_path / "run", {"WANDB_DIR": "/elsewhere"})[2] == {"WANDB_DIR": "/scratch/w"}


def test_silogen_tracking_section_is_the_mlflow_logger(tmp_path):
    cfg = _cfg(tmp_path, tracking={"mlflow_server_uri": "file:///tmp/mlruns", "experiment_name": "default",
                                   "hf_mlflow_log_artifacts": "False"})
    assert cfg.logger.provider == "mlflow"
    assert cfg.logger.provider_config == {"tracking_uri": "file:///tmp/mlruns", "experiment_name": "default",
                                          "hf_mlflow_log_artifacts": "False"}
    assert any(n.startswith("tracking: -> logger: {provider: mlflow") for n in cfg.notes)
    assert logger_env(cfg, tmp_path, {})[2]["HF_MLFLOW_LOG_ARTIFACTS"] == "False"
    empty = _cfg(tmp_path, tracking={"mlflow_server_uri": ""})  # Silogen: the config sets up no MLflow
    assert empty.logger is None and "environment's MLFLOW_* variables decide" in empty.notes[0]
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, tracking={"mlflow_server_uri": "x", "experiment": "e"}, logger={"provider": "mlflow"})
    assert e.value.problems == ["tracking.experiment: unknown key (did you mean 'experiment_name'?)",
                                "tracking: Silogen's form of the logger section; give only one of them"]


def test_secrets_are_refused_in_the_config_and_never_echoed(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {
            "tracking_uri": "https://me:hunter2@mlflow.example.com", "tracking_token": "tok-123"}})
    assert sorted(e.value.problems) == [
        "logger.provider_config.tracking_token: a secret; set it in the environment (e.g. MLFLOW_TRACKING_PASSWORD, "
        "WANDB_API_KEY), not in the config",
        "logger.provider_config.tracking_uri: the URI holds a password; set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD in the environment instead"]
    assert "hunter2" not in str(e.value) and "tok-123" not in str(e.value)
    with pytest.raises(ConfigError, match="api_key: a secret"):
        _cfg(tmp_path, logger={"provider": "wandb", "provider_config": {"api_key": "k"}})
