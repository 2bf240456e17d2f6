"""Does bf16 autocast on a CPU learn like fp32? Per-step losses of a LoRA run of SmolLM2-135M-Instruct.

Three modes from the same initial adapter on the same batches (random tokens, as the CPU benchmark's synthetic
chats): fp32; bf16 autocast (peft adds the LoRA update to the bf16 layer output in bf16); bf16 autocast with
`forgekit.perf.lora_sum_in_fp32` (the sum in fp32). Prints each mode's losses, its distance from fp32 and
seconds per step.

    python benchmarks/cpu_autocast_learning.py [--steps 6] [--lr 2e-4] [--threads 2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time


def lora_model(mode: str, model_dir: str, lr: float) -> tuple:
    """SmolLM2 + LoRA r16 (all linear) in fp32, set up for `mode`, and its AdamW; same seed every call."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgekit import perf

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    if mode.startswith("bf16+fp32-sum"):
        perf.lora_sum_in_fp32(model)
    if mode.endswith("+fp32-head"):  # the output layer's matmul in fp32 too (logits not rounded to bf16)
        head = model.get_output_embeddings()
        plain = head.forward

        def fp32_head(x):
            with torch.autocast("cpu", enabled=False):
                return plain(x.float())

        head.forward = fp32_head
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=lr, weight_decay=0.0)
    return model, opt


def train_step(model, opt, x, mode: str) -> float:
    """One optimizer step on the batch `x` (labels = inputs), autocast unless `mode` is fp32; the loss."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def run(mode: str, model_dir: str, batches: list, lr: float) -> dict:
    model, opt = lora_model(mode, model_dir, lr)
    losses, times = [], []
    for x in batches:
        t = time.perf_counter()
        losses.append(train_step(model, opt, x, mode))
        times.append(time.perf_counter() - t)
    return {"losses": losses, "seconds_per_step": times}


def main() -> None:
    import torch

    from forgekit.models import fetch_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="4x256", help="rows x tokens per step")
    p.add_argument("--out", default=None)
    p.add_argument("--modes", default="fp32,bf16,bf16+fp32-sum,bf16+fp32-sum+fp32-head")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = str(fetch_model())
    rows, length = (int(v) for v in args.batch.split("x"))
    g = torch.Generator().manual_seed(1)
    # a skewed unigram distribution (random tokens from a Zipf-like law): something a few steps can learn
    weights = 1.0 / torch.arange(1, 49153, dtype=torch.float64) ** 1.1
    batches = [torch.multinomial(weights, rows * length, replacement=True, generator=g).view(rows, length)
               for _ in range(args.steps)]
    report = {"args": vars(args)}
    for mode in args.modes.split(","):
        r = run(mode, model_dir, batches, args.lr)
        report[mode] = r
        ref = report["fp32"]["losses"]
        gap = max(abs(a - b) for a, b in zip(r["losses"], ref))
        sps = sorted(r["seconds_per_step"][1:])[len(r["seconds_per_step"][1:]) // 2]
        print(f"{mode:14s} losses {[round(v, 3) for v in r['losses']]}  max |diff| vs fp32 {gap:.3f}  "
              f"median s/step {sps:.2f} ({rows * length / sps:.0f} tokens/s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
