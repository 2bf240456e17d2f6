"""Reference log-probs for DPO: computed once before training (TRL's precompute_ref_log_probs) vs every step.

Each variant runs in its own process (peak RSS is per process): forgekit's preference trainer
(`forgekit.worker.preference`, TRL's DPOTrainer on forgekit's rows) on a small random SmolLM2-shaped model, CPU,
fp32, LoRA and full fine-tuning (the tests' 2-layer, 3.2M-parameter model: tests/conftest.py). Reported: seconds to build the trainer (the precompute pass included), seconds of
training, peak resident memory, and the final loss (the two ways must agree).

    .venv/bin/python benchmarks/preference_ref_logps.py [--pairs 32] [--epochs 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def one(model_dir: str, lora: bool, precompute: bool, pairs: int, epochs: int, threads: int) -> dict:
    import resource
    import time

    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from forgekit.preference import Pair, tokenize_pair
    from forgekit.worker.preference import _pretokenized

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for i in range(pairs):
        prompt = [{"role": "user", "content": f"Ticket {i}: my order {i * 7 % 97} has not arrived, what now?"}]
        pair = Pair(prompt, [{"role": "assistant", "content": f"Steps: check tracking {i}, then contact support."}],
                    [{"role": "assistant", "content": f"No idea, sorry about order {i}."}], None, "bench", i)
        rows.append(tokenize_pair(pair, tok))
    ds = Dataset.from_list(rows)
    transformers.set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    out = tempfile.mkdtemp()
    args = DPOConfig(output_dir=out, per_device_train_batch_size=8, num_train_epochs=epochs, learning_rate=1e-4,
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, disable_tqdm=True, precompute_ref_log_probs=precompute, beta=0.1)
    started = time.perf_counter()
    trainer = _pretokenized(DPOTrainer, simpo_shift=None)(model=model, args=args, processing_class=tok, train_dataset=ds)
    built = time.perf_counter()
    trainer.train()
    done = time.perf_counter()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"lora": lora, "precompute": precompute, "init_s": round(built - started, 2), "train_s": round(done - built, 2),
            "total_s": round(done - started, 2), "steps": trainer.state.global_step,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ref_model_held": trainer.ref_model is not None, "final_loss": round(losses[-1], 6)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # model_dir lora precompute (child process)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1] == "1", a.one[2] == "1", a.pairs, a.epochs, a.threads)))
        return
    from forgekit.models import fetch_model
    from forgekit.testing import build_tiny_model

    model_dir = build_tiny_model(Path(tempfile.mkdtemp()) / "m", source=fetch_model())  # tests' tiny model
    for lora in (True, False):
        for precompute in (False, True):
            cmd = [sys.executable, __file__, "--pairs", str(a.pairs), "--epochs", str(a.epochs), "--threads",
                   str(a.threads), "--one", str(model_dir), str(int(lora)), str(int(precompute))]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(res.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
