"""Resident memory of a CPU LoRA training process over steps with varying batch shapes (SmolLM2-135M-Instruct).

    python benchmarks/cpu_memory_growth.py bf16 40          # or fp32, bf16+fp32-sum; 4 rows of 64-700 random tokens
    python benchmarks/cpu_memory_growth.py bf16 40 64       # lengths rounded up to a multiple of 64 (few shapes)
    MALLOC_MMAP_THRESHOLD_=1048576 python benchmarks/cpu_memory_growth.py bf16 40

Prints RSS and elapsed seconds every 10 steps. Model, modes and step: ``cpu_autocast_learning.py``. Measured
figures: end_to_end_examples/fine_tune_function_calling/README.md (Results).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_autocast_learning import lora_model, train_step


def main() -> None:
    import torch

    from forgekit.models import fetch_model

    mode, steps = sys.argv[1], int(sys.argv[2])
    multiple = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.set_num_threads(2)
    model, opt = lora_model(mode, str(fetch_model()), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for step in range(steps):
        length = int(torch.randint(64, 700, (1,), generator=g))
        length = -(-length // multiple) * multiple
        train_step(model, opt, torch.randint(0, model.config.vocab_size, (4, length), generator=g), mode)
        if step % 10 == 9:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * 4096 / 1e9
            print(f"{mode} step {step + 1}: rss {rss:.2f} GB, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
