"""Strip outputs and execution counts from every tracked notebook (run before committing).

Usage: python scripts/strip_notebooks.py [--check]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]


def notebooks() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    found = {REPO / p for p in out} | {p for p in REPO.rglob("*.ipynb") if ".venv" not in p.parts and "runs" not in p.parts}
    return sorted(p for p in found if p.exists() and ".ipynb_checkpoints" not in p.parts)


def missing_ids(path: Path) -> int:
    """Cells of the notebook file without an `id` (nbformat 4.5 requires one; readers warn and invent one)."""
    return sum("id" not in cell for cell in json.loads(path.read_text())["cells"])


def strip(path: Path) -> bool:
    """Strip one notebook in place (and give every cell an id); True if it changed."""
    changed = bool(missing_ids(path))  # nbformat.read fills the ids in; writing keeps them
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            cell.outputs, cell.execution_count, changed = [], None, True
        for key in ("execution", "papermill"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    if changed:
        nbformat.write(nb, path)
    return changed


def main() -> int:
    check = "--check" in sys.argv
    dirty = []
    for p in notebooks():
        if check:
            nb = nbformat.read(p, as_version=4)
            if missing_ids(p) or any(c.cell_type == "code" and (c.outputs or c.execution_count is not None)
                                     for c in nb.cells):
                dirty.append(p)
        elif strip(p):
            print(f"stripped {p.relative_to(REPO)}")
    for p in dirty:
        print(f"{p.relative_to(REPO)} has outputs or cells without ids: run python scripts/strip_notebooks.py",
              file=sys.stderr)
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
