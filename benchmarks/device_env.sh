# Source on an offline GPU host (from the repo root) before running benchmarks or `pytest -m gpu`:
#   source benchmarks/device_env.sh
# Installs the carried wheelhouse (.whl/, built by ../shared/device/make_wheelhouse.sh) into /tmp/site and
# sets the environment DeepSpeed and Ray need there (see ../shared/device/README.md).
# plus pytest and the notebook kernel (.whl/pytest/, .whl/nb/) when benchmarks/make_test_wheels.sh added them;
# FKB_INSTALL_S caps the install and the version probe (seconds), for scripts with a time budget
timeout ${FKB_INSTALL_S:-600} python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    $(ls .whl/pytest/*.whl .whl/nb/*.whl 2>/dev/null) 2>&1 | grep -v WARNING
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export FORGEKIT_TINY_SOURCE=${FORGEKIT_TINY_SOURCE:-$PWD/.bench/tokenizer}
export RAY_DEDUP_LOGS=0 HF_HUB_OFFLINE=1
timeout ${FKB_INSTALL_S:-600} python3 - <<'PY'
import importlib.metadata as md, inspect, torch
names = ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "ray", "liger-kernel", "triton"]
print("versions:", ", ".join(f"{n} {md.version(n)}" for n in names))
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA")
try:
    from torch.nn.attention.varlen import varlen_attn
    print("varlen_attn", inspect.signature(varlen_attn))
except ImportError as e:
    print("no torch.nn.attention.varlen:", e)
PY
