"""Run forgekit and the usual fine-tuning recipes side by side on identical work; write JSON + a markdown table.

Example (one H100, the issue-6 benchmark)::

    python benchmarks/run.py --model llama8b --contenders hf,trl,forgekit --steps 16 --repeats 3

Every contender runs in its own child process (``benchmarks/contenders.py``), one after the other, on the
same GPU, in the order ``repeat 1: A B C, repeat 2: A B C, ...`` so slow drift hits all alike. All load the
same saved random-weight model and train the same synthetic examples (``benchmarks/workload.py``) with
the same LoRA config, learning rate, step count and about the same real tokens per optimizer step.

Issue 27's headline (``benchmarks/issue27.sh`` runs it in stages under a time budget)::

    python benchmarks/run.py --model llama8b --steps 6 --trl-sweep --contenders trl:best forgekit \
        'hf:ckpt=0|hf:ckpt=1' --once 'hf:ckpt=0|hf:ckpt=1' --repeats 3 --budget-s 500

``--trl-sweep`` first runs TRL at checkpointing x batch x Liger (``benchmarks/sweep.py``; one process, an
out-of-memory is a row) and ``trl:best`` is then its fastest setting that fitted; ``a|b`` runs ``b`` in place of
``a`` when ``a`` runs out of memory; ``--once`` contenders run once, after the repeats; ``--budget-s`` starts no
run that would not end in time (the table lists it as not run).

Figures per contender (medians over repeats, with min and max, and the GPU each run used): real (non-pad) tokens/s over steps 2..N, MFU (model FLOPs
of ``forgekit.flops`` at the data's token-weighted mean length, vs the GPU's dense bf16 peak), peak GPU
memory (allocator peak in the process, and the device's used memory polled by NVML, which also sees
Ray workers), time from spawn to the end of the first optimizer step, and the mean loss of the last
three steps (every contender sees the same data, so these must agree within noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import sweep
from sweep import alternatives, is_oom, spread, steady_tokens_per_s
from workload import length_stats, make_examples, model_config, tokenize, write_jsonl

from forgekit.flops import mfu, model_flops_per_token, peak_tflops


class MemoryPoller:
    """Peak used memory (all processes) of the busiest GPU this process may use, polled through NVML every 0.2 s.

    NVML numbers devices physically and ignores `CUDA_VISIBLE_DEVICES`, so the visible devices (indices or
    `GPU-` UUIDs) are mapped to NVML handles here. None without NVML (CPU host, or no driver).
    """

    def __init__(self) -> None:
        self.peak: float | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [_nvml_handle(pynvml, d) for d in _visible_devices(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml if self._handles else None
        except Exception:  # noqa: BLE001 - no NVML (CPU host, or no driver): no device-wide peak
            self._nvml = None

    def __enter__(self) -> MemoryPoller:  # noqa: PYI034
        if self._nvml:
            self.peak = 0.0
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            used = max(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 2**30
            self.peak = max(self.peak or 0.0, used)
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._nvml:
            self._thread.join()


def _visible_devices(count: int) -> list[str]:
    """The devices `CUDA_VISIBLE_DEVICES` lets this process use (all `count` when unset), as NVML names them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in visible.split(",") if d.strip()]


def _nvml_handle(pynvml: Any, device: str) -> Any:
    if device.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(device))
    return pynvml.nvmlDeviceGetHandleByUUID(device)


