"""The plan is what the workers do: real tiny runs on sizes that do not divide evenly.

The steps a run takes (metrics.jsonl) equal the planned ones, `min_num_update_steps` is met without overshooting
by more than one epoch, and plan.json equals what the Trainer executed (the final row's `executed`). With the old
arithmetic (a floor in data preparation, a ceiling in the worker) the first case ran 20 steps for 10.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(map(str, range(i % 9 + 1)))}]} for i in range(n)]


# (rows, workers, micro batch, accumulation, min_num_update_steps, with a validation file)
CASES = [(10, 2, 4, 1, 10, False), (13, 2, 2, 2, 5, True), (7, 1, 3, 2, 4, False)]


@pytest.mark.parametrize(("rows", "world", "micro", "accum", "min_steps", "valid"), CASES,
                         ids=[f"{c[0]}rows-{c[1]}x{c[2]}x{c[3]}-min{c[4]}" for c in CASES])
def test_a_run_takes_the_planned_steps(ray_cluster, tiny_model_dir, tmp_path, rows, world, micro, accum, min_steps,
                                       valid):
    from forgekit.config import load_config
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _rows(rows)))
    cfg = {"model_id": str(tiny_model_dir), "train_path": str(train), "num_devices": world, "context_length": 64,
           "train_batch_size_per_device": micro, "gradient_accumulation_steps": accum,
           "min_num_update_steps": min_steps, "num_warmup_steps": 0, "learning_rate": 1e-3,
           "checkpoint_and_evaluation_frequency": {"unit": "epochs", "frequency": 1}, "output_dir": str(tmp_path / "runs")}
    if valid:
        (tmp_path / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(4)))
        cfg["valid_path"] = str(tmp_path / "valid.jsonl")
    result = finetune(load_config(cfg), progress=False)
    run_dir = Path(result["run_dir"])
    plan = json.loads((run_dir / "plan.json").read_text())
    schedule, batch = plan["schedule"], plan["batch"]
    taken = [r["step"] for r in read_metrics(run_dir, "train")]
    assert taken == list(range(1, schedule["total_steps"] + 1))
    assert min_steps <= schedule["total_steps"] < min_steps + schedule["steps_per_epoch"]
    executed = read_metrics(run_dir, "final")[-1]["executed"]
    assert executed["max_steps"] == schedule["total_steps"] == result["steps"]
    assert executed["steps_per_epoch"] == schedule["steps_per_epoch"]
    assert executed["num_train_epochs"] == schedule["num_epochs"]
    assert (executed["world_size"], executed["micro_batch"], executed["accumulation"]) == (
        batch["world_size"], batch["micro_batch"], batch["accumulation"])
    assert executed["save_steps"] == schedule["eval_every"]
    evals = read_metrics(run_dir, "eval")
    assert len(evals) == schedule["evaluations"] and len(result["checkpoints"]) <= schedule["checkpoints"]
    if valid:
        assert executed["eval_steps"] == schedule["eval_every"]
        assert [r["step"] for r in evals] == [0, *range(schedule["eval_every"], schedule["total_steps"] + 1,
                                                        schedule["eval_every"])]
