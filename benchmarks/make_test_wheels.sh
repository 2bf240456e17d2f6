#!/usr/bin/env bash
# Adds to the device wheelhouse (.whl/, from ../shared/device/make_wheelhouse.sh) what the GPU test tier needs
# beyond it: pytest (.whl/pytest/) and papermill with a Jupyter kernel for the notebooks' `gpu` cells (.whl/nb/).
# ipykernel's debugger (debugpy) and IPython's completion (jedi) are left out: papermill uses neither, and the
# 64 MiB cap on what travels to the GPU host leaves ~5 MB for these. Run from the repo root, then on the host:
#   source benchmarks/device_env.sh      # installs .whl/*.whl and these folders
#   python -m pytest -m gpu tests/test_gpu.py tests/test_gpu_notebooks.py
set -euo pipefail
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
get() { dir=$1; shift; mkdir -p "$dir"; for p in "$@"; do
  python3 -m pip download -q --no-deps "${plat[@]}" -d "$dir" "$p" 2>&1 | grep -v '^WARNING' || true; done; }
get .whl/pytest pytest pluggy iniconfig
get .whl/nb papermill nbformat nbclient jupyter_client jupyter_core ipykernel ipython traitlets pyzmq tornado \
  comm matplotlib_inline nest_asyncio2 tenacity entrypoints fastjsonschema platformdirs psutil pexpect ptyprocess \
  prompt_toolkit wcwidth stack_data executing asttokens pure_eval ipython_pygments_lexers parso
du -sh .whl .whl/pytest .whl/nb
