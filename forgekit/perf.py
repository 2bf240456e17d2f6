"""Speed levers the training worker applies to a model and its batches, each one measured in benchmarks/.

Each function does one thing to a model already loaded (before or after peft wraps it) or to a batch, and
reports what it did; none changes what the model computes beyond floating-point rounding:

- :func:`pick_attention`: the attention implementation for a run. Packed rows are one flattened row per
  micro-batch with per-example ``position_ids`` and no attention mask; transformers (>= 5.0) then keeps the
  examples apart: ``sdpa`` and ``eager`` through a dense block-diagonal mask (cost and memory grow with the
  row's length squared), ``flex_attention`` through a block-sparse document mask, and ``forgekit_varlen``
  (registered by :func:`register_varlen_attention`) through PyTorch's variable-length FlashAttention, whose
  cost grows with each example's own length and which needs no mask at all.
- :func:`varlen_kwargs`: per-row boundaries of a packed batch, computed once on the CPU in the collate
  function so that no layer has to derive them on the GPU (no host sync, compile-friendly).
- :func:`apply_liger`: Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear + cross-entropy, which
  never materialises the ``tokens x vocab`` logits).
- :func:`set_activation_checkpointing`: checkpoint every k-th decoder layer (selective) instead of all;
  :func:`checkpoint_period` picks k from a memory estimate.
- :func:`compile_decoder_layers`: ``torch.compile`` each decoder layer in place.
- :func:`pad_packed_batch`: pad a flattened packed batch to a multiple of a block size (fewer recompiles).
- :func:`fused_optimizer_name`: the fused AdamW of PyTorch where it is available.
- :func:`lora_sum_in_fp32`: under CPU bf16 autocast, add each LoRA update to its layer's output in fp32.
- :func:`supervised_logits_only`: compute the output layer and the loss at supervised positions only (where
  Liger's fused cross-entropy has not replaced the forward): the same loss, without the prompts' logits.
- :func:`zero3_buckets`: DeepSpeed ZeRO-3 bucket sizes of one decoder layer (fewer, larger collectives).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from typing import Any

log = logging.getLogger("forgekit")

__all__ = [
    "VARLEN",
    "activation_bytes_per_token",
    "apply_liger",
    "checkpoint_period",
    "compile_decoder_layers",
    "decoder_layers",
    "fused_optimizer_name",
    "lora_sum_in_fp32",
    "pad_packed_batch",
    "pick_attention",
    "register_varlen_attention",
    "set_activation_checkpointing",
    "supervised_logits_only",
    "varlen_attention_forward",
    "varlen_available",
    "varlen_kwargs",
    "zero3_buckets",
]

#: The transformers ``attn_implementation`` name under which :func:`register_varlen_attention` registers
#: PyTorch's variable-length FlashAttention.
VARLEN = "forgekit_varlen"


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


def varlen_available() -> bool:
    """Whether PyTorch's variable-length FlashAttention (``torch.nn.attention.varlen``) can run here (CUDA)."""
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_attention(requested: str, *, packing: bool, on_gpu: bool) -> str:
    """The attention implementation to load the model with.

    Args:
        requested: the config's ``attn_implementation``: a transformers name, ``"varlen"`` (PyTorch's
            variable-length FlashAttention, registered on demand) or ``"auto"`` to let forgekit choose.
        packing: whether batches are packed rows (per-example position ids, no attention mask).
        on_gpu: whether the worker trains on a CUDA device.

    Returns:
        The name to pass as ``attn_implementation``. ``"auto"`` gives :data:`VARLEN` on a GPU with
        ``torch.nn.attention.varlen`` (packed or padded batches alike: padding is removed before the kernel),
        else ``"flex_attention"`` for packed batches on a GPU, else ``"sdpa"``.
    """
    if requested == "varlen" or requested == VARLEN:
        return register_varlen_attention()
    if requested != "auto":
        return requested
    if on_gpu and varlen_available():
        return register_varlen_attention()
    return "flex_attention" if packing and on_gpu else "sdpa"


