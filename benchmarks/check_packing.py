"""Which attention paths keep packed examples apart: packed vs one-by-one logits and loss, per implementation.

A packed row is several examples concatenated with per-example ``position_ids`` (restarting at 0) and no
attention mask; transformers is expected to derive a block-diagonal causal mask from the position ids.
For each attention implementation this compares, on a small random Llama, the logits of every example run
alone with its logits inside the packed row, in fp32 and in bf16, and prints the max abs difference and
the loss difference next to the bf16 noise floor (the same unpacked run in bf16 vs fp32). Runs use
``use_cache=False``, as training must: with the KV cache on (Llama's config default; gradient checkpointing
turns it off in training, nothing else does) transformers 5.x skips the packed-sequence detection and
every example attends to the ones before it. Two control rows show what contamination looks like: the
default ``use_cache``, and an all-ones attention mask (which also switches the detection off).

    python benchmarks/check_packing.py [--device cuda] [--impls sdpa,eager,flex_attention,forgekit_varlen]

``forgekit_varlen`` is PyTorch's variable-length FlashAttention registered by ``forgekit.perf`` (on a CPU it
runs one SDPA call per document).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forgekit import perf


def make_model(dtype: torch.dtype, attn: str, device: str) -> LlamaForCausalLM:
    """A 2-layer random Llama (fixed seed: every call returns the same weights)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype)
    model.set_attn_implementation(attn)
    return model.eval()


def examples(lengths: list[int], device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 512, (n,), generator=g).to(device) for n in lengths]


def mean_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum")


@torch.no_grad()
def compare(attn: str, dtype: torch.dtype, device: str, ones_mask: bool = False, use_cache: bool | None = False) -> dict:
    """Max |logit diff| and loss diff between each example alone and inside the packed row."""
    model = make_model(dtype, attn, device)
    ex = examples([37, 128, 5, 200, 64], device)
    alone = [model(input_ids=x[None], use_cache=False).logits[0] for x in ex]
    ids = torch.cat(ex)[None]
    pos = torch.cat([torch.arange(len(x), device=device) for x in ex])[None]
    kwargs = {"attention_mask": torch.ones_like(ids)} if ones_mask else {}
    packed = model(input_ids=ids, position_ids=pos, use_cache=use_cache, **kwargs).logits[0]
    diffs, loss_alone, loss_packed, start = [], 0.0, 0.0, 0
    for x, a in zip(ex, alone):
        p = packed[start:start + len(x)]
        start += len(x)
        diffs.append(float((p.float() - a.float()).abs().max()))
        loss_alone += float(mean_loss(a, x))
        loss_packed += float(mean_loss(p, x))
    n = sum(len(x) - 1 for x in ex)
    return {"attn": attn, "dtype": str(dtype).split(".")[-1], "ones_mask": ones_mask, "use_cache": use_cache,
            "max_abs_logit_diff": max(diffs),
            "loss_alone": loss_alone / n, "loss_packed": loss_packed / n,
            "rel_loss_diff": abs(loss_packed - loss_alone) / abs(loss_alone)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--impls", default="sdpa,eager,flex_attention,forgekit_varlen")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = p.parse_args()
    perf.register_varlen_attention()
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}, device {a.device}")
    rows = []
    for attn in a.impls.split(","):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                rows.append(compare(attn, dtype, a.device))
            except Exception as e:  # noqa: BLE001 - report and go on: the point is which paths work
                rows.append({"attn": attn, "dtype": str(dtype), "error": f"{type(e).__name__}: {e}"[:300]})
    rows.append(compare("sdpa", torch.float32, a.device, ones_mask=True))
    rows.append(compare("sdpa", torch.float32, a.device, use_cache=None))
    # bf16 noise floor: the same unpacked examples, bf16 vs fp32
    ex = examples([37, 128, 5, 200, 64], a.device)
    with torch.no_grad():
        m32, m16 = make_model(torch.float32, "sdpa", a.device), make_model(torch.bfloat16, "sdpa", a.device)
        l32 = sum(float(mean_loss(m32(input_ids=x[None], use_cache=False).logits[0], x)) for x in ex)
        l16 = sum(float(mean_loss(m16(input_ids=x[None], use_cache=False).logits[0], x)) for x in ex)
    rows.append({"attn": "sdpa", "dtype": "bf16 vs fp32 (unpacked)", "rel_loss_diff": abs(l16 - l32) / l32})
    for r in rows:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "device": a.device,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
