"""Does bf16 autocast learn like fp32 on a CPU, at the learning rates users pick? The quickstart run twice per
learning rate, `precision=fp32` and `precision=bf16` (bf16 autocast, LoRA sums in fp32: what forgekit's CPU
workers do), same seed and data; prints eval loss per evaluation, train loss per step and tokens/s of each.

This is the evidence behind `precision: auto` on CPUs with AMX / AVX512-BF16 (bf16 autocast there).

    python benchmarks/cpu_precision_default.py [--lrs 2e-3,2e-4] [--steps 12] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CONFIG = "training_configs/quickstart/smollm2-135m-lora-cpu.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", default="2e-3,2e-4")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    root = Path(tempfile.mkdtemp(prefix="fk-prec-"))
    report = {"command": f"python benchmarks/cpu_precision_default.py --lrs {args.lrs} --steps {args.steps}",
              "config": CONFIG, "runs": []}
    for lr in args.lrs.split(","):
        for precision in args.precisions.split(","):
            name = f"lr{lr}-{precision}"
            result = finetune(CONFIG, [f"learning_rate={lr}", f"precision={precision}", f"max_steps={args.steps}",
                                       f"output_dir={root}", f"run_name={name}",
                                       f"checkpoint_and_evaluation_frequency.frequency={args.steps // 4}"],
                              progress=False)
            run_dir = result.get("run_dir") or root / name
            evals = [round(r["eval_loss"], 4) for r in read_metrics(run_dir, "eval")]
            train = [round(r["loss"], 4) for r in read_metrics(run_dir, "train") if "loss" in r]
            row = {"lr": float(lr), "precision": precision, "eval_loss": evals, "train_loss": train,
                   "tokens_per_second": result.get("tokens_per_second"), "train_seconds": result.get("train_seconds")}
            report["runs"].append(row)
            print(f"{name:14s} eval {evals}  tokens/s {row['tokens_per_second']}", flush=True)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
