#!/usr/bin/env bash
# Adds to the device wheelhouse (.whl/, from ../shared/device/make_wheelhouse.sh) what the GPU test tier needs
# beyond it: pytest (.whl/pytest/) and papermill with a Jupyter kernel for the notebooks' `gpu` cells (.whl/nb/),
# pinned to the set that passed on the H200 (benchmarks/results/README.md, ninth session).
# ipykernel's debugger (debugpy) and IPython's completion (jedi) are left out: papermill uses neither, and the
# 64 MiB cap on what travels to the GPU host leaves ~5 MB for these. Run from the repo root, then on the host:
#   source benchmarks/device_env.sh      # installs .whl/*.whl and these folders
#   python -m pytest -m gpu tests/gpu/test_gpu.py tests/gpu/test_gpu_notebooks.py
set -euo pipefail
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
get() {
  local dir=$1 p out; shift; mkdir -p "$dir"
  for p in "$@"; do
    out=$(python3 -m pip download -q --no-deps "${plat[@]}" -d "$dir" "$p" 2>&1) || { echo "$out" >&2; exit 1; }
  done
}
get .whl/pytest pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
get .whl/nb papermill==2.7.0 nbformat==5.11.1 nbclient==0.11.0 jupyter_client==8.10.0 jupyter_core==5.9.1 \
  ipykernel==7.4.0 ipython==9.18.1 traitlets==5.16.1 pyzmq==27.3.0 tornado==6.6.1 comm==0.2.3 \
  matplotlib_inline==0.2.2 nest_asyncio2==1.7.4 tenacity==9.2.1 entrypoints==0.4.2 fastjsonschema==2.22.3 \
  platformdirs==4.14.9 psutil==7.2.2 pexpect==4.9.0 ptyprocess==0.7.0 prompt_toolkit==3.0.53 wcwidth==0.9.4 \
  stack_data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure_eval==0.2.4 ipython_pygments_lexers==1.1.1 parso==0.8.7
du -sh .whl/pytest .whl/nb