def expand_contenders(items: list[str]) -> list[str]:
    """``["hf,trl", "levers:attn=sdpa,liger=0"]`` -> ``["hf", "trl", "levers:attn=sdpa,liger=0"]``."""
    out = []
    for item in items:
        out += [item] if ":" in item else [x for x in item.split(",") if x]
    return out


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Tokenizer, saved model and data shared by all contenders; the spec each child reads."""
    from transformers import AutoTokenizer

    if args.model == "smollm2":
        from forgekit.models import fetch_model

        model_dir = Path(fetch_model())
        tokenizer_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text())
    else:
        tokenizer_dir = Path(args.tokenizer)
        model_dir = work / f"{args.model}-random-seed{args.seed}"
        config = model_config(args.model)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = make_examples(tok, args.examples, seed=args.seed, cap=args.max_length, median=args.median, p95=args.p95)
    data = write_jsonl(rows, work / f"chat-{args.examples}-seed{args.seed}-m{args.median:g}-p{args.p95:g}-"
                                    f"cap{args.max_length}.jsonl")
    stats = length_stats([len(r["input_ids"]) for r in tokenize(tok, rows, args.max_length)])
    spec = {
        "model_name": args.model,
        "model_dir": str(model_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "data": str(data),
        "device": args.device,
        "steps": args.steps,
        "tokens_per_step": args.tokens_per_step,
        "max_length": args.max_length,
        "lr": args.lr,
        "seed": args.seed,
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "data_stats": stats,
        "flops_per_token": model_flops_per_token(config, stats["token_weighted_mean"], lora=True),
        "flops_per_token_full": model_flops_per_token(config, stats["token_weighted_mean"], lora=False),
    }
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    if args.model != "smollm2":
        r = run_child("save-model", work, "save-model", args.timeout)
        if not r.get("ok"):
            raise SystemExit(f"could not build the model: {r.get('error')}")
    return spec


def run_child(contender: str, work: Path, tag: str, timeout: float, extra: list[str] | None = None,
              script: list[str] | None = None) -> dict:
    """Run one contender in a child process; its JSON result plus the NVML memory peak. `script`: the child's
    command after the interpreter (default ``benchmarks/contenders.py``; ``dpo_throughput.py --child`` for DPO)."""
    out = work / f"{tag}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "FKB_T0": repr(time.time())}
    cmd = [sys.executable, *(script or [str(HERE / "contenders.py")]), contender, "--spec", str(work / "spec.json"),
           "--out", str(out), *(extra or [])]
    started = time.time()
    with MemoryPoller() as mem, open(work / f"{tag}.log", "w") as log:
        try:
            proc = subprocess.run(cmd, check=False, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    result = json.loads(out.read_text()) if out.exists() else {"ok": False}
    if not result.get("ok") and "error" not in result:
        tail = (work / f"{tag}.log").read_text()[-2000:]
        result["error"] = f"child exited with {rc}: {tail}"
    result.update(wall_s=time.time() - started, nvml_peak_gb=mem.peak, rc=rc)
    print(f"[{tag}] ok={result.get('ok')} wall={result['wall_s']:.0f}s {summary_line(result)}", flush=True)
    return result


def summary_line(result: dict) -> str:
    if not result.get("ok"):
        return "error: " + str(result.get("error", ""))[-300:]
    tps = steady_tokens_per_s(result)
    losses = result.get("losses") or []
    return (f"tok/s={tps:.0f} " if tps else "") + f"first_step={result.get('t_first_step', 0):.1f}s " + (
        f"loss {losses[0]:.3f}->{losses[-1]:.3f} " if losses else "") + (
        f"peak_alloc={result['peak_alloc_gb']:.1f}GB" if result.get("peak_alloc_gb") else "")


def aggregate(name: str, runs: list[dict], spec: dict, peak: float | None) -> dict:
    """Medians over the successful repeats of one contender."""
    ok = [r for r in runs if r.get("ok")]
    row: dict[str, Any] = {"contender": name, "repeats": len(runs), "ok": len(ok)}
    if not ok:
        row["error"] = runs[-1].get("error", "failed") if runs else "not run"
        row["out_of_memory"] = is_oom(row["error"])
        row["peak_alloc_gb"] = runs[-1].get("peak_alloc_gb") if runs else None
        return row

    def med(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    tps = [steady_tokens_per_s(r) for r in ok]
    # a forgekit contender may run several workers or full fine-tuning (lora_config: null): 6N, all its GPUs
    yaml_cfg = (ok[0].get("config") or {}).get("yaml") or {}
    gpus = int(yaml_cfg.get("num_devices", 1))
    full = "lora_config" in yaml_cfg and not yaml_cfg["lora_config"]
    flops = spec.get("flops_per_token_full", spec["flops_per_token"]) if full else spec["flops_per_token"]
    tps_spread = spread(tps)
    row.update(
        tokens_per_s=med(tps),
        tokens_per_s_all=tps,
        min_tokens_per_s=tps_spread["min"],
        max_tokens_per_s=tps_spread["max"],
        gpus_used=sorted({r["gpu"] for r in ok if r.get("gpu")}),
        gpus=gpus,
        full_finetune=full,
        mfu=mfu(med(tps), flops, gpus, peak) if med(tps) and peak else None,
        peak_alloc_gb=med([r.get("peak_alloc_gb") for r in ok]),
        nvml_peak_gb=med([r.get("nvml_peak_gb") for r in ok]),
        time_to_first_step_s=med([r.get("t_first_step") for r in ok]),
        tokens_per_step=med([(r["tokens"][-1] / len(r["tokens"])) for r in ok if r.get("tokens")]),
        steps=med([len(r.get("times", [])) for r in ok]),
        first_loss=med([(r.get("losses") or [None])[0] for r in ok]),
        final_loss=med([statistics.mean(r["losses"][-3:]) for r in ok if r.get("losses")]),
        config=ok[0].get("config"),
    )
    return row


def _fmt(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "–"


def _setting(contender: str, best: str | None) -> str:
    """The table's setting cell: what the contender's options mean (the TRL sweep's winner says so)."""
    name, _, text = contender.partition(":")
    opts = dict(kv.split("=", 1) for kv in filter(None, text.split(",")) if "=" in kv)
    if name == "trl":
        return ("**at its best** (sweep winner): " if contender == best else "") + sweep.describe(opts)
    if name == "hf":
        return (f"padded, {'checkpointing' if opts.get('ckpt', '1') == '1' else 'no checkpointing'}"
                + (f", batch {opts['batch']}" if "batch" in opts else ""))
    return text or "defaults"


def sweep_markdown(sw: dict, meta: dict) -> list[str]:
    """The TRL sweep's table: every setting with its figure, its out-of-memory or error, and the winner."""
    best = (sw.get("best") or {}).get("options")
    lines = ["", f"## TRL sweep ({sw.get('how', 'one run per setting')}; {sw.get('steps', meta['steps'])} steps each)",
             "", "| TRL setting | real tokens/s | MFU | peak alloc GB | result |", "|---|---|---|---|---|"]
    flops, peak = meta["flops_per_token"], meta.get("peak_tflops")
    for r in sw.get("rows", []):
        tps = r.get("tokens_per_s")
        m = mfu(tps, flops, 1, peak) if tps and peak else None
        result = "**winner**" if r["options"] == best else (r["status"] if r["status"] == "ok" else
                                                           f"{r['status']}: {str(r.get('error', ''))[:90]}")
        lines.append(f"| {r['label']} | {_fmt(tps, ',.0f')} | {_fmt(m, '.3f')} | {_fmt(r.get('peak_alloc_gb'), '.1f')} "
                     f"| {result} |")
    if sw.get("source"):
        lines += ["", f"TRL at its best: {sw['source']}."]
    return lines


def markdown(rows: list[dict], meta: dict) -> str:
    """The results table (median, min and max of the runs, the GPU each ran on), the TRL sweep, the command."""
    best = meta.get("trl_best")
    ref = next((r.get("tokens_per_s") for r in rows if r["contender"].startswith("hf") and r.get("ok")), None)
    peer = next((r.get("tokens_per_s") for r in rows if r["contender"] == best and r.get("ok")), None)
    ds = meta["data_stats"]
    lines = [
        f"# Benchmark: {meta['model']} LoRA on {meta['device_name']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        (f"Data: {ds['n']} synthetic chat examples, token lengths median {ds['p50']}, p95 {ds['p95']}, mean "
         f"{ds['mean']:.0f}, max {ds['max']}; {meta['steps']} optimizer steps of ~{meta['tokens_per_step']} real "
         f"tokens; LoRA r=16 on all linear layers; lr {meta['lr']} constant. MFU counts "
         f"{meta['flops_per_token'] / 1e9:.2f} GFLOP/token (4N + attention at the token-weighted mean length "
         f"{ds['token_weighted_mean']:.0f}) against {meta['peak_tflops']} TFLOP/s. Real tokens/s over steps 2..N of "
         f"each run: median, min and max of up to {meta['repeats']} runs, each contender in its own process on the "
         f"same GPU ({meta.get('gpu') or meta['device_name']}). {meta['versions']}"),
        "",
        ("| contender | setting | real tokens/s (median) | min – max | runs ok | vs usual recipe (hf) "
         "| vs TRL at its best | MFU | peak alloc GB | peak GPU GB (NVML) | first step s | tokens/step "
         "| loss first → last-3 | GPU |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, setting = r["contender"].split(":")[0], _setting(r["contender"], best)
        if not r.get("ok"):
            what = "out of memory" if r.get("out_of_memory") else "failed"
            lines.append(f"| {name} | {setting} | {what}: {str(r.get('error', ''))[:100]} |  | 0/{r.get('repeats', 0)} "
                         f"|  |  |  | {_fmt(r.get('peak_alloc_gb'), '.1f')} |  |  |  |  |  |")
            continue
        tps = r.get("tokens_per_s")
        notes = ([f"{r['gpus']} {'GPUs' if meta.get('device_name') != 'cpu' else 'CPU workers'}"]
                 if r.get("gpus", 1) > 1 else []) + (["full FT, MFU at 6N"] if r.get("full_finetune") else [])
        used = r.get("gpus_used") or []
        gpu = used[0] if len(used) == 1 else (f"{len(used)} different: " + "; ".join(used) if used else "–")
        label = name + (f" ({', '.join(notes)})" if notes else "")
        lines.append(
            f"| {label} | {setting} | {_fmt(tps, ',.0f')} "
            f"| {_fmt(r.get('min_tokens_per_s'), ',.0f')} – {_fmt(r.get('max_tokens_per_s'), ',.0f')} "
            f"| {r['ok']}/{r['repeats']} | {_fmt(tps / ref if tps and ref else None, '.2f')}× "
            f"| {_fmt(tps / peer if tps and peer else None, '.2f')}× "
            f"| {_fmt(r.get('mfu'), '.3f')} | {_fmt(r.get('peak_alloc_gb'), '.1f')} | {_fmt(r.get('nvml_peak_gb'), '.1f')} "
            f"| {_fmt(r.get('time_to_first_step_s'), '.1f')} | {_fmt(r.get('tokens_per_step'), ',.0f')} "
            f"| {_fmt(r.get('first_loss'), '.3f')} → {_fmt(r.get('final_loss'), '.3f')} | {gpu} |"
        )
    if meta.get("not_run"):
        lines += ["", "Not run (time budget): " + "; ".join(meta["not_run"]) + "."]
    if meta.get("sweep"):
        lines += sweep_markdown(meta["sweep"], meta)
    return "\n".join(lines) + "\n"


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "trl", "deepspeed", "ray", "liger-kernel")
    found = []
    for n in names:
        try:
            found.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            pass
    return "Versions: " + ", ".join(found) + "."


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, prepare the shared workload, run every contender, write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contenders", nargs="+", default=["hf,trl,forgekit"],
                   help="names, comma-separated; lever variants as 'levers:attn=flex_attention,liger=1'")
    p.add_argument("--model", default="llama8b", choices=["llama8b", "tiny", "smollm2"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens-per-step", type=int, default=8192)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--examples", type=int, default=320)
    p.add_argument("--median", type=float, default=300, help="median example length in tokens (log-normal)")
    p.add_argument("--p95", type=float, default=1400,
                   help="95th percentile of example lengths; = --median (and --max-length) for one fixed length")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=str(HERE.parent / ".bench" / "tokenizer"),
                   help="tokenizer dir for the random-weight models (chat template required)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fkbench")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the JSON + markdown")
    p.add_argument("--tag", default=None, help="file name stem of the results (default: model-device)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per child process")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="instead of running: pool the runs of these result files (same work) into --out/--tag")
    p.add_argument("--trl-sweep", action="store_true",
                   help="first run TRL's settings (checkpointing x batch x Liger, one process) and keep the fastest "
                        "that fits as TRL at its best: the contender 'trl:best' runs it")
    p.add_argument("--sweep-ckpt", default="1,0", help="checkpointing values the sweep tries")
    p.add_argument("--sweep-batch", default="2,4", help="micro-batches (packed rows) the sweep tries")
    p.add_argument("--sweep-liger", default="0,1", help="Liger values the sweep tries")
    p.add_argument("--sweep-only", action="store_true", help="run the sweep (and write it), no contenders")
    p.add_argument("--sweep-from", type=Path, default=None, metavar="JSON",
                   help="take TRL at its best (and the sweep's table) from an earlier result file of the same work")
    p.add_argument("--trl-best-fallback", default="ckpt=0,batch=4,liger=1",
                   help="'trl:best' when no sweep says otherwise (the issue-27 H100 best); the table says so")
    p.add_argument("--once", nargs="*", default=[], metavar="CONTENDER",
                   help="contenders (as spelled in --contenders) run once, after the repeats of the others")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds this command may take: a run that would not end in time is not started")
    args = p.parse_args(argv)

    if args.merge:
        return merge(args)
    deadline = time.time() + (args.budget_s or 1e9)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(args, work)
    device_name, gpu = "cpu", None
    if args.device == "cuda":
        import torch
        from contenders import gpu_identity

        device_name, gpu = torch.cuda.get_device_name(0), gpu_identity()
    peak = peak_tflops(device_name) if args.device == "cuda" else None
    meta = {
        "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": args.model,
        "device_name": device_name,
        "gpu": gpu,
        "peak_tflops": peak,
        "steps": args.steps,
        "repeats": args.repeats,
        "tokens_per_step": args.tokens_per_step,
        "lr": args.lr,
        "data_stats": spec["data_stats"],
        "flops_per_token": spec["flops_per_token"],
        "flops_per_token_full": spec["flops_per_token_full"],
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "not_run": [],
    }
    tag = args.tag or f"{args.model}-{args.device}"
    if args.trl_sweep:  # the sweep's table is written after each of its child processes, then when it ends
        meta["sweep"] = run_sweep(args, work, deadline, lambda sw: write(args.out, tag, meta | {"sweep": sw}, [], {}))
    elif args.sweep_from:
        meta["sweep"] = json.loads(args.sweep_from.read_text())["meta"].get("sweep")
    best = (meta.get("sweep") or {}).get("best")
    meta["trl_best"] = "trl:" + best["options"] if best else None
    if not best and (args.trl_sweep or args.sweep_from or "trl:best" in [*expand_contenders(args.contenders), *args.once]):
        meta["trl_best"] = "trl:" + args.trl_best_fallback
        meta.setdefault("sweep", None) or meta.update(sweep={"rows": []})
        meta["sweep"]["source"] = f"not from a sweep (none ran or none fitted): the fallback {args.trl_best_fallback}"
    runs: dict[str, list[dict]] = {}
    if args.sweep_only:
        write(args.out, tag, meta, [], runs)
        print(markdown([], meta))
        return 0 if best else 1
    items = [meta["trl_best"] if c == "trl:best" else c for c in expand_contenders(args.contenders)]
    once = {meta["trl_best"] if c == "trl:best" else c for c in args.once}
    chosen = {item: 0 for item in items}  # which alternative of "a|b" runs (the next one after an out-of-memory)
    schedule = [(rep, item) for rep in range(args.repeats) for item in items if item not in once]
    schedule += [(0, item) for item in items if item in once]
    rows: list[dict] = []
    for rep, item in schedule:
        alts = alternatives(item)
        while True:
            name = alts[chosen[item]]
            left, need = deadline - time.time(), expected_seconds(name, runs)
            if left < need:
                meta["not_run"].append(f"{name} (repeat {rep + 1}: {left:.0f} s left, a run takes ~{need:.0f} s)")
                break
            result = run_child(name, work, f"r{rep}-{sum(map(len, runs.values()))}-{name.split(':')[0]}",
                               min(args.timeout, left))
            runs.setdefault(name, []).append(result)
            if result.get("ok") or not is_oom(result.get("error")) or chosen[item] + 1 >= len(alts):
                break
            chosen[item] += 1  # out of memory: its alternative, now and in later repeats
        # written after every run: a run cut short by a time limit keeps what it measured
        rows = [aggregate(c, rs, spec, peak) for c, rs in runs.items()]
        write(args.out, tag, meta, rows, runs)
    write(args.out, tag, meta, rows, runs)
    print(markdown(rows, meta))
    return 0 if rows and all(r.get("ok") or r.get("out_of_memory") for r in rows) else 1


