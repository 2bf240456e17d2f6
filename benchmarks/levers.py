"""The lever ladder: each speed lever of forgekit's worker measured alone and stacked, on the 8B shape.

One process builds the Llama-3.1-8B architecture with random bf16 weights on the GPU (no download), wraps
it in LoRA (r=16, all linear layers) and runs, with a plain PyTorch loop over the same synthetic examples
(token lengths log-normal, median 300, p95 1,400, cap 2,048; the last 65% of each example labelled), the
parts asked for:

- ``packing``: packed == unpacked. Per-example logits and losses of the examples run one by one (the
  reference) against the same examples packed into one flattened row for each attention path (sdpa's
  dense block mask, flex_attention, forgekit_varlen with and without precomputed boundaries), next to a
  legitimate alternative computation (all examples in one padded batch: the bf16 noise floor) and a
  contaminated control (the packed row with the KV cache on, which switches transformers' packed-row
  detection off).
- ``ladder``: rungs, each a set of levers (``attn``, ``packed``, ``rows`` of 2,048 tokens per micro-batch or
  ``batch`` examples padded to the longest, ``liger``, ``ckpt`` period, ``compile``), in order; Liger and
  compile cannot be undone, so the rungs are cumulative from the first that sets them. Each rung trains
  warm-up steps, then timed steps of ~``--tokens-per-step`` real tokens; reports real tokens/s, LoRA MFU
  (forgekit.flops, 4N + attention at the examples' token-weighted mean length), peak allocated memory.
- ``seqlen``: one training step on a single sequence of each length (batch 1), until out of memory.

    python benchmarks/levers.py --parts packing,ladder --out benchmarks/results/levers-h100.json
    python benchmarks/levers.py --parts seqlen --lengths 32768,65536 --out benchmarks/results/seqlen-h100.json

Smoke run on a CPU: ``--model tiny --device cpu --rungs hf,packed-sdpa,varlen --steps 2 --warmup 1``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from workload import lognormal_lengths, model_config

from forgekit import perf
from forgekit.flops import model_flops_per_token, peak_tflops
from forgekit.prepare import pack_rows

# name: levers. Later rungs inherit nothing implicitly: each names its full setting.
RUNGS: dict[str, dict[str, Any]] = {
    "hf": {"packed": False, "batch": 4, "attn": "sdpa", "liger": False, "ckpt": 1},
    "packed-sdpa": {"packed": True, "rows": 4, "attn": "sdpa", "liger": False, "ckpt": 1},
    "packed-flex": {"packed": True, "rows": 4, "attn": "flex_attention", "liger": False, "ckpt": 1},
    "varlen": {"packed": True, "rows": 4, "attn": "varlen", "liger": False, "ckpt": 1},
    "varlen+liger": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 1},
    "flex+liger": {"packed": True, "rows": 4, "attn": "flex_attention", "liger": True, "ckpt": 1},
    "+ckpt/2": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 2},
    "+ckpt/4": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 4},
    "+no-ckpt": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 0},
    "+rows8/ckpt2": {"packed": True, "rows": 8, "attn": "varlen", "liger": True, "ckpt": 2},
    "+compile": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 0, "compile": True},
    "+compile/ckpt4": {"packed": True, "rows": 4, "attn": "varlen", "liger": True, "ckpt": 4, "compile": True},
}
DEFAULT_RUNGS = "hf,packed-sdpa,packed-flex,varlen,varlen+liger,flex+liger,+ckpt/2,+ckpt/4,+no-ckpt,+rows8/ckpt2,+compile"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(name: str, device: str, seed: int = 0) -> Any:
    """The architecture with random weights (bf16 on GPU, fp32 on CPU), in LoRA r=16 on all linear layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    cfg = model_config(name)
    cfg.use_cache = False
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(model, lora)


