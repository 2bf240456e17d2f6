"""QLoRA vs LoRA on one GPU, 8B shape: peak memory, real tokens/s, and the longest context at batch 1 that fits.

Example (one H100, bitsandbytes from the wheelhouse; about 6 minutes)::

    python benchmarks/qlora.py --out benchmarks/results

The Llama-3.1-8B architecture with random bf16 weights (``workload.model_config("llama8b")``) is saved once and
loaded with ``from_pretrained`` as forgekit's worker loads it (forgekit.worker.model): ``lora`` in bf16;
``qlora`` in 4 bits (nf4, double quantization, bf16 compute) with the unquantized weights kept in bf16, as
forgekit does; ``qlora-fp32-cast`` the same after peft's ``prepare_model_for_kbit_training``, which casts the
embeddings, output layer and norms to fp32 (what forgekit skips; measured here). LoRA r=16 on all linear
layers, every decoder layer checkpointed (non-reentrant), Liger kernels where installed (fused linear
cross-entropy: no logits in memory), SDPA, fused AdamW, random tokens (every token real and supervised).

Per variant: tokens/s over steps 2..N and the allocator's peak at ``--batch`` x ``--seq``; then (``lora``,
``qlora``) the longest context at batch 1: doubling from ``--start`` until a step runs out of memory, then
bisection down to ``--granularity`` tokens, each probe ``--probe-steps`` optimizer steps (default 1: the first
step reaches the peak). A probe that would not finish before the time cap (``--time-cap``, predicted from the
last probe's step time x (length ratio)^1.5) is not started: the result then gives the bounds found so far. Every measurement is a
JSON line appended to ``OUT/qlora-<gpu>.jsonl`` as it is made (a timeout keeps what was measured); the summary
goes to ``OUT/qlora-<gpu>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from workload import model_config

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear", "task_type": "CAUSAL_LM"}
QUANT = {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
         "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}
GB = 2**30


class Log:
    """Appends one JSON line per measurement (flushed at once) and keeps them for the summary."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta, self.rows = path, meta, []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write({"kind": "meta", **meta})

    def write(self, row: dict) -> None:
        row = {"time": round(time.time(), 1), **row}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def save_model(path: Path) -> Path:
    """The 8B-shape model with random bf16 weights, saved once (~16 GB)."""
    import torch
    from transformers import LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(model_config("llama8b"), dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return path


def load(variant: str, path: Path) -> tuple[Any, Any, dict]:
    """The model of `variant` with LoRA, checkpointing and Liger applied, its optimizer, and what was applied."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgekit import perf
    from forgekit.quantization import bnb_config

    extra = {}
    if variant.startswith("qlora"):
        extra = {"quantization_config": bnb_config(QUANT, compute_dtype=torch.bfloat16),
                 "device_map": {"": torch.cuda.current_device()}}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa", **extra)
    if not extra:
        model.to("cuda")
    model.config.use_cache = False
    liger = perf.apply_liger(model)
    if variant == "qlora-fp32-cast":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(**LORA))
    perf.set_activation_checkpointing(model, 1)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return model, opt, {"liger": liger, "trainable_params": sum(p.numel() for p in params),
                        "weights_gb": round(weights / GB, 3), "loaded_gb": round(torch.cuda.memory_allocated() / GB, 3)}


def steps(model: Any, opt: Any, batch: int, seq: int, n: int) -> dict:
    """`n` optimizer steps on random tokens; tokens/s over steps 2..n (all of them when n is 1), allocator peak."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    vocab = model.config.vocab_size
    times, loss = [], None
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    timed = times[1:] or times
    return {"batch": batch, "seq": seq, "steps": n, "step_seconds": round(sum(timed) / len(timed), 3),
            "tokens_per_second": round(batch * seq * len(timed) / sum(timed), 1), "loss": round(float(loss), 4),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3)}


def probe(model: Any, opt: Any, batch: int, seq: int, n: int) -> dict:
    """`steps`, or `{"oom": True}` when the GPU runs out of memory (its memory released for the next probe)."""
    import torch

    try:
        out = steps(model, opt, batch, seq, n)
    except (torch.OutOfMemoryError, RuntimeError) as e:  # bitsandbytes' kernels raise a RuntimeError for it
        if not isinstance(e, torch.OutOfMemoryError) and "out of memory" not in str(e):
            raise
        out = {"batch": batch, "seq": seq, "oom": True}
        del e
    # outside the except block: the traceback's frames (holding activations) are gone
    opt.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    return out


