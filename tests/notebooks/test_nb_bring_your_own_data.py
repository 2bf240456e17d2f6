"""The bring-your-own-data cookbook converts every source kind and trains (tiny model, 2 steps) from http URLs."""

from __future__ import annotations

import csv
import json

import yaml

from forgekit.data import read_examples
from tests.notebooks.harness import REPO, run_notebook

FOLDER = REPO / "cookbooks" / "bring_your_own_data"
NOTEBOOK = "cookbooks/bring_your_own_data/bring_your_own_data.ipynb"


def _count(path):
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_notebook_converts_validates_and_trains_from_http(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(
        NOTEBOOK,
        {
            "RUN_ROOT": str(root),
            "MODEL_ID": str(tiny_model_dir),
            "OVERRIDES": ["max_steps=2", "num_devices=1"],
        },
        tmp_path,
    )
    data = root / "data"
    with (FOLDER / "sample_data" / "faq.csv").open(newline="") as f:
        n_faq = len(list(csv.DictReader(f)))
    n_instructions = _count(FOLDER / "sample_data" / "instructions.jsonl")
    # every source became valid chat data, one conversation per row
    assert len(read_examples(str(data / "faq.jsonl"))) == n_faq
    assert len(read_examples(str(data / "instructions.jsonl"))) == n_instructions
    assert len(read_examples(str(data / "hf_from_folder.jsonl"))) == n_instructions
    assert (data / "hf_from_parquet.jsonl").read_text() == (data / "hf_from_folder.jsonl").read_text()
    paragraphs = read_examples(str(data / "care_guide.jsonl"), task="causal_lm")
    assert len(paragraphs) >= 5 and all(len(ex.messages) == 1 for ex in paragraphs)
    assert not (data / "oops.jsonl").exists(), "a failed conversion must not write a file"
    # the split holds every converted example exactly once
    train, valid = (
        (data / "train.jsonl").read_text().splitlines(),
        (data / "valid.jsonl").read_text().splitlines(),
    )
    assert len(valid) >= 1 and sorted(train + valid) == sorted((data / "all.jsonl").read_text().splitlines())
    assert len(train) + len(valid) == n_faq + n_instructions
    # the run trained from the http URLs the notebook served
    (run_dir,) = [p for p in (root / "runs").iterdir() if (p / "result.json").exists()]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train_path"].startswith("http://127.0.0.1:") and config["train_path"].endswith(
        "/train.jsonl"
    )
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["train_examples"] == len(train) and manifest["valid_examples"] == len(valid)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 2 and result["best_eval_loss"] > 0
    assert (run_dir / "loss.png").stat().st_size > 10_000


def test_shipped_broken_file_is_reported_line_by_line():
    """The notebook's deliberately broken JSONL: lines 2-6 are each wrong in their own way, 1 and 7 are fine."""
    import pytest

    from forgekit.data import DataError

    path = "cookbooks/bring_your_own_data/sample_data/broken.jsonl"
    with pytest.raises(DataError) as e:
        read_examples(str(REPO / path))
    lines = {int(p.split(f"{path}:")[1].split(":")[0]) for p in e.value.problems}
    assert lines == {2, 3, 4, 5, 6}
    text = "\n".join(e.value.problems)
    for fragment in (":2: invalid JSON", ":3: messages[0]: unknown role 'customer'", ":4: messages[1] (assistant): empty content",
                     ":5: missing 'messages'", ":6: no assistant message"):
        assert fragment in text
