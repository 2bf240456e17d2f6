"""Quantized base models (QLoRA): the config's `quant_conf` section checked, turned into a `BitsAndBytesConfig`.

`quant_conf` is the Silogen engine's section, accepted as written there::

    quant_conf:
      quantization_type: bits-and-bytes
      load_in_4bit: true
      bnb_4bit_compute_dtype: bfloat16
      bnb_4bit_quant_type: nf4
      bnb_4bit_use_double_quant: true

Every other key is a keyword of `transformers.BitsAndBytesConfig`, checked key by key (`check_quant_conf`, called
by `FinetuneConfig` as `lora_config` is checked against peft's `LoraConfig`). What the worker calls when it
loads the model:

* `quantization_problems(quant_conf, use_gpu)`: what this machine lacks (bitsandbytes missing, or a build
  without the CPU or CUDA kernels the run needs), each with what to install;
* `bnb_config(quant_conf, compute_dtype=...)`: the `quantization_config` for `from_pretrained` (None: none);
* `quantized_weight_bytes(model_config, quant_conf)`: the weights' memory before and after quantization, for the
  plan and `forgekit validate`.

bitsandbytes is the optional extra `quant` (`pip install 'forgekit[quant]'`); 0.50.2, the pinned version, runs
4-bit and 8-bit layers, forward and backward, on CPUs too.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

__all__ = [
    "QUANTIZATION_TYPES",
    "bnb_config",
    "check_quant_conf",
    "is_quantized",
    "quantization_problems",
    "quantized_weight_bytes",
]

QUANTIZATION_TYPES = ("bits-and-bytes",)
DTYPES = ("bfloat16", "float16", "float32")
INSTALL = "pip install 'forgekit[quant]' (bitsandbytes==0.50.2)"

# the value each BitsAndBytesConfig keyword takes (its post_init checks them one by one, raising on the first)
_TYPES: dict[str, Any] = {
    "load_in_4bit": bool,
    "load_in_8bit": bool,
    "llm_int8_threshold": float,
    "llm_int8_skip_modules": list[str] | None,
    "llm_int8_enable_fp32_cpu_offload": bool,
    "llm_int8_has_fp16_weight": bool,
    "bnb_4bit_compute_dtype": Literal[DTYPES] | None,
    "bnb_4bit_quant_type": Literal["nf4", "fp4"],
    "bnb_4bit_use_double_quant": bool,
    "bnb_4bit_quant_storage": Literal[("uint8", *DTYPES)] | None,
}
_DTYPE_KEYS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


@functools.cache
def _bnb_keys() -> frozenset[str]:
    """`BitsAndBytesConfig`'s keywords (its signature), without `self` and `**kwargs`."""
    from transformers import BitsAndBytesConfig

    params = inspect.signature(BitsAndBytesConfig.__init__).parameters.values()
    return frozenset(p.name for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD)


def is_quantized(quant_conf: dict[str, Any] | None) -> bool:
    """Whether `quant_conf` loads the base model in 4 or 8 bits."""
    return bool(quant_conf) and bool(quant_conf.get("load_in_4bit") or quant_conf.get("load_in_8bit"))


