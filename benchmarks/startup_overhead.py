"""The fixed cost of one `finetune` call: a 1-step LoRA run of a tiny model on a local Ray cluster, timed end to end.

Training itself takes well under a second here; the rest is Ray Train starting its controller and worker
actors, the worker's imports and model load, the checkpoint, and noticing that the run ended. forgekit's local
cluster turns Ray Train's preemption watcher off and polls the workers every 0.5 s (`forgekit.train.init_ray`);
set the two variables to Ray's defaults to compare:

    python benchmarks/startup_overhead.py                       # forgekit's local-cluster settings
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2 python benchmarks/startup_overhead.py

`make install` removes rfc3987-syntax (see the Makefile; figures with and without it: benchmarks/results/README.md,
eleventh session). The first line printed says which case was measured; `pip install --no-deps
rfc3987-syntax==1.1.0` to compare.

Prints one line per run (the first also pays for the cluster's first worker processes; later ones are the
steady cost) and needs the embedded model's tokenizer (`forgekit models fetch smollm2-135m-instruct`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()

    import importlib.util

    from forgekit.config import load_config
    from forgekit.examples.sample_data import write_quickstart_dataset
    from forgekit.models import fetch_model
    from forgekit.testing import build_tiny_model
    from forgekit.train import finetune, init_ray

    print("rfc3987-syntax installed:", importlib.util.find_spec("rfc3987_syntax") is not None)
    work = Path(tempfile.mkdtemp(prefix="fk-startup-"))
    tiny = build_tiny_model(work / "tiny", source=fetch_model())
    data = write_quickstart_dataset(work / "data", n_train=16, n_valid=4, n_test=1)
    started = time.perf_counter()
    init_ray(None, 1)
    print(f"local Ray cluster up in {time.perf_counter() - started:.1f} s")
    cfg = {"model_id": str(tiny), "train_path": str(data["train"]), "context_length": 256, "num_devices": 1,
           "train_batch_size_per_device": 4, "gradient_accumulation_steps": 1, "max_steps": 1, "learning_rate": 1e-3,
           "num_warmup_steps": 0, "output_dir": str(work / "runs"), "lora_config": {"r": 8, "target_modules": "all-linear"}}
    for i in range(a.runs):
        t = time.perf_counter()
        result = finetune(load_config({**cfg, "seed": i}), progress=False)
        print(f"run {i}: {time.perf_counter() - t:.1f} s wall, of which training {result['train_seconds']:.2f} s")


if __name__ == "__main__":
    main()
