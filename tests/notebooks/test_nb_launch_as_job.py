"""The launch-as-job cookbook trains the same config three ways (CLI, papermill, Ray job) and stops its cluster."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from tests.notebooks.harness import run_notebook

NOTEBOOK = "cookbooks/launch_as_job/launch_as_job.ipynb"


def test_three_launches_train_the_same_run_and_the_cluster_is_stopped(tiny_model_dir, tmp_path):
    import psutil

    # `ray job submit` talks to Ray's dashboard: its dependencies come with ray[default], a forgekit dependency
    import ray.dashboard.optional_deps  # noqa: F401 - fails (not skips) when the install lacks them

    root = tmp_path / "run"
    run_notebook(
        NOTEBOOK,
        {
            "RUN_ROOT": str(root),
            "MODEL_ID": str(tiny_model_dir),
            "MAX_STEPS": 2,
            "NUM_DEVICES": 1,
        },
        tmp_path,
    )
    record = json.loads((root / "launches.json").read_text())
    assert "succeeded" in record["ray_job_status"].lower()  # `ray job status`: "Job '...' succeeded"
    assert record["ray_cluster_exit_code"] is not None and not psutil.pid_exists(record["ray_cluster_pid"])
    losses = {}
    for name, run_dir in record["runs"].items():
        run_dir = Path(run_dir)
        result = json.loads((run_dir / "result.json").read_text())
        assert result["steps"] == 2, name
        assert (run_dir / "checkpoints").is_dir() and result["best_checkpoint"], name
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if r["kind"] == "train"] + [
            r["eval_loss"] for r in rows if r["kind"] == "eval"
        ]
    # same config, data and seed: the three launches trained the same model, step for step
    reference = losses["command line"]
    for name, values in losses.items():
        assert len(values) == len(reference) and max(abs(a - b) for a, b in zip(values, reference)) < 1e-4, (
            losses
        )
    report = nbformat.read(record["papermill_report"], as_version=4)
    assert report.metadata["papermill"]["parameters"]["OVERRIDES"][-1] == "run_name=papermill"
    assert all(
        c.metadata["papermill"]["status"] == "completed" for c in report.cells if c.cell_type == "code"
    )
    assert (Path(record["runs"]["papermill"]) / "loss.png").stat().st_size > 10_000
    assert (root / "launches.png").stat().st_size > 10_000