# a run's seconds before any was measured (committed logs: trl 33-44, hf 45-55, forgekit 80-107 at 6-14 steps)
EXPECTED_S = {"trl": 40.0, "hf": 55.0, "forgekit": 100.0, "levers": 60.0}


def expected_seconds(name: str, runs: dict[str, list[dict]]) -> float:
    """How long a run of `name` will take: the longest of its earlier runs, else the committed logs' figure."""
    walls = [r["wall_s"] for r in runs.get(name, []) if r.get("wall_s")]
    return max(walls) if walls else EXPECTED_S.get(name.split(":")[0], 60.0)


def run_sweep(args: argparse.Namespace, work: Path, deadline: float, save: Any = None) -> dict:
    """TRL's settings in one child process (restarted on the rest if it dies); the table rows and the winner.
    `save(sweep)` is called with the table so far after each child process."""
    todo = sweep.settings(args.sweep_ckpt.split(","), args.sweep_batch.split(","), args.sweep_liger.split(","))
    records: list[dict] = []
    started = time.time()
    for attempt in range(4):
        left = deadline - time.time()
        if not todo or left < 30:
            break
        result = run_child("trl-sweep", work, f"sweep-{attempt}", min(args.timeout * len(todo), left),
                           extra=["--settings", json.dumps(todo)])
        done = result.get("settings") or []
        records += done
        todo = todo[len(done):]
        if todo:  # the child died inside the next setting: that is the setting's row
            tail = (work / f"sweep-{attempt}.log").read_text(errors="replace")[-1500:]
            records.append({"setting": todo[0], "ok": False,
                            "error": result.get("error") or f"the sweep child exited with {result.get('rc')}: {tail}"})
            todo = todo[1:]
        if save:
            save(_sweep_table(records, args.steps, started))
    records += [{"setting": t, "ok": False, "skipped": "not run: the time budget ran out"} for t in todo]
    return _sweep_table(records, args.steps, started)