def make_examples(n: int, vocab: int, seed: int, cap: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) with log-normal lengths; the last 65% of each example is labelled (the "answer")."""
    rng = random.Random(seed + 7)
    out = []
    for length in lognormal_lengths(n, seed, cap=cap):
        ids = [rng.randrange(vocab) for _ in range(length)]
        prompt = max(1, round(0.35 * length))
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


def make_steps(examples: list, tokens_per_step: int, n_steps: int) -> list[list[int]]:
    """Consecutive example indices per optimizer step, each summing to >= tokens_per_step tokens."""
    steps, i = [], 0
    for _ in range(n_steps):
        step, total = [], 0
        while total < tokens_per_step:
            step.append(i % len(examples))
            total += len(examples[i % len(examples)][0])
            i += 1
        steps.append(step)
    return steps


def padded_batches(examples: list, idx: list[int], batch: int, device: str) -> list[dict]:
    out = []
    for k in range(0, len(idx), batch):
        chunk = [examples[i] for i in idx[k:k + batch]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (x, y) in enumerate(chunk):
            ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        out.append({"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)})
    return out


def packed_batches(examples: list, idx: list[int], rows: int, capacity: int, device: str,
                   varlen: bool) -> list[dict]:
    """Best-fit-decreasing rows of ``capacity`` tokens (forgekit.prepare.pack_rows), ``rows`` per micro-batch,
    flattened into one row with per-example position ids and no attention mask (as forgekit.prepare.collate)."""
    bins = [[idx[j] for j in b] for b in pack_rows([len(examples[i][0]) for i in idx], capacity)]
    out = []
    for k in range(0, len(bins), rows):
        ids, labels, pos = [], [], []
        for b in bins[k:k + rows]:
            for i in b:
                x, y = examples[i]
                ids += x
                labels += [-100] + y[1:]
                pos += list(range(len(x)))
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}
        if varlen:
            batch |= perf.varlen_kwargs(batch["position_ids"])
        out.append({k2: v.to(device) if torch.is_tensor(v) else v for k2, v in batch.items()} | {"use_cache": False})
    return out


def micro_batches(examples: list, idx: list[int], lev: dict, capacity: int, device: str) -> list[dict]:
    if lev["packed"]:
        return packed_batches(examples, idx, lev.get("rows", 4), capacity, device, lev["attn"] == "varlen")
    return padded_batches(examples, idx, lev.get("batch", 4), device)


def n_labels(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def train_step(model: Any, opt: Any, batches: list[dict]) -> float:
    """One optimizer step; the loss is the mean over every labelled token of the step (as Trainer does)."""
    total = sum(n_labels(b) for b in batches)
    loss_sum = 0.0
    for b in batches:
        loss = model(**b).loss * (n_labels(b) / total)
        loss.backward()
        loss_sum += float(loss.detach())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum


def set_attention(model: Any, attn: str) -> str:
    name = perf.pick_attention(attn, packing=True, on_gpu=torch.cuda.is_available())
    model.get_base_model().set_attn_implementation(name)
    return name


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def run_rung(name: str, lev: dict, model: Any, opt: Any, examples: list, steps: list, warmup: int, args: Any,
             state: dict) -> dict:
    """Apply a rung's levers, train warm-up + timed steps, return its figures."""
    if lev.get("liger") and not state["liger"]:
        state["liger"] = perf.apply_liger(model)
        if not state["liger"]:
            return {"rung": name, "levers": lev, "error": "liger-kernel not available"}
    if not lev.get("liger") and state["liger"]:
        return {"rung": name, "levers": lev, "error": "Liger is already applied (order the rungs without it first)"}
    if lev.get("compile") and not state["compiled"]:
        state["compiled"] = perf.compile_decoder_layers(model, **({"backend": "eager"} if args.device == "cpu" else {}))
    attn = set_attention(model, lev["attn"])
    ckpt_layers = perf.set_activation_checkpointing(model, lev["ckpt"])
    model.train()
    free_memory()
    batches = [micro_batches(examples, idx, lev, args.max_length, args.device) for idx in steps]
    row: dict[str, Any] = {"rung": name, "levers": lev, "attn_implementation": attn, "ckpt_layers": ckpt_layers,
                           "compiled_layers": state["compiled"], "micro_batches_per_step": len(batches[0])}
    times, tokens, losses = [], [], []
    started = time.perf_counter()
    try:
        for i, step in enumerate(batches[: warmup + args.steps]):
            sync()
            t0 = time.perf_counter()
            losses.append(train_step(model, opt, step))
            sync()
            if i == 0:
                row["first_step_s"] = time.perf_counter() - t0
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                tokens.append(sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                                  for b in step))
            if time.perf_counter() - started > args.rung_seconds and len(times) >= 2:
                break
    except torch.OutOfMemoryError as e:
        opt.zero_grad(set_to_none=True)
        row.update(error=f"out of memory: {str(e).splitlines()[0][:200]}", peak_alloc_gb=peak_gb())
        free_memory()
        return row
    lengths = [len(examples[i][0]) for idx in steps[warmup: warmup + len(times)] for i in idx]
    tw_mean = sum(n * n for n in lengths) / sum(lengths)
    fpt = model_flops_per_token(model.get_base_model().config, tw_mean, lora=True)
    tps = sum(tokens) / sum(times)
    row.update(tokens_per_s=tps, step_s_median=statistics.median(times), timed_steps=len(times),
               tokens_per_step=statistics.mean(tokens), token_weighted_mean_len=tw_mean, flops_per_token=fpt,
               mfu=tps * fpt / (state["peak_tflops"] * 1e12) if state["peak_tflops"] else None,
               peak_alloc_gb=peak_gb(), losses=losses,
               peak_reserved_gb=torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None)
    return row


