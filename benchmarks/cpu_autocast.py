"""CPU lever check: one LoRA training step of SmolLM2-135M-Instruct in fp32 vs bf16 autocast, one thread.

On CPUs with AMX/AVX-512 bf16 (Sapphire Rapids and later) oneDNN runs the matmuls in bf16. forgekit trains
in fp32 on CPUs today; this measures what bf16 autocast would give a CPU worker (one core per worker).

    python benchmarks/cpu_autocast.py [--threads 1] [--model PATH]   # default: the embedded model
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="model dir (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if args.model is None:
        from forgekit.models import fetch_model

        args.model = str(fetch_model())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (4, 256))
    for mode in ("fp32", "bf16", "fp32", "bf16"):  # twice each, interleaved: a shared machine drifts
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
        best = min(times[1:] or times)
        print(f"{mode}: s/step {[round(v, 2) for v in times]}, best {x.numel() / best:.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
