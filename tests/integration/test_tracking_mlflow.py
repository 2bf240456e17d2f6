"""MLflow tracking against a real `mlflow server` (SQLite backend, served artifacts) on 127.0.0.1.

The module starts one server and ends it. A tiny transformers Trainer run, configured only by
`forgekit.tracking.logger_setup`, reports to it; the tests read the run back with `MlflowClient`. The last test goes
through `forgekit.train.finetune` on one CPU Ray worker.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from forgekit.config import ConfigError, load_config
from forgekit.tracking import check_logger, logger_env, logger_setup
from tests.integration.servers import free_port, serve
from tests.integration.tracking_runs import finetune_config, run_finetune

mlflow = pytest.importorskip("mlflow")

TRACKING_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "HF_MLFLOW_LOG_ARTIFACTS", "MLFLOW_TAGS",
                      "MLFLOW_RUN_ID", "MLFLOW_NESTED_RUN", "DISABLE_MLFLOW_INTEGRATION")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """The tracking URI of a fresh `mlflow server` on a free port (SQLite store, artifacts served from a folder)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts")]
    uri = f"http://127.0.0.1:{port}"
    with serve(cmd, f"{uri}/health", root / "server.log"):
        yield uri


@pytest.fixture
def clean_env(monkeypatch):
    """No MLflow variable of the caller's environment leaks in, and none set by a test leaks out."""
    before = dict(os.environ)  # logger_setup sets the providers' variables in this process, as on a worker
    for key in TRACKING_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    yield monkeypatch
    mlflow.end_run()  # a run a failed test left active would be reused by the next one
    os.environ.clear()
    os.environ.update(before)


def _cfg(tmp_path: Path, **extra):
    return load_config({"model_id": "m", "train_path": str(tmp_path / "t.jsonl"), **extra})