def longest_context(model: Any, opt: Any, variant: str, args: argparse.Namespace, deadline: float, log: Log) -> dict:
    """Doubling from `args.start`, then bisection to `args.granularity`: the longest batch-1 context whose steps fit."""
    fits, fails, last = None, None, None  # last: (seq, step seconds) of the latest probe that ran
    seq = args.start
    while True:
        if fits is not None and fails is not None:
            if fails - fits <= args.granularity:
                break
            seq = (fits + fails) // 2 // args.granularity * args.granularity
            if seq <= fits:
                break
        if last is not None:  # step time grows between linearly (weights) and quadratically (attention)
            predict = last[1] * max(1.0, (seq / last[0]) ** 1.5) * args.probe_steps + 15
            if time.time() + predict > deadline:
                log.write({"kind": "context_stop", "variant": variant, "next_seq": seq,
                           "predicted_seconds": round(predict, 1), "why": "time cap"})
                break
        r = probe(model, opt, 1, seq, args.probe_steps)
        log.write({"kind": "context_probe", "variant": variant, **r})
        if r.get("oom"):
            fails = seq
        else:
            fits, last = seq, (seq, r["step_seconds"])
            if fails is None:
                seq *= 2
    out = {"kind": "longest_context", "variant": variant, "fits": fits, "fails": fails,
           "exact_to": args.granularity if fits and fails and fails - fits <= args.granularity else None}
    log.write(out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for qlora-<gpu>.jsonl and .json")
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/forgekit-bench/llama8b-random"))
    p.add_argument("--variants", default="qlora,qlora-fp32-cast,lora")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6, help="optimizer steps of the throughput measurement")
    p.add_argument("--start", type=int, default=16384, help="first context length of the search")
    p.add_argument("--granularity", type=int, default=4096)
    p.add_argument("--probe-steps", type=int, default=1,
                   help="optimizer steps per probe (the first reaches the peak: LoRA's AdamW state is made there)")
    p.add_argument("--time-cap", type=float, default=340, help="seconds for the whole script (model save included)")
    args = p.parse_args()
    t0 = time.time()
    deadline = t0 + args.time_cap

    import torch

    try:
        import bitsandbytes

        bnb_version = bitsandbytes.__version__
    except ImportError:  # the lora variant still runs; the qlora ones record the error
        bnb_version = None

    name = torch.cuda.get_device_name()
    short = next((g for g in ("H200", "H100", "A100", "L40S") if g in name), name.split()[-1]).lower()
    meta = {"gpu": name, "gpu_gb": round(torch.cuda.get_device_properties(0).total_memory / GB, 2),
            "torch": torch.__version__, "cuda": torch.version.cuda, "bitsandbytes": bnb_version,
            "model": "llama8b (random bf16 weights)", "lora": LORA, "quant_conf": QUANT,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    (args.out / f"qlora-{short}.jsonl").unlink(missing_ok=True)
    log = Log(args.out / f"qlora-{short}.jsonl", meta)
    save_model(args.model_dir)
    log.write({"kind": "saved", "seconds": round(time.time() - t0, 1)})

    variants = [v for v in args.variants.split(",") if v]
    searches = [v for v in variants if v != "qlora-fp32-cast"]
    summary: dict[str, dict] = {}
    for i, variant in enumerate(variants):
        t = time.time()
        try:
            model, opt, info = load(variant, args.model_dir)
        except Exception as e:  # noqa: BLE001 - a variant that cannot load (bitsandbytes' kernels): record, go on
            log.write({"kind": "error", "variant": variant, "stage": "load", "error": f"{type(e).__name__}: {e}"[:500]})
            continue
        log.write({"kind": "loaded", "variant": variant, "seconds": round(time.time() - t, 1), **info})
        r = probe(model, opt, args.batch, args.seq, args.steps)
        log.write({"kind": "throughput", "variant": variant, **r})
        summary[variant] = {**info, "throughput": r}
        if variant in searches:
            # this search's share of the time left, keeping ~60 s for each later variant's load and throughput
            later = variants[i + 1:]
            share = (deadline - time.time() - 60 * len(later)) / max(1, sum(v in searches for v in later) + 1)
            summary[variant]["longest_context"] = longest_context(model, opt, variant, args,
                                                                  min(deadline, time.time() + share), log)
        del model, opt
        gc.collect()
        torch.cuda.empty_cache()
    if "lora" in summary and "qlora" in summary:
        lo, q = summary["lora"]["throughput"], summary["qlora"]["throughput"]
        if not lo.get("oom") and not q.get("oom"):
            summary["qlora_vs_lora"] = {
                "peak_memory_saved": round(1 - q["peak_allocated_gb"] / lo["peak_allocated_gb"], 3),
                "tokens_per_second_ratio": round(q["tokens_per_second"] / lo["tokens_per_second"], 3)}
    summary["wall_seconds"] = round(time.time() - t0, 1)
    (args.out / f"qlora-{short}.json").write_text(json.dumps({**log.meta, "results": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
