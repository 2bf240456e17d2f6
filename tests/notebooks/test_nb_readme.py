"""README.ipynb runs end to end (tiny model, 2 steps) and its deterministic cells pass nbval.

The fine-tune runs once: papermill executes the whole notebook with tiny parameters (training included), and
nbval then re-executes that executed copy with `--nbval-lax`: cells tagged `nbval-skip` (the training cell
and everything that reads its result) are skipped, the others run again, and those tagged
`nbval-check-output` must print exactly what they printed under papermill.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "README.ipynb"


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


@pytest.fixture(scope="module")
def executed(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("readme")
    root = tmp / "run"
    params = {
        "RUN_ROOT": str(root),
        "MODEL_ID": str(tiny_model_dir),
        "OVERRIDES": ["max_steps=2", "num_devices=1"],
        "MAX_NEW_TOKENS": 8,
    }
    return run_notebook(NOTEBOOK, params, tmp), root, tiny_model_dir


def test_notebook_cells_are_tagged_for_the_test_tiers():
    nb = nbformat.read(REPO / NOTEBOOK, as_version=4)
    assert {"RUN_ROOT", "CONFIG", "MODEL_ID", "OVERRIDES", "GPU"} <= parameter_names(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("gpu" in _tags(c) for c in code)
    trains = [c for c in code if "finetune(" in c.source]
    assert trains and all("nbval-skip" in _tags(c) for c in trains), "training must not run again under nbval"
    assert sum("nbval-check-output" in _tags(c) for c in code) >= 3


def test_readme_quickstart_shows_exactly_two_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README.md needs a Quickstart section with one bash block"
    commands = [
        line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()
    ]
    assert commands == ["make quickstart", "make test"]


def test_first_finetune_writes_a_complete_run_directory(executed):
    _, root, model_dir = executed
    run_dir = root / "first-finetune"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 2
    assert (run_dir / "checkpoints").is_dir()
    best = run_dir / "checkpoints" / result["best_checkpoint"].rsplit("/", 1)[-1]
    assert (best / "adapter_model.safetensors").is_file() and (best / "tokenizer_config.json").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(r["loss"] > 0 for r in train)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert evals and result["best_eval_loss"] == min(r["eval_loss"] for r in evals if r["step"] > 0)
    config = (run_dir / "config.yaml").read_text()
    assert f"model_id: {model_dir}" in config and "num_devices: 1" in config
    assert (root / "loss.png").stat().st_size > 10_000


def test_deterministic_cells_pass_nbval_on_the_executed_notebook(executed):
    out, _, _ = executed
    # nbval starts the kernel in the notebook's folder; the README's paths are relative to the repository root
    for name in ("training_configs", "data", "deepspeed_configs"):
        (out.parent / name).symlink_to(REPO / name)
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checked = [c for c in code if "nbval-check-output" in _tags(c)]
    assert checked and all(c.outputs for c in checked), "the reference outputs come from the papermill run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--rootdir",
            str(out.parent),
            "-q",
            str(out),
        ],
        check=False,
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    skipped = sum("nbval-skip" in _tags(c) for c in code)
    summary = proc.stdout.strip().splitlines()[-1]
    assert f"{len(code) - skipped} passed" in summary and f"{skipped} skipped" in summary, summary
