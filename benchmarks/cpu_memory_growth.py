"""Resident memory of a CPU LoRA training process over steps with varying batch shapes (SmolLM2-135M-Instruct).

    python benchmarks/cpu_memory_growth.py bf16 40          # or fp32; 4 rows of 64-700 random tokens per step
    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/cpu_memory_growth.py bf16 40

Prints RSS and elapsed seconds every 10 steps. Measured figures: end_to_end_examples/fine_tune_function_calling/
README.md (Results).
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgekit import perf
    from forgekit.models import fetch_model

    mode, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(fetch_model()), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    if mode == "bf16":
        perf.lora_sum_in_fp32(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        length = int(torch.randint(64, 700, (1,), generator=g))
        x = torch.randint(0, model.config.vocab_size, (4, length), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 9:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * 4096 / 1e9
            print(f"{mode} step {step + 1}: rss {rss:.2f} GB, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