def register_varlen_attention() -> str:
    """Register :func:`varlen_attention_forward` with transformers under :data:`VARLEN`; idempotent.

    Returns:
        :data:`VARLEN`, to pass as ``attn_implementation`` to ``from_pretrained`` or
        ``model.set_attn_implementation``.
    """
    from transformers import AttentionInterface

    try:
        from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    except ImportError:  # older transformers: no mask registry, the 2D mask reaches the function as is
        AttentionMaskInterface = flash_attention_mask = None
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    if AttentionMaskInterface is not None:
        # the FlashAttention mask rule: None when there is no padding, else the 2D padding mask
        AttentionMaskInterface.register(VARLEN, flash_attention_mask)
    return VARLEN


def varlen_kwargs(position_ids: Any) -> dict:
    """Document boundaries of a packed batch as the keyword arguments transformers passes to attention.

    A new document starts at every row start and wherever a position id is not the previous one plus one
    (the rule transformers uses to detect packed rows). Compute this on the CPU in the collate function:
    the attention layers then need no host sync and no data-dependent shapes.

    Args:
        position_ids: ``(batch, seq)`` integer tensor of a packed batch.

    Returns:
        ``{"cu_seq_lens_q", "cu_seq_lens_k"}`` (int32 cumulative lengths over the flattened batch, on the
        tensor's device) and ``{"max_length_q", "max_length_k"}`` (the longest document, a Python int).
    """
    import torch

    pos = position_ids.reshape(position_ids.shape[0], -1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    idx = starts.flatten().nonzero().flatten()
    cu = torch.cat([idx, idx.new_tensor([pos.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def _varlen_call(q: Any, k: Any, v: Any, cu: Any, max_len: int, scaling: float | None) -> Any:
    """``(tokens, heads, dim)`` causal attention per document through ``torch.nn.attention.varlen``."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    n_heads, n_kv, dim = q.shape[1], k.shape[1], q.shape[2]
    kwargs: dict[str, Any] = {}
    if n_kv != n_heads:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # query head j uses key/value head j // group, as transformers' repeat_kv
            k = k.repeat_interleave(n_heads // n_kv, dim=1)
            v = v.repeat_interleave(n_heads // n_kv, dim=1)
    if scaling is not None and not math.isclose(scaling, dim**-0.5, rel_tol=1e-6):
        if "scale" in params:
            kwargs["scale"] = scaling
        else:
            q = q * (scaling * dim**0.5)
    # torch 2.9/2.10 take is_causal; later versions take a (left, right) window, (-1, 0) being causal
    kwargs.update({"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)})
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _per_document_sdpa(q: Any, k: Any, v: Any, cu: Any, scaling: float | None) -> Any:
    """The same function as :func:`_varlen_call`, one SDPA call per document (CPU fallback, reference)."""
    import torch
    import torch.nn.functional as F

    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in itertools.pairwise(bounds):
        qd, kd, vd = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        if group > 1:
            kd, vd = kd.repeat_interleave(group, dim=1), vd.repeat_interleave(group, dim=1)
        out[a:b] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scaling)[0].transpose(0, 1)
    return out


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """A transformers attention function: causal attention within each document, no mask materialised.

    Documents are, in order of preference: the ``cu_seq_lens_q``/``max_length_q`` keyword arguments (from
    :func:`varlen_kwargs` in the collate function); the non-padding tokens of each row when a 2D padding
    mask is given; the runs of consecutive ``position_ids`` (packed rows); else each row. On CUDA the kernel
    is PyTorch's variable-length FlashAttention; elsewhere one SDPA call per document (same function).

    Args:
        module: the attention module (unused beyond the transformers signature).
        query: ``(batch, heads, seq, dim)``.
        key: ``(batch, kv_heads, seq, dim)``.
        value: ``(batch, kv_heads, seq, dim)``.
        attention_mask: None, or a 2D boolean padding mask ``(batch, seq)`` (left or right padding).
        scaling: softmax scale; None for ``dim ** -0.5``.
        dropout: must be 0 (the kernel has no dropout).
        **kwargs: ``cu_seq_lens_q``, ``max_length_q``, ``position_ids``; others are ignored.

    Returns:
        ``(output of shape (batch, seq, heads, dim), None)``.

    Raises:
        ValueError: on attention dropout, a KV cache longer than the query, or a non-2D mask.
    """
    import torch

    if dropout:
        raise ValueError("forgekit_varlen attention has no dropout; set the model's attention_dropout to 0")
    b, h, s, d = query.shape
    if key.shape[2] != s:
        raise ValueError("forgekit_varlen attention is for training (no KV cache); use sdpa to generate")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, s, heads, d)
    keep = None
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(f"forgekit_varlen attention takes a 2D padding mask, got shape {tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        keep = mask.flatten().nonzero().flatten()
        lengths = mask.sum(1, dtype=torch.int32)
        cu = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        max_len = int(lengths.max())
    elif cu is None:
        pos = kwargs.get("position_ids")
        if pos is not None and pos.shape[-1] == s:
            found = varlen_kwargs(pos.expand(b, -1))
            cu, max_len = found["cu_seq_lens_q"], found["max_length_q"]
        else:
            cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
            max_len = s
    cu = cu.to(device=q.device, dtype=torch.int32)
    max_len = s if max_len is None else max_len
    q, k, v = (t.reshape(b * s, t.shape[2], d) for t in (q, k, v))
    if keep is not None:
        q, k, v = q[keep], k[keep], v[keep]
    if q.is_cuda and varlen_available():
        out = _varlen_call(q, k, v, cu, max_len, scaling)
    else:
        out = _per_document_sdpa(q, k, v, cu, scaling)
    if keep is not None:
        full = out.new_zeros(b * s, h, d)
        full[keep] = out
        out = full
    return out.view(b, s, h, d), None


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
    # transformers >= 5.2x renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn)
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
    if every == 0:
        disable()
        return 0
    # non-reentrant checkpointing: works with frozen inputs (LoRA) without enable_input_require_grads
    enable({"use_reentrant": False})
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i % every == 0
    return sum(layer.gradient_checkpointing for layer in layers)


def _cfg(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def activation_bytes_per_token(model_config: Any, *, liger: bool) -> tuple[float, float]:
    """Estimated activation memory one token keeps for backward, per decoder layer, in bytes (bf16).

    Returns:
        ``(stored, checkpointed)``: a layer that is not checkpointed keeps every intermediate its backward
        reads (norm inputs, q/k/v before and after RoPE, attention output and its statistics, the MLP's
        gate/up/product, the LoRA inputs); a checkpointed layer keeps only its input (``hidden_size``
        values). The stored figure is the element count below times 4/3, the ratio measured on an H100 for
        the Llama-3.1-8B shape with LoRA and Liger (about 225 KB per token and layer: the peaks of
        ``benchmarks/results/levers-llama8b-h100.json`` with 16 and 24 stored layers; the formula alone
        gives 168 KB).
    """
    h = _cfg(model_config, "hidden_size")
    inter = _cfg(model_config, "intermediate_size")
    heads = _cfg(model_config, "num_attention_heads")
    kv = _cfg(model_config, "num_key_value_heads") or heads
    hd = _cfg(model_config, "head_dim") or h // heads
    attn = 4 * h + (heads + 2 * kv) * hd * 2 + heads * hd  # norms, inputs of q/k/v/o + LoRA, q/k/v, output
    mlp = 2 * h + (3 if liger else 4) * inter  # norm + gate/up input, gate, up, (product), down input
    return 2.0 * (attn + mlp) * 4 / 3, 2.0 * h


def checkpoint_period(
    model_config: Any,
    tokens_per_micro_batch: int,
    free_bytes: float,
    *,
    liger: bool,
    headroom: float = 0.8,
) -> int:
    """The checkpointing period for :func:`set_activation_checkpointing` that fits the activations.

    Tries no checkpointing (0), then every 4th, 3rd, 2nd layer, then every layer (1), and returns the first
    whose estimated activation memory (:func:`activation_bytes_per_token`) fits in ``headroom`` of
    ``free_bytes``.

    Args:
        model_config: the model's config (or a dict with the same keys).
        tokens_per_micro_batch: tokens in one forward pass (rows x row length).
        free_bytes: device memory left for activations after weights, gradients and optimizer state.
        liger: whether Liger's SwiGLU (which recomputes its product in backward) is applied.
        headroom: fraction of ``free_bytes`` the activations may take (the rest absorbs fragmentation,
            the loss and attention workspaces).

    Returns:
        0 (none), 4, 3, 2 or 1 (every layer).
    """
    layers = _cfg(model_config, "num_hidden_layers")
    stored, ckpt = activation_bytes_per_token(model_config, liger=liger)
    budget = headroom * free_bytes
    for every in (0, 4, 3, 2):
        n_ckpt = 0 if every == 0 else math.ceil(layers / every)
        # a checkpointed layer's intermediates exist again while its backward runs: one layer's worth
        need = tokens_per_micro_batch * ((layers - n_ckpt) * stored + n_ckpt * ckpt + (stored if n_ckpt else 0))
        if need <= budget:
            return every
    return 1


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
    compiled kernels (FlexAttention, compiled layers). Varlen keyword arguments, if present, are dropped:
    recompute them from the padded ``position_ids``.

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
    out = {k: v for k, v in batch.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    fill = {"input_ids": pad_token_id, "labels": -100}
    for key in ("input_ids", "labels"):
        out[key] = torch.cat([batch[key], batch[key].new_full((1, extra), fill[key])], dim=1)
    pos = batch["position_ids"]
    out["position_ids"] = torch.cat([pos, torch.arange(extra, dtype=pos.dtype, device=pos.device)[None]], dim=1)
    return out


def fused_optimizer_name(on_gpu: bool) -> str:
    """The transformers ``optim`` name for AdamW: PyTorch's fused kernel on GPUs, the default loop on CPU."""
    return "adamw_torch_fused" if on_gpu else "adamw_torch"


#: Upper bound of :func:`zero3_buckets` (elements): DeepSpeed's own default ``reduce_bucket_size``.
ZERO3_BUCKET_CAP = 500_000_000


def zero3_buckets(ds_config: dict, model: Any) -> dict:
    """Fill ZeRO-3's ``"auto"`` ``reduce_bucket_size`` and ``stage3_prefetch_bucket_size`` with one layer.

    transformers fills them with ``hidden_size**2`` (16.8M elements for an 8B Llama), less than one of that
    model's MLP matrices (58.7M), so ZeRO-3 gathers parameters and reduces gradients a matrix at a time.
    One decoder layer's parameter count (218M for the 8B shape; capped at :data:`ZERO3_BUCKET_CAP`) lets it
    prefetch the next layer while computing this one. Measured on 2 H200s, 8B full fine-tuning over 30 steps
    (``benchmarks/results/README.md``): MFU 0.365 with transformers' values, 0.395 with this rule, 0.413 with
    fixed 2e8-element buckets (medians of 3, within run-to-run spread of each other); peak memory +0.4 GB per
    GPU. Explicit values are left alone.

    Args:
        ds_config: a DeepSpeed config dict; changed in place when its ZeRO stage is 3.
        model: the loaded model (or a peft model around it).

    Returns:
        ``{field: value}`` of what was filled (empty when nothing was).
    """
    zero = ds_config.get("zero_optimization", {})
    if int(zero.get("stage", 0)) != 3:
        return {}
    layers = decoder_layers(model)
    if not layers:
        return {}
    per_layer = sum(getattr(p, "ds_numel", p.numel()) for p in layers[0].parameters())
    size = min(per_layer, ZERO3_BUCKET_CAP)
    filled = {}
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size"):
        if zero.get(key, "auto") == "auto":
            zero[key] = filled[key] = size
    return filled


def lora_sum_in_fp32(model: Any) -> int:
    """Make every LoRA layer add its update to the frozen layer's output in fp32 (for bf16 autocast on a CPU).

    Under autocast the frozen layer's output comes out in bf16 (8-bit mantissa) and peft adds the LoRA update to
    it in bf16, so while the update is small against the output (early in a run, or at a small learning rate)
    it is partly rounded away in the forward pass. A forward hook returns the frozen layer's output in fp32;
    peft then sums in fp32 and the next matrix product casts back to bf16. Only for fp32 weights under autocast:
    with bf16 weights (GPU) it would only add memory traffic.

    Returns:
        The number of LoRA layers changed.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    def to_fp32(_module: Any, _args: Any, output: Any) -> Any:
        return output.float() if output.dtype == torch.bfloat16 else output

    count = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not getattr(module.base_layer, "_forgekit_fp32_sum", False):
            module.base_layer.register_forward_hook(to_fp32)
            module.base_layer._forgekit_fp32_sum = True  # once per layer, however often this is called
            count += 1
    return count


#: Model types whose causal-LM forward is exactly "decoder → lm_head → self.loss_function(logits, labels)", with
#: no logit soft-capping or scaling and no auxiliary loss (checked against transformers 5.23's modeling files;
#: gemma2/3, granite, cohere and the mixture-of-experts models are not).
PLAIN_CAUSAL_LM_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3",
                                   "starcoder2", "gemma"})


def supervised_logits_only(model: Any) -> bool:
    """Compute the output layer and the loss at supervised positions only, when labels are given.

    With completions-only labels most positions of a training row are prompt (-100) whose logits the loss
    ignores, yet the model's forward computes the ``tokens x vocab`` logits for all of them: for a small model
    with a large vocabulary (SmolLM2: 49,152 x 576) that output layer and its cross-entropy are a large share of
    the step, and its fp32 logits the largest tensor in memory. The patched forward runs the decoder as before,
    keeps the hidden states whose shifted label is not -100, and applies the output layer and the model's own
    ``loss_function`` (with ``shift_labels``) to those: the same loss and gradients, up to summation order.
    Without labels (generation), with ``shift_labels`` or ``return_dict=False`` the original forward runs. Only
    for :data:`PLAIN_CAUSAL_LM_TYPES` with transformers' own forward: a forward replaced by another library
    (Liger's fused linear cross-entropy, which never forms the logits either) is left alone. The returned
    ``logits`` are those of the kept positions, ``[1, n, vocab]``, so not for tasks that read them
    (classification metrics).

    Returns:
        Whether the model was patched.
    """
    import types

    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast

    inner = _base_model(model)
    if getattr(inner.config, "model_type", None) not in PLAIN_CAUSAL_LM_TYPES:
        return False
    if getattr(inner, "_forgekit_supervised_logits", False):
        return True
    original = type(inner).forward  # the class's: a bound method here would follow the model into deepcopies
    if "forward" in vars(inner) or not original.__module__.startswith("transformers."):
        return False  # someone else's forward (Liger's fused loss, accelerate's device hooks): theirs stays

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                past_key_values: Any = None, inputs_embeds: Any = None, labels: Any = None, use_cache: Any = None,
                logits_to_keep: Any = 0, **kwargs: Any) -> Any:
        if labels is None or "shift_labels" in kwargs or kwargs.get("return_dict", True) is False:
            return original(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                            use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        out = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                 **kwargs)
        hidden = out.last_hidden_state
        shifted = torch.nn.functional.pad(labels.to(hidden.device), (0, 1), value=-100)[..., 1:]  # t predicts t+1
        keep = shifted != -100
        logits = self.get_output_embeddings()(hidden[keep])[None]
        loss = self.loss_function(logits=logits, labels=None, vocab_size=self.config.vocab_size,
                                  shift_labels=shifted[keep][None], **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)

    inner.forward = types.MethodType(forward, inner)  # bound to the instance: a deepcopy re-binds it to the copy
    inner._forgekit_supervised_logits = True
    return True