def per_example(logits: torch.Tensor, spans: list[tuple[int, int]], examples: list) -> list[float]:
    """Mean cross-entropy over each example's labelled tokens (fp32), from logits of its span."""
    out = []
    for (a, b), (_, y) in zip(spans, examples):
        lab = torch.tensor(y[1:], device=logits.device)
        out.append(float(torch.nn.functional.cross_entropy(logits[a:b - 1].float(), lab, ignore_index=-100)))
    return out


@torch.no_grad()
def check_packing(model: Any, args: Any) -> list[dict]:
    """Per-example logits/losses of every attention path on packed rows vs each example alone."""
    base = model.get_base_model()
    model.eval()
    ex = make_examples(args.packing_examples, base.config.vocab_size, seed=args.seed + 100, cap=args.max_length)
    dev = args.device
    spans, start = [], 0
    for x, _ in ex:
        spans.append((start, start + len(x)))
        start += len(x)
    ids = torch.tensor([[t for x, _ in ex for t in x]], device=dev)
    pos = torch.tensor([[p for x, _ in ex for p in range(len(x))]], device=dev)
    set_attention(model, "sdpa")
    alone_logits = [model(input_ids=torch.tensor([x], device=dev)).logits[0] for x, _ in ex]
    ref_loss = [per_example(lg, [(0, len(x))], [e])[0] for lg, (x, _), e in zip(alone_logits, ex, ex)]
    scale = max(float(lg.float().abs().max()) for lg in alone_logits)

    def compare(name: str, logits_of: list[torch.Tensor]) -> dict:
        loss = [per_example(lg, [(0, lg.shape[0])], [e])[0] for lg, e in zip(logits_of, ex)]
        dl = [abs(a - b) / b for a, b in zip(loss, ref_loss)]
        dlog = max(float((a.float() - b.float()).abs().max()) for a, b in zip(logits_of, alone_logits))
        return {"variant": name, "max_rel_loss_diff": max(dl), "mean_rel_loss_diff": statistics.mean(dl),
                "max_abs_logit_diff": dlog, "max_abs_logit": scale,
                "total_loss": statistics.mean(loss), "total_loss_ref": statistics.mean(ref_loss)}

    rows = []
    width = max(len(x) for x, _ in ex)
    pad_ids = torch.zeros(len(ex), width, dtype=torch.long, device=dev)
    mask = torch.zeros_like(pad_ids)
    for r, (x, _) in enumerate(ex):
        pad_ids[r, :len(x)], mask[r, :len(x)] = torch.tensor(x, device=dev), 1
    lg = model(input_ids=pad_ids, attention_mask=mask).logits
    rows.append(compare("padded batch, sdpa (bf16 noise floor)", [lg[r, :len(x)] for r, (x, _) in enumerate(ex)]))
    del lg
    variants = [("packed row, sdpa (dense block mask)", "sdpa", {}),
                ("packed row, flex_attention", "flex_attention", {}),
                ("packed row, forgekit_varlen + boundaries", "varlen", perf.varlen_kwargs(pos.cpu())),
                ("packed row, forgekit_varlen from position_ids", "varlen", {}),
                ("CONTROL packed row, sdpa, use_cache=True (contaminated)", "sdpa", {"use_cache": True})]
    for name, attn, extra in variants:
        try:
            set_attention(model, attn)
            kwargs = {"use_cache": False} | {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in extra.items()}
            lg = model(input_ids=ids, position_ids=pos, **kwargs).logits[0]
            rows.append(compare(name, [lg[a:b] for a, b in spans]))
            del lg
        except Exception as e:  # noqa: BLE001 - report which paths fail and go on
            rows.append({"variant": name, "error": f"{type(e).__name__}: {e}"[:400]})
        log(json.dumps(rows[-1]))
    set_attention(model, "sdpa")
    return rows


