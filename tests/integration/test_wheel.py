"""forgekit as a user installs it: the built wheel in a fresh venv, used from a directory outside the checkout.

The wheel is built from the files git tracks (or would: untracked files not ignored), installed with `--no-deps`
into a new venv made from the base interpreter; the dependencies come from the project venv through a `.pth`
line that puts its site-packages on `sys.path` without running that directory's own `.pth` files, so the
checkout's editable-install finder is never installed and the checkout cannot be imported. The commands a user
runs then find the shipped configs and DeepSpeed presets in the wheel (`forgekit ls`, `forgekit cp`), and a
shipped CPU config trains end to end (the tiny model, 2 steps, as tests/integration/test_shipped_configs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = "custom/HuggingFaceTB--SmolLM2-135M-Instruct/lora/2xCPU-256.yaml"


def _run(args: list[str], cwd: Path, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv holding only the built forgekit wheel (dependencies borrowed from the project venv)."""
    root = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    src = root / "src"
    for name in filter(None, listed):
        if (REPO / name).is_file():  # (a file deleted in the working tree is still listed)
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    build = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                  str(root / "dist"), str(src)], root, dict(os.environ))
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (root / "dist").glob("forgekit-*.whl")
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   root, dict(os.environ))
    assert install.returncode == 0, install.stderr[-3000:]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # the project venv's
    # plain path lines: Python adds them to sys.path but runs none of the .pth files found there
    (Path(site) / "_forgekit_test_dependencies.pth").write_text("".join(f"{d}\n" for d in deps))
    return venv


@pytest.fixture
def user_env(wheel_venv, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RAY_ADDRESS")}
    env["PATH"] = f"{wheel_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_installed_package_is_the_wheel_not_the_checkout(wheel_venv, user_env, tmp_path):
    code = ("import json, sys, forgekit, forgekit.shipped as s; "
            "print(json.dumps([forgekit.__file__, str(s.shipped_root()), sys.path]))")
    out = _run([str(wheel_venv / "bin" / "python"), "-c", code], tmp_path, user_env)
    assert out.returncode == 0, out.stderr
    module, shipped, path = json.loads(out.stdout)
    assert Path(module).is_relative_to(wheel_venv), module
    assert Path(shipped) == Path(module).parent / "_shipped"
    assert not [p for p in path if p and Path(p).resolve() == REPO], path
    # the checkout's other packages are out of reach too
    probe = "import importlib.util as u; s = u.find_spec('tests'); print(s.origin if s else '')"
    tests = _run([str(wheel_venv / "bin" / "python"), "-c", probe], tmp_path, user_env).stdout.strip()
    assert not tests or not Path(tests).resolve().is_relative_to(REPO), tests


def test_ls_cp_validate_and_train_a_shipped_cpu_config(wheel_venv, user_env, tmp_path, tiny_model_dir, sample_data):
    work = tmp_path / "work"
    work.mkdir()
    ls = _run(["forgekit", "ls"], work, user_env)
    assert ls.returncode == 0, ls.stderr
    groups = [line for line in ls.stdout.splitlines() if line and not line.startswith((" ", "#"))]
    assert groups[:3] == ["training_configs/quickstart/", "training_configs/default/", "training_configs/custom/"]
    assert "deepspeed_configs/" in groups and f"  {CPU_CONFIG}" in ls.stdout and "  zero_2.json" in ls.stdout

    cp = _run(["forgekit", "cp", CPU_CONFIG, "./x.yaml"], work, user_env)
    assert cp.returncode == 0, cp.stderr
    shipped = wheel_venv.glob(f"lib/python*/site-packages/forgekit/_shipped/training_configs/{CPU_CONFIG}")
    assert (work / "x.yaml").read_text() == next(shipped).read_text()
    again = _run(["forgekit", "cp", CPU_CONFIG, "./x.yaml"], work, user_env)
    assert again.returncode == 2 and "--force" in again.stderr
    typo = _run(["forgekit", "cp", "quickstart/smollm2-135m-lora-cpy", "y.yaml"], work, user_env)
    assert typo.returncode == 2 and "did you mean 'quickstart/smollm2-135m-lora-cpu.yaml'" in typo.stderr

    check = _run(["forgekit", "validate", "--config-only", "./x.yaml"], work, user_env)
    assert check.returncode == 0, check.stderr[-3000:]
    (ds_line,) = [line for line in check.stdout.splitlines() if line.strip().startswith("config_path:")]
    ds_path = Path(ds_line.split(":", 1)[1].strip())
    assert ds_path.is_relative_to(wheel_venv) and ds_path.name == "zero_2.json", ds_line

    # the config's relative data paths, beside the copied config as a user would put them
    raw = yaml.safe_load((work / "x.yaml").read_text())
    for key in ("train_path", "valid_path"):
        (work / raw[key]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_data / raw[key].removeprefix("data/generated/"), work / raw[key])
    train = _run(["forgekit", "finetune", "x.yaml", f"model_id={tiny_model_dir}", "max_steps=2",
                  f"output_dir={work / 'runs'}"], work, user_env, timeout=600)
    assert train.returncode == 0, (train.stdout + train.stderr)[-5000:]
    result = json.loads(train.stdout[train.stdout.index("{\n"):])
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == work / "runs" and result["steps"] == 2 and result["world_size"] == raw["num_devices"]
    assert result["best_eval_loss"] > 0 and result["train_tokens"] > 0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert Path(resolved["deepspeed"]["config_path"]).is_relative_to(wheel_venv)
    assert Path(resolved["train_path"]).resolve() == (work / raw["train_path"]).resolve()  # beside the config
    assert (Path(result["best_checkpoint"]) / "adapter_model.safetensors").is_file()
