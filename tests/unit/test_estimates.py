"""Tests for the estimates and run readers the cookbooks reason with (forgekit.estimates, forgekit.runs,
forgekit.profiling, forgekit.plots, forgekit.convert.split_jsonl): each against numbers worked out by hand."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgekit.convert import split_jsonl
from forgekit.estimates import (
    batch_size_table,
    count_parameters,
    lora_parameter_table,
    lr_schedule,
    padding_waste,
    training_plan,
)
from forgekit.plots import markdown_table, plot_bars, plot_lines, plot_lr_schedules
from forgekit.prepare import pack_rows
from forgekit.profiling import WorkerMemory, track_worker_memory
from forgekit.runs import checkpoint_size, checkpoint_step, cost_per_million_tokens, run_summary, throughput

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


# --- split_jsonl


def _lines_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"i": i}) + "\n" + ("\n" if i == 3 else "") for i in range(n)))
    return path


def test_split_jsonl_halves_cover_every_line_once(tmp_path):
    src = _lines_file(tmp_path, 11)
    a, b = split_jsonl(src, tmp_path / "out", 2, seed=1)
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    assert (len(la), len(lb)) == (5, 6)
    assert sorted(la + lb) == sorted(line for line in src.read_text().splitlines() if line)
    assert not set(la) & set(lb)
    again = split_jsonl(src, tmp_path / "again", 2, seed=1)
    assert again[0].read_text() == a.read_text()  # the same seed, the same halves
    assert split_jsonl(src, tmp_path / "other", 2, seed=2)[0].read_text() != a.read_text()


def test_split_jsonl_without_seed_keeps_file_order(tmp_path):
    src = _lines_file(tmp_path, 9)
    parts = split_jsonl(src, tmp_path / "out", 3, seed=None)
    assert [json.loads(line)["i"] for line in parts[0].read_text().splitlines()] == [0, 1, 2]
    assert [json.loads(line)["i"] for line in parts[2].read_text().splitlines()] == [6, 7, 8]


def test_split_jsonl_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        split_jsonl(tmp_path / "missing.jsonl", tmp_path / "out")
    src = _lines_file(tmp_path, 1)
    with pytest.raises(ValueError, match="1 non-empty line"):
        split_jsonl(src, tmp_path / "out", 2)
    with pytest.raises(ValueError, match="parts must be >= 2"):
        split_jsonl(src, tmp_path / "out", 1)


# --- padding_waste


def test_padding_waste_by_hand():
    # one batch of all four: padded to the longest (8) -> 32 computed, 14 real, 18 padding
    w = padding_waste([2, 2, 2, 8], 4, "longest")
    assert (w["real_tokens"], w["computed_tokens"], w["pad_tokens"], w["batches"]) == (14, 32, 18, 1)
    assert w["waste"] == pytest.approx(18 / 32)
    # max_length pads every row to the context: 4 x 10
    w = padding_waste([2, 2, 2, 8], 2, "max_length", context_length=10)
    assert (w["computed_tokens"], w["batches"]) == (40, 2)
    # batch 1 never pads
    assert padding_waste([5, 9, 3], 1)["waste"] == 0


def test_padding_waste_longest_is_between_real_and_worst_case():
    lengths = [17, 3, 90, 41, 41, 7, 60, 2, 33, 12]
    for batch in (2, 3, 5):
        w = padding_waste(lengths, batch, "longest", seed=3)
        assert w["real_tokens"] == sum(lengths)
        assert sum(lengths) <= w["computed_tokens"] <= max(lengths) * len(lengths)
        assert w["batches"] == -(-len(lengths) // batch)


def test_padding_waste_packed_has_no_padding_and_uses_forgekit_rows():
    lengths = [17, 3, 90, 41, 41, 7, 60, 2, 33, 12]
    w = padding_waste(lengths, 2, "packed", context_length=100)
    assert w["pad_tokens"] == 0 and w["real_tokens"] == sum(lengths)
    assert w["rows"] == len(pack_rows(lengths, 100)) < len(lengths)


def test_padding_waste_bad_input():
    with pytest.raises(ValueError, match="expected 'longest'"):
        padding_waste([1], 1, "shortest")
    with pytest.raises(ValueError, match="needs context_length"):
        padding_waste([1], 1, "max_length")
    with pytest.raises(ValueError, match="more than context_length"):
        padding_waste([20], 1, "packed", context_length=10)
    with pytest.raises(ValueError, match="batch_size"):
        padding_waste([1], 0)


# --- lr_schedule


def test_lr_schedule_linear_with_warmup_by_hand():
    # warm-up 2 of 5 steps: step k uses lambda(k-1); lambda(s) = s/2 for s < 2, then (5 - s) / 3
    assert lr_schedule("linear", 1.0, 5, 2) == pytest.approx([0.0, 0.5, 1.0, 2 / 3, 1 / 3])


def test_lr_schedule_shapes():
    assert lr_schedule("constant", 3e-4, 4) == pytest.approx([3e-4] * 4)
    cosine = lr_schedule("cosine", 1e-3, 50, 5)
    assert cosine[5] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(cosine[5:]))
    assert cosine[-1] < 1e-5
    assert lr_schedule("cosine_with_min_lr", 1e-3, 50, 0, {"min_lr_rate": 0.1})[-1] == pytest.approx(1e-4, rel=0.02)


def test_lr_schedule_bad_input():
    with pytest.raises(ValueError):
        lr_schedule("nonexistent", 1e-3, 10)
    with pytest.raises(ValueError, match="max_steps"):
        lr_schedule("cosine", 1e-3, 0)
    with pytest.raises(ValueError, match="num_decay_steps"):
        lr_schedule("warmup_stable_decay", 1e-3, 10)


# --- batch sizes and the training plan


def test_batch_size_table_uses_the_rule_and_reports_indivisible_sizes():
    rows = batch_size_table(64, 8, [1, 2, 3, 8])
    assert [(r["per_device"], r["accumulation"]) for r in rows] == [(8, 8), (8, 4), (None, None), (8, 1)]
    assert "not divisible by num_devices=3" in rows[2]["note"]
    assert all(r["num_devices"] * r["per_device"] * r["accumulation"] == 64 for r in rows if r["per_device"])


def _ticket_config(tmp_path: Path, model: Path, n_train: int, **extra) -> dict:
    rows = [
        {"messages": [{"role": "user", "content": f"Where is order {i}?"},
                      {"role": "assistant", "content": f"Order {i} ships tomorrow."}]}
        for i in range(n_train)
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    return {"model_id": str(model), "train_path": str(train), "valid_path": str(valid), "context_length": 64, **extra}


def test_training_plan_by_hand(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path / "cache"))
    cfg = _ticket_config(
        tmp_path, tiny_model_dir, 10, num_devices=1, train_batch_size_per_device=2, gradient_accumulation_steps=2,
        min_num_update_steps=7, checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 5},
    )
    plan = training_plan(cfg)
    # the Trainer takes ceil(ceil(10 / 1) / 2) = 5 micro-batches = ceil(5 / 2) = 3 steps per epoch, so 7 steps
    # need ceil(7 / 3) = 3 epochs -> 9 steps; saves at 5 and 9 (this said 4 epochs and 12 steps while data
    # preparation counted 10 // 4 = 2 steps per epoch)
    assert plan["num_epochs"] == 3 and plan["num_epochs_derived"]
    assert (plan["steps_per_epoch"], plan["max_steps"], plan["total_batch"]) == (3, 9, 4)
    assert (plan["eval_every"], plan["checkpoints_written"], plan["evaluations"]) == (5, 2, 3)
    fixed = training_plan(cfg, ["num_epochs=1", "num_devices=2", "checkpoint_and_evaluation_frequency.unit=epochs"])
    # 2 workers: ceil(ceil(10 / 2) / 2) = 3 micro-batches -> 2 steps; one save per epoch
    assert (fixed["num_epochs"], fixed["num_epochs_derived"], fixed["max_steps"]) == (1, False, 2)
    assert (fixed["eval_every"], fixed["checkpoints_written"]) == (2, 1)
    assert training_plan(cfg, ["max_steps=5"])["max_steps"] == 5


# --- parameters and checkpoints


def test_count_parameters_by_hand(tiny_model_dir):
    # tiny model: vocab 49152 x hidden 64 tied embedding; per layer q,o 64x64, k,v 32x64, gate/up/down 64x128,
    # two norms of 64; a final norm of 64
    layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 128 + 2 * 64
    total = 49152 * 64 + 2 * layer + 64
    full = count_parameters(tiny_model_dir)
    assert full == {"trainable": total, "total": total, "trainable_share": 1.0}
    # LoRA r on q and v: r x (in + out) each: q 64 -> 64, v 64 -> 32
    lora = count_parameters(tiny_model_dir, {"r": 4, "target_modules": ["q_proj", "v_proj"]})
    assert lora["trainable"] == 2 * 4 * ((64 + 64) + (64 + 32))
    assert lora["total"] == total + lora["trainable"]
    all_linear = count_parameters(tiny_model_dir, {"r": 8, "target_modules": "all-linear"})
    assert all_linear["trainable"] == 2 * 8 * (2 * 128 + 2 * 96 + 3 * 192)


def test_lora_parameter_table_rows(tiny_model_dir):
    rows = lora_parameter_table(tiny_model_dir, [4, 8], {"qv": ["q_proj", "v_proj"], "all": "all-linear"})
    assert [(r["targets"], r["r"]) for r in rows] == [("qv", 4), ("qv", 8), ("all", 4), ("all", 8), ("full fine-tuning", None)]
    assert rows[1]["trainable"] == 2 * rows[0]["trainable"]  # linear in r
    assert rows[0]["trainable"] == count_parameters(tiny_model_dir, {"r": 4, "target_modules": ["q_proj", "v_proj"]})["trainable"]
    assert rows[-1]["trainable"] == rows[-1]["total"] == count_parameters(tiny_model_dir)["total"]


def test_checkpoint_size_by_kind(tmp_path):
    ck = tmp_path / "step-000012"
    files = {
        "adapter_model.safetensors": 100, "adapter_config.json": 5, "README.md": 7,
        "global_step12/mp_rank_00_model_states.pt": 1000, "global_step12/zero_pp_rank_0_optim_states.pt": 300,
        "scheduler.pt": 11, "rng_state.pth": 13, "trainer_state.json": 17,
        "tokenizer.json": 20, "tokenizer_config.json": 3, "chat_template.jinja": 2,
    }
    for name, size in files.items():
        (ck / name).parent.mkdir(parents=True, exist_ok=True)
        (ck / name).write_bytes(b"x" * size)
    sizes = checkpoint_size(ck)
    assert sizes == {"weights": 100, "resume_state": 1341, "tokenizer": 25, "other": 12, "total": 1478}
    assert checkpoint_step(ck) == 12
    with pytest.raises(ValueError, match="step-NNNNNN"):
        checkpoint_step(tmp_path / "final")
    with pytest.raises(FileNotFoundError):
        checkpoint_size(tmp_path / "nothing")


# --- runs: throughput, cost, memory


def test_run_summary_reads_result_and_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints" / "step-000004"
    (ck / "global_step4").mkdir(parents=True)
    (ck / "adapter_model.safetensors").write_bytes(b"x" * 4000)
    (ck / "global_step4" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 6000)
    (run / "result.json").write_text(json.dumps({
        "best_checkpoint": str(ck), "trainable_params": 1000, "total_params": 4000, "train_seconds": 3.0,
        "wall_seconds": 30.0, "tokens_per_second": 100.0, "first_eval_loss": 2.0, "best_eval_loss": 1.5,
        "final_train_loss": 1.4}))
    row = run_summary({"run_dir": str(run)}, peak_rss_gb=1.25)
    assert (row["weights_mb"], row["resume_state_mb"], row["checkpoint_mb"]) == (0.004, 0.006, 0.01)
    assert row["trainable_share"] == 0.25 and row["peak_worker_rss_gb"] == 1.25 and row["peak_gpu_memory_gb"] is None
    assert (row["train_seconds"], row["best_eval_loss"]) == (3.0, 1.5)


def test_cost_per_million_tokens():
    assert cost_per_million_tokens(1000.0, 3.6) == pytest.approx(1.0)  # 3.6M tokens per hour for $3.6
    assert cost_per_million_tokens(None, 3.6) is None
    with pytest.raises(ValueError):
        cost_per_million_tokens(10.0, -1)


def test_throughput_from_a_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rates = [50.0, 200.0, 220.0, 180.0]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"kind": "train", "step": i + 1, "loss": 1.0, "tokens": 100 * (i + 1), "tokens_per_second": r}) + "\n"
        for i, r in enumerate(rates)
    ))
    (run / "result.json").write_text(json.dumps({"tokens_per_second": 160.0, "train_tokens": 400, "train_seconds": 2.5,
                                                  "wall_seconds": 40.0}))
    t = throughput(run, price_per_hour=7.2)
    assert t["steady_tokens_per_second"] == 200.0  # median of the steps after the first
    assert t["overall_tokens_per_second"] == pytest.approx(10.0)
    assert t["cost_per_million_tokens"] == pytest.approx(7.2 / (3600 * 160) * 1e6)
    assert t["run_cost"] == pytest.approx(7.2 * 40 / 3600)
    assert t["mfu"] is None
    with pytest.raises(FileNotFoundError, match="no result.json"):
        throughput(tmp_path / "missing")


WORKER_TITLE = WorkerMemory.TITLE + "-test"
_HOLD = "import time; b = bytearray({n}); b[::4096] = b'x' * len(b[::4096]); del b; time.sleep({s})"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM needs Linux /proc")
def test_worker_memory_sees_the_peak_of_train_workers_only(tmp_path):
    # a child titled like a Ray Train worker touches 120 MB, frees it and sleeps: the high-water mark keeps it;
    # a child with another title is ignored
    n = 120 * 2**20
    with track_worker_memory(interval=0.05) as mem:
        worker = subprocess.Popen([WORKER_TITLE, "-c", _HOLD.format(n=n, s=1.5)], executable=sys.executable)
        other = subprocess.Popen(["ray::IDLE", "-c", _HOLD.format(n=n, s=1.5)], executable=sys.executable)
        time.sleep(1.0)
        worker.wait()
        other.wait()
    assert mem.workers == 1 and worker.pid in mem.peak_bytes
    assert mem.peak_gb >= n / 2**30
    assert mem.total_peak_gb == mem.peak_gb
    with track_worker_memory() as none:
        pass
    assert none.peak_gb is None and none.workers == 0


# --- committed benchmark results








# --- display


def test_markdown_table():
    text = markdown_table([{"a": 1234567, "b": None, "c": 0.25}, {"a": 2, "b": "x|y", "c": 1e-5}], formats={"c": ".1%"})
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| 1,234,567 | – | 25.0% |"
    assert lines[3] == "| 2 | x\\|y | 0.0% |"
    assert markdown_table([]) == "(no rows)"


def test_plots_are_written(tmp_path):
    plot_lr_schedules({"cosine": lr_schedule("cosine", 1e-3, 20, 2)}, path=tmp_path / "lr.png", title="t")
    plot_lines([{"r": 4, "n": 10, "g": "a"}, {"r": 8, "n": 20, "g": "a"}, {"r": None, "n": 5, "g": "b"}], "r", "n",
               group="g", logx=True, path=tmp_path / "lines.png")
    plot_bars([{"k": "a", "v": 1.0}, {"k": "b", "v": None}], "k", ["v"], notes={"b": "out of memory"},
              path=tmp_path / "bars.png")
    for name in ("lr.png", "bars.png", "lines.png"):
        assert (tmp_path / name).stat().st_size > 5_000
