"""Model FLOPs per token, GPU peak rates and MFU, for throughput figures that compare across runs.

Conventions (those of the PaLM paper's appendix B, and of the benchmark notes in ``benchmarks/``):

- ``N`` counts the parameters of every matrix multiply a token goes through: attention projections, MLP
  projections and the output head (``lm_head``). Embedding lookups, norms and biases are left out: they
  cost no matmul FLOPs. A tied output head still counts (it is a matmul, whatever its storage).
- A matmul with ``N`` weights costs ``2N`` FLOPs per token forward. Backward costs ``2N`` more for the
  input gradient and ``2N`` for the weight gradient. Full fine-tuning therefore costs ``6N``; LoRA, whose
  base weights are frozen, needs no weight gradient for them: ``4N`` (the LoRA adapters themselves,
  well under 1% of the FLOPs at the usual ranks, are left out).
- Attention scores and the weighted sum cost ``2 * 2 * seq_len * d_attn`` FLOPs per token and layer
  forward (``d_attn = num_heads * head_dim``), counted over the full ``seq_len`` (no causal discount) and
  tripled for training (forward + backward to both inputs), for full and LoRA alike: ``12 * L * d_attn * T``.
- Activation recomputation (gradient checkpointing) is not counted: MFU measures useful work.
"""

from __future__ import annotations

from typing import Any

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s. Matched against
# ``torch.cuda.get_device_name()`` by the first key found in the name, so the more specific keys come first.
_PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM; torch names it "NVIDIA H100 80GB HBM3"
    ("H800", 989.0),
    ("H20", 148.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX A6000", 155.0),
)


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def matmul_params(model_config: Any) -> int:
    """Count the matmul weights one token goes through in a decoder-only transformer.

    Args:
        model_config: a transformers ``PretrainedConfig`` (or a dict with the same keys) of a Llama-style
            model: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``,
            ``vocab_size``, optional ``num_key_value_heads`` and ``head_dim``.

    Returns:
        Attention (q, k, v, o) + gated MLP (gate, up, down) weights over all layers, plus the output head.

    Raises:
        ValueError: if a required field is missing or not positive.
    """
    h, n_layers, n_heads, inter, vocab = (
        _required(model_config, k)
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    )
    n_kv = _get(model_config, "num_key_value_heads") or n_heads
    head_dim = _get(model_config, "head_dim") or h // n_heads
    attn = h * n_heads * head_dim * 2 + h * n_kv * head_dim * 2  # q, o + k, v
    mlp = 3 * h * inter  # gate, up, down
    return n_layers * (attn + mlp) + h * vocab


def _required(model_config: Any, name: str) -> int:
    value = _get(model_config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model config field {name!r} must be a positive integer, got {value!r}")
    return value


def model_flops_per_token(model_config: Any, seq_len: float, lora: bool) -> float:
    """Training FLOPs per token: ``6N`` (full) or ``4N`` (LoRA), plus attention; no recompute.

    Args:
        model_config: model config (see :func:`matmul_params`).
        seq_len: the length of the sequence each token attends over, in tokens. For packed or padded
            batches pass the token-weighted mean of the real sequence lengths (``sum(l**2) / sum(l)``).
        lora: True when base weights are frozen (no weight gradients for them).

    Returns:
        FLOPs per trained token.

    Raises:
        ValueError: on a bad config or a negative ``seq_len``.
    """
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    n = matmul_params(model_config)
    h = _required(model_config, "hidden_size")
    n_heads = _required(model_config, "num_attention_heads")
    head_dim = _get(model_config, "head_dim") or h // n_heads
    n_layers = _required(model_config, "num_hidden_layers")
    attention = 12 * n_layers * n_heads * head_dim * seq_len
    return (4 if lora else 6) * n + attention


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 tensor-core peak of a GPU, in TFLOP/s, from its ``torch.cuda.get_device_name()``.

    Args:
        device_name: e.g. ``"NVIDIA H100 80GB HBM3"``.

    Returns:
        The datasheet figure (H100 SXM and H200: 989; A100: 312; ...), or None for an unknown device.
    """
    name = device_name.upper()
    for key, tflops in _PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def mfu(tokens_per_s: float, flops_per_token: float, n_gpus: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all GPUs.

    Args:
        tokens_per_s: trained tokens per second, over all GPUs together.
        flops_per_token: from :func:`model_flops_per_token`.
        n_gpus: number of GPUs that produced ``tokens_per_s``.
        peak: peak of one GPU in TFLOP/s (see :func:`peak_tflops`); None gives None.

    Returns:
        A fraction (0.4 means 40% of peak), or None when the peak is unknown.

    Raises:
        ValueError: if ``n_gpus`` < 1 or a rate is negative.
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    if tokens_per_s < 0 or flops_per_token < 0:
        raise ValueError("tokens_per_s and flops_per_token must be >= 0")
    if peak is None or peak <= 0:
        return None
    return tokens_per_s * flops_per_token / (n_gpus * peak * 1e12)
