"""Tokenization in parallel processes (`num_preprocess_workers` / `--num-preprocess-workers`): seconds to prepare a
chat file with 1, 2, ... processes, each from an empty cache, medians of --repeats.

The data: --examples synthetic support conversations (system, user, assistant; ~150 tokens each) in one JSONL
file; the tokenizer: the embedded SmolLM2-135M-Instruct's (or --model DIR). What is timed is `prepare_data` end to
end (read, validate, render, tokenize, pack, write the cache), so the figure is what a user waits for.

    python benchmarks/preprocess_workers.py [--examples 40000] [--workers 1,2] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def write_data(path: Path, n: int) -> None:
    topics = ["a late delivery", "a damaged parcel", "a refund", "a login problem", "an invoice", "a cancellation"]
    with path.open("w") as f:
        for i in range(n):
            topic = topics[i % len(topics)]
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You are the support desk of a small online shop. Be brief and kind."},
                {"role": "user", "content": f"Hello, order {1000 + i} is about {topic}. I wrote twice already "
                                            f"({i % 13} days ago) and nobody answered. What happens now?"},
                {"role": "assistant", "content": f"Sorry about order {1000 + i}. I have opened case {i * 7 % 9973} "
                                                 f"for {topic}; you will hear from us within {1 + i % 3} days, and "
                                                 "you can reply to this message to add details."},
            ]}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=40000)
    p.add_argument("--workers", default="1,2", help="comma-separated process counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default=None, help="model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from forgekit.config import load_config
    from forgekit.prepare import prepare_data

    if args.model is None:
        from forgekit.models import fetch_model

        args.model = str(fetch_model())
    work = Path(tempfile.mkdtemp(prefix="fk-prep-"))
    train = work / "train.jsonl"
    write_data(train, args.examples)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    for n in [int(w) for w in args.workers.split(",")]:
        seconds = []
        for r in range(args.repeats):
            cfg = load_config({"model_id": args.model, "train_path": str(train), "num_preprocess_workers": n})
            t = time.perf_counter()
            m = prepare_data(cfg, use_gpu=False, root=work / f"cache-{n}-{r}").manifest
            seconds.append(time.perf_counter() - t)
            assert not m["cache_hit"]
        med = statistics.median(seconds)
        rows.append({"workers": n, "seconds": [round(s, 2) for s in seconds], "median_s": round(med, 2),
                     "examples_per_s": round(args.examples / med), "train_tokens": m["train_tokens"]})
        print(f"{n:>3} process(es): {med:6.1f} s median of {seconds}  ({args.examples / med:,.0f} examples/s)")
    base = rows[0]["median_s"]
    for row in rows:
        row["speedup"] = round(base / row["median_s"], 2)
    out = {"command": "python benchmarks/preprocess_workers.py " + " ".join(
               f"--{k} {v}" for k, v in (("examples", args.examples), ("workers", args.workers),
                                         ("repeats", args.repeats))),
           "cpu": platform.processor() or platform.machine(), "usable_cores": cores, "rows": rows}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