def _train(model_dir: Path, out: Path, report_to: list[str], steps: int = 4, save_steps: int = 2,
           resume: bool = False) -> None:
    """A real Trainer run of the tiny model, `steps` optimizer steps, one logged loss per step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [f"ticket {i}: the printer on floor {i} is out of toner" for i in range(8)]
    enc = tokenizer(texts, padding="max_length", max_length=24, truncation=True)
    ds = Dataset.from_dict({**enc, "labels": enc["input_ids"]})
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=2, logging_steps=1,
                             save_steps=save_steps, learning_rate=1e-3, use_cpu=True, report_to=report_to,
                             run_name="forgekit-tracking-test", disable_tqdm=True, seed=0)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=ds)
    trainer.train(resume_from_checkpoint=resume or None)


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} on the server"
    return client, client.search_runs([exp.experiment_id])


def test_a_trainer_run_lands_in_the_configured_experiment(mlflow_server, tiny_model_dir, tmp_path, clean_env):
    cfg = _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {
        "tracking_uri": mlflow_server, "experiment_name": "fk-logger", "tags": {"team": "support"}}})
    check_logger(cfg)  # the server answers
    report_to, logging_dir = logger_setup(cfg, tmp_path)
    assert (report_to, logging_dir) == (["mlflow"], None)
    _train(tiny_model_dir, tmp_path / "out", report_to)

    client, runs = _runs(mlflow_server, "fk-logger")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "forgekit-tracking-test"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    assert all(m.value > 0 for m in losses)
    assert {"learning_rate", "max_steps", "per_device_train_batch_size"} <= set(run.data.params)
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["max_steps"] == "4"
    assert run.data.tags["team"] == "support"
    # no checkpoint was logged: hf_mlflow_log_artifacts is off by default
    assert not client.search_logged_models([run.info.experiment_id])


def test_silogen_tracking_section_logs_checkpoints_as_artifacts(mlflow_server, tiny_model_dir, tmp_path, clean_env):
    cfg = _cfg(tmp_path, tracking={"mlflow_server_uri": mlflow_server, "experiment_name": "fk-silogen",
                                   "hf_mlflow_log_artifacts": "True"})
    report_to, _ = logger_setup(cfg, tmp_path)
    assert os.environ["HF_MLFLOW_LOG_ARTIFACTS"] == "True"  # the variable MLflowCallback reads
    _train(tiny_model_dir, tmp_path / "out", report_to, steps=2, save_steps=2)

    client, runs = _runs(mlflow_server, "fk-silogen")
    assert len(runs) == 1
    models = client.search_logged_models([runs[0].info.experiment_id])
    assert [m.name for m in models] == ["checkpoint-2"] and models[0].source_run_id == runs[0].info.run_id
    files = {f.path for f in client.list_logged_model_artifacts(models[0].model_id)}
    listed = client.list_logged_model_artifacts(models[0].model_id, "artifacts/checkpoint-2")
    assert "MLmodel" in files and {"config.json", "model.safetensors"} <= {Path(f.path).name for f in listed}


def test_environment_alone_turns_mlflow_on(mlflow_server, tiny_model_dir, tmp_path, clean_env):
    clean_env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "fk-env")
    cfg = _cfg(tmp_path)  # no logger section
    check_logger(cfg)
    report_to, _ = logger_setup(cfg, tmp_path)
    assert report_to == ["mlflow"]
    _train(tiny_model_dir, tmp_path / "out", report_to, steps=2)
    client, runs = _runs(mlflow_server, "fk-env")
    assert len(runs) == 1 and len(client.get_metric_history(runs[0].info.run_id, "loss")) == 2


def test_the_config_wins_over_the_environment(mlflow_server, tmp_path, clean_env):
    clean_env.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    cfg = _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {"tracking_uri": mlflow_server,
                                                                         "experiment_name": "from-yaml"}})
    assert logger_env(cfg, tmp_path)[2]["MLFLOW_EXPERIMENT_NAME"] == "from-yaml"
    # a command-line override is an override of the config: it wins over both
    cfg = load_config(cfg, ["logger.provider_config.experiment_name=from-cli"])
    logger_setup(cfg, tmp_path)
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "from-cli"


def test_disable_mlflow_integration_turns_the_logger_off_without_crashing(mlflow_server, tiny_model_dir, tmp_path,
                                                                          clean_env, caplog):
    clean_env.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    cfg = _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {"tracking_uri": mlflow_server,
                                                                         "experiment_name": "fk-disabled"}})
    with caplog.at_level("WARNING", logger="forgekit"):
        check_logger(cfg)
    assert "DISABLE_MLFLOW_INTEGRATION=TRUE turns MLflow off" in caplog.text
    report_to, _ = logger_setup(cfg, tmp_path)
    assert report_to == []
    # with report_to=["mlflow"] transformers would raise here ("MLflowCallback requires mlflow to be installed")
    _train(tiny_model_dir, tmp_path / "out", report_to, steps=1)
    from mlflow.tracking import MlflowClient

    assert MlflowClient(mlflow_server).get_experiment_by_name("fk-disabled") is None


def test_an_unreachable_server_is_an_early_error_without_the_password(tmp_path, clean_env):
    port = free_port()  # nothing listens there
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://forgekit:s3cr3t@127.0.0.1:{port}")
    with pytest.raises(ConfigError) as e:
        check_logger(_cfg(tmp_path))
    assert f"MLFLOW_TRACKING_URI: no MLflow tracking server answers at http://forgekit:***@127.0.0.1:{port}" in str(e.value)
    assert "s3cr3t" not in str(e.value)
    cfg = _cfg(tmp_path, tracking={"mlflow_server_uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(ConfigError, match=r"tracking.mlflow_server_uri: no MLflow tracking server answers"):
        check_logger(cfg)


def _same_series(client, run_id: str, rows: list[dict], key: str) -> None:
    """The MLflow metric `key`'s history is metrics.jsonl's column of it, step for step."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    assert [m.step for m in history] == [r["step"] for r in rows], key
    assert [m.value for m in history] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-9), key