def probe_seqlen(model: Any, opt: Any, args: Any) -> list[dict]:
    """One LoRA training step on one sequence of each length (batch 1), longest last, until out of memory."""
    rows = []
    attn = set_attention(model, args.seqlen_attn)
    perf.set_activation_checkpointing(model, 1)
    model.train()
    vocab = model.get_base_model().config.vocab_size
    for n in [int(x) for x in args.lengths.split(",")]:
        free_memory()
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(0, vocab, (1, n), generator=g).to(args.device)
        row: dict[str, Any] = {"seq_len": n, "attn_implementation": attn, "liger": args.liger_seqlen}
        try:
            sync()
            t0 = time.perf_counter()
            loss = train_step(model, opt, [{"input_ids": ids, "labels": ids, "use_cache": False}])
            sync()
            dt = time.perf_counter() - t0
            fpt = model_flops_per_token(model.get_base_model().config, n, lora=True)
            row.update(ok=True, step_s=dt, tokens_per_s=n / dt, loss=loss, peak_alloc_gb=peak_gb(),
                       mfu=n / dt * fpt / (peak_tflops(torch.cuda.get_device_name(0)) * 1e12)
                       if torch.cuda.is_available() else None)
        except torch.OutOfMemoryError as e:
            opt.zero_grad(set_to_none=True)
            row.update(ok=False, error=f"out of memory: {str(e).splitlines()[0][:200]}", peak_alloc_gb=peak_gb())
        log(json.dumps(row))
        rows.append(row)
        del ids
        if not row["ok"]:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build the model once, run the parts asked for, write one JSON (after each rung, so a crash keeps what ran)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="packing,ladder", help="comma-separated: packing, ladder, seqlen")
    p.add_argument("--model", default="llama8b", choices=["llama8b", "tiny"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rungs", default=DEFAULT_RUNGS, help=f"comma-separated, from {', '.join(RUNGS)}")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per rung")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per rung (3 for a compiling rung)")
    p.add_argument("--rung-seconds", type=float, default=60, help="stop timing a rung after this long (>= 2 steps)")
    p.add_argument("--tokens-per-step", type=int, default=16384)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--packing-examples", type=int, default=12)
    p.add_argument("--lengths", default="32768,65536", help="seqlen part: sequence lengths, increasing")
    p.add_argument("--seqlen-attn", default="varlen")
    p.add_argument("--liger-seqlen", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    rungs = [r for r in args.rungs.split(",") if r]
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        p.error(f"unknown rungs {unknown}; choose from {list(RUNGS)}")

    import transformers

    meta = {"command": "python benchmarks/levers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "model": args.model, "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokens_per_step": args.tokens_per_step, "max_length": args.max_length,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import importlib.metadata as md

        import liger_kernel  # noqa: F401

        meta["liger_kernel"] = md.version("liger-kernel")
    except ImportError:
        meta["liger_kernel"] = None
    result: dict[str, Any] = {"meta": meta}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=1))

    t0 = time.perf_counter()
    model = build_model(args.model, args.device, args.seed)
    meta["build_model_s"] = time.perf_counter() - t0
    log(f"model built in {meta['build_model_s']:.1f}s; {meta}")
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4,
                            fused=args.device == "cuda")
    state = {"liger": False, "compiled": 0,
             "peak_tflops": peak_tflops(meta["device"]) if args.device == "cuda" else None}
    if "packing" in parts:
        result["packing"] = check_packing(model, args)
        save()
    if "ladder" in parts:
        examples = make_examples(args.examples, model.get_base_model().config.vocab_size, args.seed, args.max_length)
        steps = make_steps(examples, args.tokens_per_step, args.warmup + 1 + args.steps)
        result["ladder"] = []
        for name in rungs:
            lev = RUNGS[name]
            warm = args.warmup + (1 if lev.get("compile") or lev["attn"] == "flex_attention" else 0)
            t1 = time.perf_counter()
            try:
                row = run_rung(name, lev, model, opt, examples, steps, warm, args, state)
            except Exception as e:  # noqa: BLE001 - a lever that breaks is a finding; the next rungs still run
                opt.zero_grad(set_to_none=True)
                free_memory()
                row = {"rung": name, "levers": lev, "error": f"{type(e).__name__}: {e}"[:600]}
            row["rung_wall_s"] = time.perf_counter() - t1
            log(json.dumps({k: v for k, v in row.items() if k != "losses"}))
            result["ladder"].append(row)
            save()
    if "seqlen" in parts:
        if args.liger_seqlen and not state["liger"]:
            state["liger"] = perf.apply_liger(model)
        result["seqlen"] = probe_seqlen(model, opt, args)
        save()
    if result.get("ladder"):
        print(ladder_table(result["ladder"]))
    save()
    return 0


def ladder_table(rows: list[dict]) -> str:
    """Markdown table of the ladder."""
    base = next((r.get("tokens_per_s") for r in rows if r.get("tokens_per_s")), None)
    lines = [
        ("| rung | attention | Liger | ckpt layers | compiled | tokens/micro-batch | real tokens/s | vs first | LoRA MFU "
        "| peak alloc GB |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lev = r["levers"]
        if "tokens_per_s" not in r:
            lines.append(f"| {r['rung']} | {lev['attn']} | {lev.get('liger')} | {r.get('ckpt_layers', '')} | "
                         f"{r.get('compiled_layers', '')} |  | {r.get('error', 'failed')[:80]} |  |  | "
                         f"{r.get('peak_alloc_gb') or 0:.1f} |")
            continue
        micro = f"{lev['rows']}x2048 packed" if lev["packed"] else f"{lev['batch']} padded"
        lines.append(f"| {r['rung']} | {r['attn_implementation']} | {lev.get('liger')} | {r['ckpt_layers']} | "
                     f"{r['compiled_layers']} | {micro} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}x | "
                     f"{r['mfu'] or 0:.3f} | {r['peak_alloc_gb'] or 0:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
