"""Repository promises: README.md is generated from README.ipynb; notebooks are stripped and parameterised."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from build_readme import render_readme
from strip_notebooks import missing_ids, notebooks

from tests.notebooks.harness import parameter_names


def test_readme_md_is_generated_from_notebook():
    assert (REPO / "README.ipynb").exists(), "README.ipynb is the README's source"
    assert (REPO / "README.md").read_text() == render_readme(), "run: python scripts/build_readme.py"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: str(p.relative_to(REPO)))
def test_notebook_is_stripped_and_has_one_parameters_cell(path):
    assert not missing_ids(path), "every cell needs an id (nbformat 4.5): run python scripts/strip_notebooks.py"
    nb = nbformat.read(path, as_version=4)
    assert not [c for c in nb.cells if c.cell_type == "code" and (c.outputs or c.execution_count is not None)], \
        "outputs and execution counts must be stripped: run python scripts/strip_notebooks.py"
    names = parameter_names(nb)
    assert names and all(n.isupper() for n in names), f"parameters must be UPPER_CASE literals: {sorted(names)}"