def test_finetune_reports_its_run_to_the_server(mlflow_server, tiny_model_dir, tmp_path, clean_env):
    """Through the launcher: one CPU Ray worker, whose logger_setup sets the variables in the worker process; the
    per-step metrics are metrics.jsonl's, the params include the plan's numbers (plan.json)."""
    from forgekit.runs import read_metrics

    logger = {"provider": "mlflow", "provider_config": {"tracking_uri": mlflow_server, "experiment_name": "fk-finetune"}}
    result = run_finetune(finetune_config(tiny_model_dir, tmp_path, logger))
    client, runs = _runs(mlflow_server, "fk-finetune")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id, run_dir = runs[0].info.run_id, Path(result["run_dir"])
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    train_rows, eval_rows = read_metrics(run_dir, "train"), read_metrics(run_dir, "eval")
    assert [r["step"] for r in train_rows] == [1, 2, 3] and [r["step"] for r in eval_rows] == [0, 3]
    # tokens/s as metrics.jsonl has it (forgekit's ThroughputInLogs; MFU takes the same path on GPUs only)
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
        _same_series(client, run_id, train_rows, key)
    _same_series(client, run_id, eval_rows, "eval_loss")

    plan = json.loads((run_dir / "plan.json").read_text())
    params = runs[0].data.params
    for section in ("batch", "schedule"):
        for key, value in plan[section].items():
            assert params[f"plan.{section}.{key}"] == str(value), (section, key)
    from forgekit.hardware import cpu_has_bf16

    assert params["plan.precision"] == plan["precision"] == ("bf16-autocast" if cpu_has_bf16() else "fp32")
    assert params["plan.batch.total_batch"] == "4" and params["plan.schedule.total_steps"] == "3"
    assert params["plan.data.context_length"] == str(plan["data"]["context_length"])
    assert params["plan.derived"] == ",".join(plan["derived"])


def test_a_resumed_finetune_continues_the_same_mlflow_run(mlflow_server, tiny_model_dir, tmp_path, clean_env):
    """The worker dies after step 2's checkpoint (FORGEKIT_FAULTS, no retry: the run fails, as after a lost
    driver); the same finetune again resumes from that checkpoint and reports to the first session's MLflow run:
    one run, eval_on_start's param unchanged (MLflow would reject a changed one)."""
    from forgekit.runs import read_metrics
    from forgekit.train import TrainingError

    clean_env.setenv("FORGEKIT_FAULTS", "die_after_step=2")
    clean_env.setenv("FORGEKIT_MAX_FAILURES", "0")
    logger = {"provider": "mlflow", "provider_config": {"tracking_uri": mlflow_server, "experiment_name": "fk-resume"}}
    cfg = finetune_config(tiny_model_dir, tmp_path, logger, max_steps=4,
                          checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 2})
    with pytest.raises(TrainingError):
        run_finetune(cfg)
    clean_env.delenv("FORGEKIT_FAULTS")
    result = run_finetune(cfg)
    run_dir = Path(result["run_dir"])
    assert (run_dir / ".forgekit-test-died").exists(), "the worker was meant to die once"
    client, runs = _runs(mlflow_server, "fk-resume")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (run_dir / "mlflow_run_id").read_text().strip() == runs[0].info.run_id
    assert runs[0].data.params["eval_on_start"] == "True"
    train_rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    losses = client.get_metric_history(runs[0].info.run_id, "loss")
    # steps 1-2 from the first session, 3-4 from the resumed one (a step after the checkpoint may be logged twice)
    last = {m.step: m.value for m in sorted(losses, key=lambda m: m.timestamp)}
    assert sorted(last) == [1, 2, 3, 4]
    assert [last[s] for s in range(1, 5)] == pytest.approx([r["loss"] for r in train_rows], rel=1e-6)
    evals = client.get_metric_history(runs[0].info.run_id, "eval_loss")
    assert sorted(m.step for m in evals) == [r["step"] for r in read_metrics(run_dir, "eval")] == [0, 2, 4]
