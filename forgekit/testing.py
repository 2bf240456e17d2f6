"""Test helpers: build a tiny random-init SmolLM2-shaped model with the real tokenizer, fast and deterministic.

Tests and notebook tests train this model instead of the 135M one: same vocabulary, tokenizer, chat template
and architecture (`LlamaForCausalLM`, tied embeddings), a few million parameters, saved as safetensors in
a plain Hugging Face model dir that every forgekit code path can load like any other model.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_tiny_model"]


def build_tiny_model(
    out_dir: Path,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    source: Path | str | None = None,
) -> Path:
    """Save a random-init model with the SmolLM2 config shrunk, plus the real tokenizer, into `out_dir`.

    With the defaults: 2 layers, hidden size 64, 49,152-token vocabulary, about 3.2M parameters (mostly the
    tied embedding). Takes about a second once the source model is cached.

    Args:
        out_dir: directory to write (created; existing files with the same names are overwritten).
        num_layers: decoder layers.
        hidden_size: model width; must be divisible by `num_heads`.
        intermediate_size: MLP width.
        num_heads: attention heads (head size = hidden_size / num_heads).
        num_kv_heads: key/value heads (grouped-query attention); must divide `num_heads`.
        seed: weights are a function of the seed only; the caller's RNG state is left untouched.
        source: model dir whose config (shrunk) and tokenizer are used. Default: the embedded
            SmolLM2-135M-Instruct, fetched first if needed (`forgekit.models.fetch_model`, once).

    Returns:
        `out_dir`, holding `config.json`, `model.safetensors` (float32), `generation_config.json` and the
        tokenizer files with the chat template.

    Raises:
        ValueError: inconsistent sizes.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    problems = []
    if min(num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads) < 1:
        problems.append("all sizes must be >= 1")
    elif hidden_size % num_heads:
        problems.append(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    elif num_heads % num_kv_heads:
        problems.append(f"num_heads {num_heads} is not divisible by num_kv_heads {num_kv_heads}")
    if problems:
        raise ValueError("build_tiny_model: " + "; ".join(problems))

    if source is None:
        from forgekit.models import fetch_model

        source = fetch_model()
    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = num_layers
    config.hidden_size = hidden_size
    config.intermediate_size = intermediate_size
    config.num_attention_heads = num_heads
    config.num_key_value_heads = num_kv_heads
    config.head_dim = hidden_size // num_heads
    config.dtype = "float32"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    return out_dir
