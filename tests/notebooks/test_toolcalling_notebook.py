"""The function-calling notebook runs end to end (tiny model, few steps) and writes both evaluations and the plot."""

from __future__ import annotations

import json

import nbformat

from tests.notebooks.harness import REPO, parameter_names, parameters_cell, run_notebook

NOTEBOOK = "end_to_end_examples/fine_tune_function_calling/fine_tune_function_calling.ipynb"


def test_parameters_cell_holds_upper_case_literals_and_outputs_are_stripped():
    nb = nbformat.read(REPO / NOTEBOOK, as_version=4)
    names = parameter_names(nb)
    assert {"RUN_ROOT", "MODEL_ID", "CONFIG", "N_TRAIN", "N_TEST", "TRAIN_OVERRIDES"} <= names
    assert all(n.isupper() for n in names)
    assert "parameters" in parameters_cell(nb).metadata["tags"]
    assert any("gpu" in c.metadata.get("tags", []) for c in nb.cells)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def test_notebook_end_to_end_with_tiny_model(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(NOTEBOOK, {
        "RUN_ROOT": str(root),
        "MODEL_ID": str(tiny_model_dir),
        "N_TRAIN": 16,
        "N_VALID": 4,
        "N_TEST": 4,
        "TRAIN_OVERRIDES": ["max_steps=2", "num_devices=1", "train_batch_size_per_device=4"],
        "EVAL_BATCH_SIZE": 8,
    }, tmp_path)
    results = json.loads((root / "results" / "function_calling_results.json").read_text())
    assert set(results["evaluations"]) == {"base", "fine-tuned"}
    for report in results["evaluations"].values():
        assert report["conversations"] == 4 and report["turns"] >= 4
        assert report["settings"]["device"] == "cpu" and report["settings"]["num_threads"] == 1
        assert set(report["by_category"]) == {"single", "parallel", "multi_turn", "no_call"}
        assert list(report["measures"]) == [
            "seen_tools", "held_out_tools", "parallel", "single", "multi_turn", "no_call"]  # synthetic test split
        assert "call_turn_exact_match" in report and 0 < report["never_call_score"] < 1
        correct = round(report["exact_match"] * report["turns"])  # the headline is turn-level
        assert correct + sum(report["failures"].values()) == report["turns"]
    assert results["training"]["steps"] == 2
    assert (root / "results" / "function_calling_accuracy.png").stat().st_size > 10_000
    turns = (root / "eval" / "tuned_turns.jsonl").read_text().splitlines()
    assert len(turns) == results["evaluations"]["fine-tuned"]["turns"]
