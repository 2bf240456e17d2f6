"""forgekit.plan: the one step arithmetic against the libraries' own, the schedule, and plan.json."""

from __future__ import annotations

import math

import pytest

from forgekit.plan import eval_schedule, steps

# sizes that do not divide evenly: (rows, world size, micro batch, accumulation)
UNEVEN = [(10, 2, 4, 1), (13, 2, 2, 2), (7, 1, 3, 2), (101, 4, 3, 5), (5, 2, 4, 3), (1, 2, 8, 1), (64, 3, 5, 2)]


@pytest.mark.parametrize(("rows", "world", "micro", "accum"), UNEVEN)
def test_batches_per_worker_are_acceleratess_own_shards(rows, world, micro, accum):
    """Each worker's batches per epoch, as accelerate shards the Trainer's batches over the workers."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, SequentialSampler

    batches = BatchSampler(SequentialSampler(range(rows)), micro, drop_last=False)
    per_worker = {len(BatchSamplerShard(batches, num_processes=world, process_index=i, even_batches=True))
                  for i in range(world)}
    assert per_worker == {math.ceil(rows / (world * micro))}
    assert steps(rows, world, micro, accum, epochs=1).steps_per_epoch == max(math.ceil(per_worker.pop() / accum), 1)


@pytest.mark.parametrize(("rows", "world", "micro", "accum"), [u for u in UNEVEN if u[1] == 1] + [(10, 1, 4, 1),
                                                                                               (9, 1, 2, 4)])
def test_steps_are_the_trainers_own(rows, world, micro, accum, tiny_model_dir, tmp_path):
    """transformers' Trainer computes the same steps per epoch, and the same epochs for a max_steps run."""
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loader = DataLoader(list(range(rows)), batch_size=micro)
    for max_steps in (-1, 7):
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=micro, use_cpu=True,
                                 gradient_accumulation_steps=accum, num_train_epochs=3, max_steps=max_steps,
                                 report_to=[])
        epochs, per_epoch, *_, total = Trainer(model=model, args=args).set_initial_training_values(args, loader)
        mine = steps(rows, world, micro, accum, epochs=3 if max_steps < 0 else None,
                     max_steps=max_steps if max_steps > 0 else None)
        assert (mine.steps_per_epoch, mine.epochs, mine.total) == (per_epoch, epochs, total)


def test_min_num_update_steps_is_met_without_overshooting_one_epoch():
    for rows, world, micro, accum in UNEVEN:
        for min_steps in (1, 3, 10, 100):
            st = steps(rows, world, micro, accum, min_steps=min_steps)
            assert st.total == st.steps_per_epoch * st.epochs
            assert min_steps <= st.total < min_steps + st.steps_per_epoch
    # the case: 10 rows, 2 workers x 4 -> 2 steps per epoch, so 50 epochs (100 steps), not 100 epochs (200)
    assert steps(10, 2, 4, 1, min_steps=100) == type(steps(10, 2, 4, 1, min_steps=100))(2, 50, 100)


def test_max_steps_wins_and_epochs_cover_it():
    st = steps(10, 2, 4, 1, epochs=3, max_steps=5)
    assert (st.total, st.epochs) == (5, 3)  # 2 steps per epoch: 3 epochs, the last one cut


def test_eval_schedule():
    assert eval_schedule(4, 10, "steps", 3, True) == {"eval_every": 3, "checkpoints": 4, "evaluations": 5}
    assert eval_schedule(4, 12, "epochs", 1, False) == {"eval_every": 4, "checkpoints": 3, "evaluations": 0}
    assert eval_schedule(4, 2, "epochs", 5, True)["eval_every"] == 2  # never past the last step


def test_plan_json_holds_every_derived_number_and_validate_prints_them(tiny_model_dir, tmp_path, capsys):
    import json

    import yaml

    from forgekit.cli import main
    from forgekit.config import load_config
    from forgekit.plan import plan_run

    rows = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                          {"role": "assistant", "content": " ".join(map(str, range(i)))}]} for i in range(1, 11)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"model_id": str(tiny_model_dir), "train_path": str(train), "num_devices": 2,
            "train_batch_size_per_device": 4, "min_num_update_steps": 7, "output_dir": str(tmp_path / "runs")}
    plan = plan_run(load_config(data), use_gpu=False, root=tmp_path / "cache")
    doc = plan.to_json()
    assert doc["batch"] == {"world_size": 2, "micro_batch": 4, "accumulation": 1, "total_batch": 8, "eval_batch": 4}
    assert doc["schedule"]["steps_per_epoch"] == 2 and doc["schedule"]["num_epochs"] == 4
    assert doc["schedule"]["total_steps"] == 8 and doc["precision"] in ("fp32", "bf16-autocast")
    assert doc["pad_to_multiple_of"] == 64 and doc["data"]["train_rows"] == 10
    assert {"context_length", "num_epochs", "gradient_accumulation_steps"} <= set(doc["derived"])
    path = plan.write(tmp_path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc, default=str))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    assert main(["validate", str(tmp_path / "cfg.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "num_epochs: 4  # derived" in out
    assert "# steps: 2 per epoch x 4 epoch(s) (derived) -> 8 optimizer steps (min_num_update_steps 7)" in out
    assert "# batch: 8 examples per optimizer step = 2 worker(s) x 4 per device x 1 accumulation step(s)" in out
    assert any(line.startswith("# plan: 2 CPU worker(s); precision ") for line in out)
