"""Run forgekit and the usual fine-tuning recipes side by side on identical work; write JSON + a markdown table.

Example (one H100, the issue-6 benchmark)::

    python benchmarks/run.py --model llama8b --contenders hf,trl,forgekit --steps 16 --repeats 3

Every contender runs in its own child process (``benchmarks/contenders.py``), one after the other, on the
same GPU, in the order ``repeat 1: A B C, repeat 2: A B C, ...`` so slow drift hits all alike. All load the
same saved random-weight model and train the same synthetic examples (``benchmarks/workload.py``) with
the same LoRA config, learning rate, step count and about the same real tokens per optimizer step.

Figures per contender (medians over repeats): real (non-pad) tokens/s over steps 2..N, MFU (model FLOPs
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


def run_child(contender: str, work: Path, tag: str, timeout: int) -> dict:
    """Run one contender in a child process; its JSON result plus the NVML memory peak."""
    out = work / f"{tag}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "FKB_T0": repr(time.time())}
    cmd = [sys.executable, str(HERE / "contenders.py"), contender, "--spec", str(work / "spec.json"), "--out", str(out)]
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


def steady_tokens_per_s(result: dict) -> float | None:
    """Real tokens per second from the end of step 1 to the end of the last step."""
    t, n = result.get("times") or [], result.get("tokens") or []
    if len(t) < 2 or t[-1] <= t[0]:
        return None
    return (n[-1] - n[0]) / (t[-1] - t[0])


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
    row.update(
        tokens_per_s=med(tps),
        tokens_per_s_all=tps,
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


def markdown(rows: list[dict], meta: dict) -> str:
    """The results table, with the command that produced it."""
    base = {r["contender"]: r.get("tokens_per_s") for r in rows}
    ref = base.get("hf")
    lines = [
        f"# Benchmark: {meta['model']} LoRA on {meta['device_name']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        (f"Data: {meta['data_stats']['n']} synthetic chat examples, token lengths median "
        f"{meta['data_stats']['p50']}, p95 {meta['data_stats']['p95']}, mean {meta['data_stats']['mean']:.0f}, "
        f"max {meta['data_stats']['max']}; {meta['steps']} optimizer steps of ~{meta['tokens_per_step']} real "
        f"tokens; LoRA r=16 on all linear layers; lr {meta['lr']} constant. MFU counts "
        f"{meta['flops_per_token'] / 1e9:.2f} GFLOP/token (4N + attention at the token-weighted mean length "
        f"{meta['data_stats']['token_weighted_mean']:.0f}) against {meta['peak_tflops']} TFLOP/s. "
        f"Medians of {meta['repeats']} runs. {meta['versions']}"),
        "",
        ("| contender | real tokens/s | vs hf | MFU | peak alloc GB | peak GPU GB (NVML) | first step s "
         "| tokens/step | loss first → last-3 | runs ok |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) else "–"

    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['contender']} | failed: {str(r.get('error', ''))[:120]} |  |  |  |  |  |  |  | 0 |")
            continue
        tps = r.get("tokens_per_s")
        workers = "GPUs" if meta.get("device_name") != "cpu" else "CPU workers"
        notes = ([f"{r['gpus']} {workers}"] if r.get("gpus", 1) > 1 else []) + (["full FT, MFU at 6N"] if r.get("full_finetune") else [])
        name = r["contender"] + (f" ({', '.join(notes)})" if notes else "")
        lines.append(
            f"| {name} | {f(tps, ',.0f')} | {f(tps / ref if tps and ref else None, '.2f')}× "
            f"| {f(r.get('mfu'), '.3f')} | {f(r.get('peak_alloc_gb'), '.1f')} | {f(r.get('nvml_peak_gb'), '.1f')} "
            f"| {f(r.get('time_to_first_step_s'), '.1f')} | {f(r.get('tokens_per_step'), ',.0f')} "
            f"| {f(r.get('first_loss'), '.3f')} → {f(r.get('final_loss'), '.3f')} | {r['ok']}/{r['repeats']} |"
        )
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
    args = p.parse_args(argv)

    if args.merge:
        return merge(args)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare(args, work)
    contenders = expand_contenders(args.contenders)
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    device_name = "cpu"
    if args.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name(0)
    peak = peak_tflops(device_name) if args.device == "cuda" else None
    meta = {
        "command": "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "model": args.model,
        "device_name": device_name,
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
    }
    tag = args.tag or f"{args.model}-{args.device}"
    rows: list[dict] = []
    for rep in range(args.repeats):
        for i, c in enumerate(contenders):
            runs[c].append(run_child(c, work, f"r{rep}-{i}-{c.split(':')[0]}", args.timeout))
            # written after every run: a run cut short by a time limit keeps what it measured
            rows = [aggregate(c, runs[c], spec, peak) for c in contenders]
            write(args.out, tag, meta, rows, runs)
    print(markdown(rows, meta))
    return 0 if all(r.get("ok") for r in rows) else 1


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
    meta["command"] = " ; ".join(p["meta"]["command"] for p in parts) + " ; python benchmarks/run.py --merge " + " ".join(
        Path(f).name for f in args.merge)
    write(args.out, args.tag or "merged", meta, rows, runs)
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
