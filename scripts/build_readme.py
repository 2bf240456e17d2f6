"""Regenerate README.md from README.ipynb (the notebook is the source; a test fails when they drift).

Usage: python scripts/build_readme.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from README.ipynb by scripts/build_readme.py; edit the notebook, not this file. -->\n\n"


def render_readme(nb_path: Path = REPO / "README.ipynb") -> str:
    """Markdown cells as they are, code cells as fenced python blocks, outputs left out."""
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source.strip())
        elif cell.cell_type == "code" and cell.source.strip():
            parts.append("```python\n" + cell.source.strip() + "\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main() -> int:
    text = render_readme()
    target = REPO / "README.md"
    if "--check" in sys.argv:
        if target.read_text() != text:
            print("README.md is out of date: run python scripts/build_readme.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