def _sweep_table(records: list[dict], steps: int, started: float) -> dict:
    rows = [sweep.sweep_row(r["setting"], r) | {"setting_s": r.get("setting_s")} for r in records]
    best = sweep.pick_best(rows)
    return {"rows": rows, "best": best, "steps": steps, "wall_s": time.time() - started,
            "how": "one process, the model loaded afresh for each setting",
            "source": f"the sweep's fastest setting that fitted: {best['label']}" if best else None}


def write(out: Path, tag: str, meta: dict, rows: list[dict], runs: dict) -> None:
    """The JSON (meta, rows, every run) and the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    (out / f"{tag}.md").write_text(markdown(rows, meta))


def merge(args: argparse.Namespace) -> int:
    """Pool the runs of several result files of the same work (e.g. one per GPU of a host) into one table."""
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    meta = dict(parts[0]["meta"])
    keys = ("model", "steps", "tokens_per_step", "lr", "data_stats")
    for f, part in zip(args.merge, parts):
        if any(part["meta"].get(k) != meta.get(k) for k in keys):
            raise SystemExit(f"{f}: not the same work as {args.merge[0]} (compare meta {', '.join(keys)})")
    runs: dict[str, list[dict]] = {}
    for part in parts:
        for c, rs in part["runs"].items():
            runs.setdefault(c, []).extend(rs)
    spec = {"flops_per_token": meta["flops_per_token"],
            "flops_per_token_full": meta.get("flops_per_token_full", meta["flops_per_token"])}
    rows = [aggregate(c, rs, spec, meta["peak_tflops"]) for c, rs in runs.items()]
    meta["repeats"] = max(len(rs) for rs in runs.values())
    meta.pop("not_run", None)  # one part's skipped runs may be another's: the runs-ok column counts what ran
    meta["command"] = " ; ".join(p["meta"]["command"] for p in parts) + " ; python benchmarks/run.py --merge " + " ".join(
        Path(f).name for f in args.merge)
    write(args.out, args.tag or "merged", meta, rows, runs)
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
