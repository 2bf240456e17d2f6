"""Speed levers the training worker applies to a model and its batches, each one measured in benchmarks/.

Each function does one thing to a model already loaded (before or after peft wraps it) or to a batch, and
reports what it did; none changes what the model computes beyond floating-point rounding:

- :func:`apply_liger`: Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear + cross-entropy, which
  never materialises the ``tokens x vocab`` logits).
- :func:`pick_attention`: the attention implementation for a run. Packed rows carry per-example
  ``position_ids`` and no attention mask; transformers (>= 5.0) then derives a block-diagonal causal mask
  from the position ids for ``sdpa``, ``eager`` and ``flex_attention``. Only ``flex_attention`` skips the
  masked blocks (cost grows with each example's length, not the row's), so it is the choice for packing.
- :func:`set_activation_checkpointing`: checkpoint every k-th decoder layer (selective) instead of all.
- :func:`compile_decoder_layers`: ``torch.compile`` each decoder layer in place.
- :func:`pad_packed_batch`: pad a flattened packed batch to a multiple of a block size (fewer recompiles).
- :func:`fused_optimizer_name`: the fused AdamW of PyTorch where it is available.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("forgekit")

__all__ = [
    "apply_liger",
    "pick_attention",
    "decoder_layers",
    "set_activation_checkpointing",
    "compile_decoder_layers",
    "pad_packed_batch",
    "fused_optimizer_name",
]


def _base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def apply_liger(model: Any, **kwargs: Any) -> bool:
    """Patch a loaded model instance in place with Liger kernels.

    Call it before the first forward pass; with peft it may be called before or after wrapping.

    Args:
        model: a transformers model, or a peft model around one.
        **kwargs: passed to Liger's per-architecture apply function (e.g. ``rope=False``); keys that function
            does not take are dropped by Liger.

    Returns:
        True if Liger knows the architecture and patched it; False if liger-kernel is not installed or
        does not support the model type (a warning says which).
    """
    try:
        from liger_kernel.transformers.monkey_patch import (
            MODEL_TYPE_TO_APPLY_LIGER_FN,
            _apply_liger_kernel_to_instance,
        )
    except ImportError:
        log.warning("liger_kernel.enabled is set but liger-kernel is not installed: pip install liger-kernel")
        return False
    base = _base_model(model)
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        log.warning("Liger kernels do not support model type %r; running without them", model_type)
        return False
    _apply_liger_kernel_to_instance(model=base, **kwargs)
    return True


def pick_attention(requested: str, *, packing: bool, on_gpu: bool) -> str:
    """The attention implementation to load the model with.

    Args:
        requested: the config's ``attn_implementation``; ``"auto"`` lets forgekit choose.
        packing: whether batches are packed rows (per-example position ids, no attention mask).
        on_gpu: whether the worker trains on a CUDA device.

    Returns:
        ``requested`` unchanged unless it is ``"auto"``; for ``"auto"``: ``"flex_attention"`` for packed
        batches on a GPU (block-sparse document mask, cost per example), else ``"sdpa"``.
    """
    if requested != "auto":
        return requested
    return "flex_attention" if packing and on_gpu else "sdpa"


def decoder_layers(model: Any) -> list:
    """The decoder layers of a transformers model (the modules gradient checkpointing wraps), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in _base_model(model).modules() if isinstance(m, GradientCheckpointingLayer)]


def set_activation_checkpointing(model: Any, every: int = 1) -> int:
    """Checkpoint (recompute in backward) every ``every``-th decoder layer; leave the others stored.

    ``every=1`` checkpoints all layers (least memory), ``every=2`` half of them, ``every=0`` none (most
    memory, fastest). The Trainer must then run with ``gradient_checkpointing=False``, or it re-enables
    checkpointing on every layer.

    Args:
        model: a transformers model, or a peft model around one.
        every: the checkpointing period, >= 0.

    Returns:
        The number of checkpointed layers.

    Raises:
        ValueError: if ``every`` < 0 or the model has no checkpointable decoder layers.
    """
    if every < 0:
        raise ValueError(f"activation checkpointing period must be >= 0, got {every}")
    base = _base_model(model)
    layers = decoder_layers(base)
    if not layers:
        raise ValueError(f"{type(base).__name__} has no decoder layers that support gradient checkpointing")
    if every == 0:
        base.gradient_checkpointing_disable()
        return 0
    # non-reentrant checkpointing: works with frozen inputs (LoRA) without enable_input_require_grads
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i % every == 0
    return sum(layer.gradient_checkpointing for layer in layers)


def compile_decoder_layers(model: Any, **compile_kwargs: Any) -> int:
    """``torch.compile`` every decoder layer in place (``nn.Module.compile``); the rest stays eager.

    Compiling layer by layer keeps graphs small (one compilation serves all layers of the same shape) and
    leaves the loss, peft and DeepSpeed hooks outside the compiled regions.

    Args:
        model: a transformers model, or a peft model around one.
        **compile_kwargs: passed to ``torch.compile`` (e.g. ``dynamic=True``, ``mode=...``).

    Returns:
        The number of compiled layers.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(**compile_kwargs)
    return len(layers)


def pad_packed_batch(batch: dict, multiple: int, pad_token_id: int) -> dict:
    """Right-pad a flattened packed batch (``position_ids``, no ``attention_mask``) to a length multiple.

    The padding forms one extra "example" (position ids restart at 0; labels -100), so no real token
    attends to it and it adds nothing to the loss. Fewer distinct shapes mean fewer recompilations of
    compiled kernels (FlexAttention, compiled layers).

    Args:
        batch: ``input_ids``, ``labels`` and ``position_ids`` tensors of shape ``(1, n)``.
        multiple: the length multiple, >= 1 (e.g. 128, the FlexAttention block size).
        pad_token_id: token id of the padding.

    Returns:
        A new batch dict; the input is not modified. Real tokens are ``batch["input_ids"].shape[1]`` of the
        input.

    Raises:
        ValueError: if the batch is not a flattened packed batch or ``multiple`` < 1.
    """
    import torch

    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if "position_ids" not in batch or "attention_mask" in batch or batch["input_ids"].shape[0] != 1:
        raise ValueError("pad_packed_batch needs one flattened packed row: position_ids and no attention_mask")
    n = batch["input_ids"].shape[1]
    extra = -n % multiple
    if extra == 0:
        return dict(batch)
    out = dict(batch)
    fill = {"input_ids": pad_token_id, "labels": -100}
    for key in ("input_ids", "labels"):
        out[key] = torch.cat([batch[key], batch[key].new_full((1, extra), fill[key])], dim=1)
    pos = batch["position_ids"]
    out["position_ids"] = torch.cat([pos, torch.arange(extra, dtype=pos.dtype, device=pos.device)[None]], dim=1)
    return out


def fused_optimizer_name(on_gpu: bool) -> str:
    """The transformers ``optim`` name for AdamW: PyTorch's fused kernel on GPUs, the default loop on CPU."""
    return "adamw_torch_fused" if on_gpu else "adamw_torch"