def check_quant_conf(quant_conf: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`quant_conf` with each value as `BitsAndBytesConfig` takes it, and every problem (`quant_conf.KEY: ...`).

    Keys: `quantization_type` (the Silogen engine's; only `bits-and-bytes`) and `BitsAndBytesConfig`'s keywords,
    dtypes written as names (`bfloat16`). Then `BitsAndBytesConfig`'s own checks, and: exactly one of
    `load_in_4bit` / `load_in_8bit`; `bnb_4bit_*` keys only with `load_in_4bit`.
    """
    from pydantic import TypeAdapter, ValidationError

    from forgekit.config import _did_you_mean, _type_name

    known = _bnb_keys() | {"quantization_type"}
    problems, checked = [], {}
    for key, value in quant_conf.items():
        if key not in known:
            problems.append(f"quant_conf.{key}: not a transformers BitsAndBytesConfig field{_did_you_mean(key, known)}")
            continue
        if key == "quantization_type":
            if value not in QUANTIZATION_TYPES:
                problems.append(f"quant_conf.quantization_type: expected one of {', '.join(QUANTIZATION_TYPES)} "
                                f"(got {value!r}); forgekit quantizes with bitsandbytes only")
            checked[key] = value
            continue
        tp = _TYPES.get(key)
        if tp is None:  # a keyword newer than this table: BitsAndBytesConfig checks it below
            checked[key] = value
            continue
        try:
            checked[key] = TypeAdapter(tp).validate_python(value)
        except ValidationError:
            problems.append(f"quant_conf.{key}: expected {_type_name(tp)} (got {value!r})")
    if problems:
        return quant_conf, problems
    four, eight = bool(checked.get("load_in_4bit")), bool(checked.get("load_in_8bit"))
    if four and eight:
        problems.append("quant_conf: load_in_4bit and load_in_8bit are both true; choose one")
    elif not four and not eight:
        problems.append("quant_conf: quantizes nothing; set load_in_4bit: true (QLoRA) or load_in_8bit: true, "
                        "or remove the section")
    if eight:
        problems += [f"quant_conf.{k}: only used with load_in_4bit (load_in_8bit is set)"
                     for k in checked if k.startswith("bnb_4bit_")]
    if not problems:
        try:
            _build(checked)
        except (TypeError, ValueError) as e:  # BitsAndBytesConfig's own post_init checks
            problems.append(f"quant_conf: {e}")
    return checked, problems


def _build(quant_conf: dict[str, Any], compute_dtype: Any = None) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = {k: v for k, v in quant_conf.items() if k != "quantization_type"}
    for key in _DTYPE_KEYS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = getattr(torch, kwargs[key])
    if kwargs.get("load_in_4bit") and kwargs.get("bnb_4bit_compute_dtype") is None and compute_dtype is not None:
        kwargs["bnb_4bit_compute_dtype"] = compute_dtype
    return BitsAndBytesConfig(**kwargs)


def bnb_config(quant_conf: dict[str, Any] | None, *, compute_dtype: Any = None) -> Any:
    """The `quantization_config` to load the base model with: a `BitsAndBytesConfig`, or None for no quantization.

    Args:
        quant_conf: the config's (validated) `quant_conf`.
        compute_dtype: the dtype of the 4-bit layers' matrix products where `bnb_4bit_compute_dtype` is unset (the
            run's training dtype, e.g. `torch.bfloat16` on GPUs; bitsandbytes' own default, float32, is slow there).
    """
    if not is_quantized(quant_conf):
        return None
    return _build(quant_conf, compute_dtype)


def quantization_problems(quant_conf: dict[str, Any] | None, use_gpu: bool | None, *,
                          zero_stage: int | None = None) -> list[str]:
    """What this machine or run setup lacks to load the base model as `quant_conf` asks ([]: nothing).

    bitsandbytes must be installed and run the layers on the device: on a CPU (`use_gpu` false) a 4-bit or 8-bit
    layer is built and run once here; on GPUs, where CUDA is visible, likewise on the GPU. DeepSpeed ZeRO-3 shards
    4-bit weights only when they are stored in a float dtype (`bnb_4bit_quant_storage`), and 8-bit ones not at all.

    Args:
        quant_conf: the config's (validated) `quant_conf`.
        use_gpu: whether the run trains on GPUs (None: not known yet; then only the installation is checked).
        zero_stage: the DeepSpeed ZeRO stage of the run, when known.
    """
    if not is_quantized(quant_conf):
        return []
    try:
        import bitsandbytes
    except ImportError as e:
        return [f"quant_conf: needs bitsandbytes, which is not installed ({e}): {INSTALL}"]
    problems = []
    four = bool(quant_conf.get("load_in_4bit"))
    if zero_stage == 3:
        storage = quant_conf.get("bnb_4bit_quant_storage")
        if not four:
            problems.append("quant_conf: load_in_8bit cannot be sharded by DeepSpeed ZeRO-3; use load_in_4bit "
                            "with bnb_4bit_quant_storage: bfloat16, or a ZeRO-2 DeepSpeed config")
        elif storage in (None, "uint8"):
            problems.append("quant_conf.bnb_4bit_quant_storage: DeepSpeed ZeRO-3 shards 4-bit weights only when they "
                            "are stored in the model's float dtype; set bnb_4bit_quant_storage: bfloat16 (the run's "
                            "dtype), or use a ZeRO-2 DeepSpeed config")
    if zero_stage == 3 and use_gpu is False and four:
        # measured (tests/integration/test_qlora.py): ZeRO-3 QLoRA trains on CPU workers, but bitsandbytes repacks a
        # 4-bit weight into its CPU kernels' layout at the first evaluation (on CPUs with AVX512-BF16) while ZeRO-3
        # holds only a shard of it, and the next checkpoint's state_dict cannot unpack it (an AssertionError)
        problems.append("quant_conf: a 4-bit base under DeepSpeed ZeRO-3 does not run on CPU workers (bitsandbytes' "
                        "CPU kernels repack the weights ZeRO-3 partitions; saving a checkpoint fails); on CPUs use a "
                        "ZeRO-2 DeepSpeed config (or none); ZeRO-3 QLoRA runs on GPUs, with bnb_4bit_quant_storage")
    import torch

    device = "cuda" if use_gpu else "cpu"
    if use_gpu and not torch.cuda.is_available():  # the driver of a GPU cluster: the workers check their GPUs
        return problems
    if use_gpu is None:
        return problems
    why = _layer_fails(four, device)
    if why:
        where = "CPU" if device == "cpu" else "CUDA"
        problems.append(f"quant_conf: this bitsandbytes ({bitsandbytes.__version__}) cannot run "
                        f"{'4' if four else '8'}-bit layers on {where} ({why}): "
                        + ("install bitsandbytes>=0.50.2, whose wheel has CPU kernels, or train on GPUs"
                           if device == "cpu" else f"install a bitsandbytes with CUDA kernels for this GPU: {INSTALL}"))
    return problems


@functools.cache
def _layer_fails(four: bool, device: str) -> str | None:
    """Why a small bitsandbytes layer cannot run forward and backward on `device` (None: it can)."""
    import torch

    try:
        import bitsandbytes as bnb

        dense = torch.nn.Linear(64, 64, bias=False)
        if four:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False)
        layer.load_state_dict(dense.state_dict())
        layer = layer.to(device)  # quantizes the weights
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer(x).float().sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return "no finite gradient"
    except Exception as e:  # noqa: BLE001 - any failure of the library means one thing here: it cannot run
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def quantized_weight_bytes(model_config: Any, quant_conf: dict[str, Any] | None, *,
                           dtype_bytes: int = 2) -> dict[str, int]:
    """The base model's weight memory unquantized and as `quant_conf` loads it (an estimate from the config).

    bitsandbytes (through transformers) quantizes the linear layers of the decoder; the embeddings, norms and the
    output layer stay in the model dtype. A 4-bit weight takes half a byte plus one float32 scale per block of 64
    (with double quantization: one 8-bit scale per block plus a float32 per 256 blocks); an 8-bit weight one byte
    plus a float32 scale per output row.

    Args:
        model_config: the base model's `transformers` config (`AutoConfig.from_pretrained`).
        quant_conf: the config's `quant_conf` (None or not quantizing: both figures equal).
        dtype_bytes: bytes per unquantized parameter (2 for bf16, 4 for float32).

    Returns:
        `{"unquantized": bytes, "quantized": bytes, "quantized_params": n}`: n is the number of parameters stored
        in 4 or 8 bits.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    skip = set((quant_conf or {}).get("llm_int8_skip_modules") or [])
    out_layer = model.get_output_embeddings()
    seen, total, quantized, extra = set(), 0, 0, 0.0
    four = bool((quant_conf or {}).get("load_in_4bit"))
    double = bool((quant_conf or {}).get("bnb_4bit_use_double_quant"))
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:  # tied weights are stored once
                continue
            seen.add(id(p))
            total += p.numel()
            is_linear = isinstance(module, torch.nn.Linear) and p is module.weight and module is not out_layer
            if is_quantized(quant_conf) and is_linear and not any(s in name.split(".") for s in skip):
                quantized += p.numel()
                if four:
                    extra += p.numel() * ((1 / 64 + 4 / (64 * 256)) if double else 4 / 64)
                else:
                    extra += 4 * module.out_features
    bits = 4 if four else 8
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary frequencies and the like
    return {
        "unquantized": total * dtype_bytes + buffers,
        "quantized": int((total - quantized) * dtype_bytes + quantized * bits / 8 + extra) + buffers,
        "quantized_params": quantized,
    }

