"""Running a notebook as a regression test: papermill with checked parameters, `gpu` cells removed on CPU.

Each notebook's test calls `run_notebook(path, params, tmp_path)` and then asserts on the artifacts the
notebook wrote under its run root (result.json, metrics.jsonl, checkpoints, plots), never on cell text.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected exactly one cell tagged 'parameters', found {len(cells)}"
    return cells[0]


def parameter_names(nb: nbformat.NotebookNode) -> set[str]:
    """Names assigned in the parameters cell (UPPER_CASE literals, as the style guide asks)."""
    tree = ast.parse(parameters_cell(nb).source)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def run_notebook(path: str | Path, params: dict, tmp_path: Path, *, gpu: bool = False, timeout: int = 900) -> Path:
    """Execute a notebook with papermill and return the executed copy's path.

    Fails when a parameter is not in the notebook's parameters cell (papermill only warns), when a cell
    raises, or when a started cell did not finish.
    """
    import papermill as pm

    path = REPO / path
    nb = nbformat.read(path, as_version=4)
    unknown = set(params) - parameter_names(nb)
    assert not unknown, f"{path.name}: parameters not in its parameters cell: {sorted(unknown)}"
    if not gpu:
        nb.cells = [c for c in nb.cells if "gpu" not in c.get("metadata", {}).get("tags", [])]
    src = tmp_path / f"in-{path.name}"
    out = tmp_path / f"out-{path.name}"
    nbformat.write(nb, src)
    # the kernel inherits this process's environment (FORGEKIT_CACHE from conftest: one model fetch per session)
    pm.execute_notebook(
        str(src), str(out), parameters=params, cwd=str(path.parent), kernel_name="python3",
        progress_bar=False, execution_timeout=timeout,
    )
    executed = nbformat.read(out, as_version=4)
    for i, cell in enumerate(executed.cells):
        if cell.cell_type != "code":
            continue
        status = cell.get("metadata", {}).get("papermill", {}).get("status")
        assert status == "completed", f"{path.name}: cell {i} status {status!r} (started but not finished?)"
    return out
