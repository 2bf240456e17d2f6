"""The launch-as-job cookbook trains the same config three ways (CLI, papermill, Ray job) into a run directory on a
local S3 server (moto, started by the test: what a cluster whose nodes share only object storage needs), and stops
its cluster."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from forgekit import storage
from tests.integration.servers import moto_s3
from tests.notebooks.harness import run_notebook

NOTEBOOK = "cookbooks/launch_as_job/launch_as_job.ipynb"


def test_three_launches_train_the_same_run_and_the_cluster_is_stopped(tiny_model_dir, tmp_path):
    # `ray job submit` talks to Ray's dashboard: its dependencies come with ray[default], a forgekit dependency
    import ray.dashboard.optional_deps  # noqa: F401 - fails (not skips) when the install lacks them

    root = tmp_path / "run"
    with moto_s3(tmp_path, "fk-jobs") as bucket:  # the kernel, its launches and their workers inherit its variables
        run_notebook(
            NOTEBOOK,
            {
                "RUN_ROOT": str(root),
                "OUTPUT_DIR": f"{bucket}/runs",
                "MODEL_ID": str(tiny_model_dir),
                "MAX_STEPS": 2,
                "NUM_DEVICES": 1,
            },
            tmp_path,
        )
        _check_launches(root, bucket)


def _check_launches(root: Path, bucket: str) -> None:
    import psutil

    record = json.loads((root / "launches.json").read_text())
    assert "succeeded" in record["ray_job_status"].lower()  # `ray job status`: "Job '...' succeeded"
    assert record["ray_cluster_exit_code"] is not None and not psutil.pid_exists(record["ray_cluster_pid"])
    losses = {}
    for name, run_dir in record["runs"].items():
        assert run_dir.startswith(f"{bucket}/runs/"), name  # on the bucket, not a local folder named "s3:"
        result = json.loads(storage.read_text(storage.join(run_dir, "result.json")))
        assert result["steps"] == 2, name
        assert result["best_checkpoint"].startswith(f"{run_dir}/checkpoints/"), name
        assert storage.exists(storage.join(result["best_checkpoint"], "adapter_model.safetensors")), name
        rows = [json.loads(line) for line in storage.read_text(storage.join(run_dir, "metrics.jsonl")).splitlines()]
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
    fs, figure = storage.filesystem(storage.join(record["runs"]["papermill"], "loss.png"))
    assert fs.size(figure) > 10_000  # the papermill run's figure, saved next to its run on the bucket
    assert not list(Path.cwd().glob("s3:*")) and not list(root.glob("s3:*"))
    assert (root / "launches.png").stat().st_size > 10_000
