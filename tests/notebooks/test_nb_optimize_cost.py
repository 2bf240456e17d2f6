"""The cost cookbook: padding computed from the data, measured variants with consistent cost, the H100 ladder."""

from __future__ import annotations

import json

import nbformat
import pytest

from forgekit.runs import read_metrics, read_result
from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "cookbooks/optimize_cost/optimize_cost.ipynb"


def test_parameters_cell():
    names = parameter_names(nbformat.read(REPO / NOTEBOOK, as_version=4))
    assert {"RUN_ROOT", "MODEL_ID", "PRICE_PER_HOUR", "VARIANTS", "TRAIN_STEPS", "BENCHMARK_DIR"} <= names


def test_notebook_with_tiny_model(tiny_model_dir, tmp_path):
    root, price = tmp_path / "run", 2.5
    run_notebook(NOTEBOOK, {"RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "NUM_DEVICES": 1, "TRAIN_STEPS": 3,
                            "PRICE_PER_HOUR": price, "BATCH_SIZES": [1, 4, 16],
                            "VARIANTS": {"baseline": [], "packing": ["packing=true"]}}, tmp_path)
    rows = {r["variant"]: r for r in json.loads((root / "throughput.json").read_text())}
    assert set(rows) == {"baseline", "packing"}
    for name, row in rows.items():
        run = root / "runs" / name
        result = read_result(run)
        assert result["steps"] == 3
        assert row["tokens_per_second"] == result["tokens_per_second"] > 0
        assert row["train_tokens"] == result["train_tokens"] == read_metrics(run, "train")[-1]["tokens"]
        assert row["cost_per_million_tokens"] == pytest.approx(price / (3600 * result["tokens_per_second"]) * 1e6)
        assert row["run_cost"] == pytest.approx(price * result["wall_seconds"] / 3600)
        assert 0.1 < row["peak_worker_rss_gb"] < 64
    # the packed run trained on packed rows: fewer rows than examples, and no padding in its batches
    manifest = json.loads((root / "runs" / "packing" / "manifest.json").read_text())
    assert manifest["packed_rows"] < manifest["train_examples"]
    for name in ("padding_waste.png", "throughput.png", "h100_ladder.png", "h200_stacks.png"):
        assert (root / "plots" / name).stat().st_size > 10_000, name
