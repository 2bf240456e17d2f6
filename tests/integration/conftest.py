"""Fixtures of the integration tests that train: a module's local Ray cluster and its small data sets."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from forgekit.train import init_ray

    init_ray(None, num_devices=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """8 training examples (one optimizer step of 2 workers x 4 sees them all: a repeated batch), 8 valid."""
    from forgekit.convert import read_jsonl
    from forgekit.examples.sample_data import write_classification_dataset, write_quickstart_dataset

    root = tmp_path_factory.mktemp("data")
    paths = write_quickstart_dataset(root / "tickets", n_train=8, n_valid=8, n_test=1)
    routing = write_classification_dataset(root / "routing", n_train=16, n_valid=8)
    labels = sorted({r["messages"][-1]["content"] for r in read_jsonl(routing["train"])})
    return {"train": Path(paths["train"]), "valid": Path(paths["valid"]), "cls_train": Path(routing["train"]),
            "cls_valid": Path(routing["valid"]), "labels": labels}
