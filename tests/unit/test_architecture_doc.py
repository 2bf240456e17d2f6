"""docs/architecture.md describes the code as it is: every module, function and class it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "architecture.md").read_text()


def test_every_module_file_named_exists():
    paths = set(re.findall(r"`((?:forgekit|benchmarks)/[\w/]+(?:\.py|/))`", DOC))
    assert len(paths) > 30, paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_every_package_file_is_in_the_table():
    listed = set(re.findall(r"`(forgekit/[\w/]+\.py)`", DOC)) | set(re.findall(r"`(forgekit/\w+)/`", DOC))
    for path in sorted((REPO / "forgekit").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" or any(rel.startswith(p + "/") for p in listed):
            continue
        assert rel in listed, f"{rel} is not described in docs/architecture.md"


def test_every_dotted_name_resolves():
    names = set(re.findall(r"\b(forgekit(?:\.\w+)+)", DOC))
    assert len(names) > 10
    for name in sorted(names):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"docs/architecture.md names {name}: {'.'.join(parts[:i])} has no {attr}"
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"docs/architecture.md names {name}, which does not import")


# words in the table that are config keys or variables, not names in the module
NOT_CODE = {"forgekit", "logger", "quant_conf", "FORGEKIT_FAULTS"}


def test_functions_named_in_a_module_row_exist():
    rows = re.findall(r"\| `forgekit/([\w/]+)\.py` \| (.+?) \|\n", DOC)
    assert len(rows) > 25
    for module, text in rows:
        mod = importlib.import_module("forgekit." + module.replace("/", "."))
        for name in set(re.findall(r"`(\w+)`", text)) - NOT_CODE:
            assert hasattr(mod, name), f"docs/architecture.md: forgekit/{module}.py has no {name}"
