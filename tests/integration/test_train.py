"""Integration tests of `forgekit.train.finetune`: 2 CPU Ray workers, DeepSpeed ZeRO-2/3, LoRA and full.

Every run trains the tiny random model (tests/conftest.py) for a few steps. One local Ray cluster serves the
whole module (starting one costs ~10 s). The runs of their own (kill and resume, divergence, failures) are in
test_train_recovery.py. Continuing from an adapter or from full weights (stage 2's first evaluation equals stage 1's
at its best checkpoint) is the continue-from-checkpoint cookbook's test (tests/notebooks), and from an adapter on
object storage test_remote_run.py's.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from forgekit.runs import list_checkpoints, read_metrics

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "forgekit.cli"]


def config(tiny_model_dir: Path, data: dict, out: Path, **extra) -> dict:
    cfg = {
        "model_id": str(tiny_model_dir),
        "train_path": str(data["train"]),
        "valid_path": str(data["valid"]),
        "context_length": 256,
        "num_devices": 2,
        "train_batch_size_per_device": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 6,
        "learning_rate": 1e-2,
        "num_warmup_steps": 0,
        "lr_scheduler_type": "constant",
        "deepspeed": {"config_path": str(REPO / "deepspeed_configs" / "zero_2.json")},
        "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 3},
        "num_checkpoints_to_keep": 2,
        "output_dir": str(out),
    }
    cfg.update(extra)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
MATRIX = [("zero_2", True), ("zero_3", True), ("zero_2", False), ("zero_3", False)]
STOPS = ["\nUser:", "###"]  # a run's generation_config.stopping_sequences


@pytest.fixture(scope="module")
def runs(ray_cluster, tiny_model_dir, data, tmp_path_factory) -> dict[tuple[str, bool], dict]:
    """The 2-worker matrix {ZeRO-2, ZeRO-3} x {LoRA, full}, trained once for the module."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    out = {}
    for stage, lora in MATRIX:
        root = tmp_path_factory.mktemp(f"{stage}-{'lora' if lora else 'full'}")
        cfg = config(tiny_model_dir, data, root / "runs",
                     deepspeed={"config_path": str(REPO / "deepspeed_configs" / f"{stage}.json")},
                     **({"lora_config": LORA} if lora else {"learning_rate": 3e-3}),
                     # the ZeRO-3 full run saves weights only (an 8B full fine-tune's disk-saving option)
                     save_optimizer_state=(stage, lora) != ("zero_3", False),
                     # one run of the matrix records steps 2-3 with the PyTorch profiler (forgekit.profiling)
                     # (not the ZeRO-2 LoRA run: other tests rerun its config as their reference)
                     **({"profile_steps": [2, 3]} if (stage, lora) == ("zero_3", True) else {}),
                     # the ZeRO-3 runs (adapter and full weights) save stopping sequences with their checkpoints
                     **({"generation_config": {"stopping_sequences": STOPS}} if stage == "zero_3" else {}),
                     # the ZeRO-2 full run logs to TensorBoard as well
                     **({"logger": {"provider": "tensorboard"}} if (stage, lora) == ("zero_2", False) else {}))
        out[(stage, lora)] = finetune(load_config(cfg), progress=False)
    return out


@pytest.mark.parametrize("lora", [True, False])
def test_stopping_sequences_travel_with_every_checkpoint_to_generation(runs, lora):
    from forgekit.generate import load_for_generation
    from forgekit.runs import list_checkpoints

    result = runs[("zero_3", lora)]
    for ckpt in list_checkpoints(result["run_dir"]):
        assert json.loads((ckpt / "generation_config.json").read_text())["stop_strings"] == STOPS, ckpt
    model, _ = load_for_generation(result["best_checkpoint"])
    assert model.generation_config.stop_strings == STOPS


def test_tensorboard_logger_writes_the_training_curves(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(runs[("zero_2", False)]["run_dir"])
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in read_metrics(run_dir, "train")]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in read_metrics(run_dir, "train")], abs=1e-4)
    assert "eval/loss" in events.Tags()["scalars"]


def test_profile_steps_writes_a_profile_of_those_steps(runs):
    run_dir = Path(runs[("zero_3", True)]["run_dir"])
    summary = json.loads((run_dir / "profile" / "summary.json").read_text())
    assert summary["steps"] == [2, 3]
    assert 0 < summary["wall_seconds"] and summary["seconds_per_step"] == pytest.approx(summary["wall_seconds"] / 2, rel=1e-3)
    assert "gpu_idle_fraction" not in summary  # CPU workers: no device timeline
    ops = (run_dir / "profile" / "ops.txt").read_text()
    assert "aten::mm" in ops or "aten::addmm" in ops  # the matrix products of the profiled steps
    with gzip.open(run_dir / "profile" / "trace.json.gz", "rt") as f:
        assert json.load(f)["traceEvents"]
    assert [r["step"] for r in read_metrics(run_dir, "train") if r.get("profiled")] == [2, 3]
    # the other runs of the matrix were not profiled
    assert not (Path(runs[("zero_2", True)]["run_dir"]) / "profile").exists()


def test_busy_time_is_the_union_of_intervals():
    from forgekit.profiling import busy_time_us

    assert busy_time_us([]) == 0
    assert busy_time_us([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25  # overlaps counted once, gaps not at all


@pytest.mark.parametrize("stage,lora", MATRIX, ids=[f"{s}-{'lora' if l else 'full'}" for s, l in MATRIX])
def test_two_workers_train_and_write_the_run_directory(runs, stage, lora):
    result = runs[(stage, lora)]
    run_dir = Path(result["run_dir"])
    train = read_metrics(run_dir, "train")
    evals = read_metrics(run_dir, "eval")
    losses = [r["loss"] for r in train]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(x) for x in losses)
    # the same 8 examples every step: the loss must fall (LoRA r=8 on a random 3M model moves more slowly)
    assert losses[-1] < losses[0] - (0.25 if lora else 0.5), losses
    assert [r["step"] for r in evals] == [0, 3, 6]  # baseline, then every 3 steps
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert all(r["tokens"] > 0 and r["tokens_per_second"] > 0 for r in train)
    from forgekit.hardware import cpu_has_bf16

    expected = "bf16-autocast" if cpu_has_bf16() else "fp32"  # precision auto on CPU workers
    assert result["world_size"] == 2 and result["precision"] == expected and result["steps"] == 6
    assert result["first_eval_loss"] == evals[0]["eval_loss"]
    assert result["best_eval_loss"] == min(r["eval_loss"] for r in evals if r["step"] > 0)  # not the baseline
    assert result["train_tokens"] == train[-1]["tokens"]
    # ZeRO-3's "auto" buckets hold one decoder layer (perf.zero3_buckets); ZeRO-2 leaves them to transformers
    levers = json.loads((run_dir / "result.json").read_text())["levers"]
    assert (levers.get("reduce_bucket_size", 0) > 0) == (stage == "zero_3"), levers
    assert levers["pad_to_multiple_of"] == 64  # CPU workers: few batch shapes (config.pad_to_multiple_of)
    assert levers["supervised_logits"] is True  # perf.supervised_logits_only: no Liger on a CPU
    # checkpoints: the 2 best by eval loss kept, published under checkpoints/, HF format + tokenizer
    names = [c.name for c in list_checkpoints(run_dir)]
    assert names == ["step-000003", "step-000006"]
    assert Path(result["best_checkpoint"]).name == "step-000006"
    best = Path(result["best_checkpoint"])
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (best / weights).is_file() and (best / "tokenizer_config.json").is_file()
    assert (best / "chat_template.jinja").is_file() or "chat_template" in json.loads((best / "tokenizer_config.json").read_text())
    assert not any(p.name.startswith(".tmp") for p in (run_dir / "checkpoints").iterdir())
    assert json.loads((run_dir / "result.json").read_text())["best_checkpoint"] == result["best_checkpoint"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["max_steps"] == 6


def _eval_loss(model, tokenizer, data) -> float:
    """Mean loss over the assistant tokens of the validation file, computed with plain transformers."""
    import torch

    from forgekit.data import read_examples
    from forgekit.formats import render, tokenize_rendered

    total, count = 0.0, 0
    for ex in read_examples(str(data["valid"])):
        ids, labels = tokenize_rendered(render(ex.messages, tokenizer, None), tokenizer)
        ids, labels = torch.tensor([ids]), torch.tensor([labels])
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        n = int((labels[:, 1:] != -100).sum())
        total, count = total + out.loss.item() * n, count + n
    return total / count


@pytest.mark.parametrize("stage", ["zero_2", "zero_3"])
def test_saved_adapter_loads_in_plain_peft(runs, data, tiny_model_dir, stage, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = runs[(stage, True)]
    best = Path(result["best_checkpoint"])
    tok = AutoTokenizer.from_pretrained(best)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_loss = _eval_loss(base, tok, data)
    model = PeftModel.from_pretrained(base, best).eval()
    loss = _eval_loss(model, tok, data)
    assert loss < base_loss - 0.1
    assert loss == pytest.approx(result["best_eval_loss"], rel=2e-3)
    if stage == "zero_2":  # `forgekit merge` of the run's checkpoint: plain transformers, the same loss
        from forgekit.export import merge_checkpoint

        merge_checkpoint(best, tmp_path / "merged", dtype="float32")
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        assert _eval_loss(merged, AutoTokenizer.from_pretrained(tmp_path / "merged"), data) == pytest.approx(loss, abs=1e-5)


@pytest.mark.parametrize("stage", ["zero_2", "zero_3"])
def test_saved_full_model_loads_in_plain_transformers(runs, data, stage):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = runs[(stage, False)]
    best = Path(result["best_checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(best).eval()
    loss = _eval_loss(model, AutoTokenizer.from_pretrained(best), data)
    assert loss == pytest.approx(result["best_eval_loss"], rel=2e-3)


def test_weights_only_checkpoints_are_smaller_and_refuse_to_resume(runs):
    from forgekit.config import ConfigError
    from forgekit.train import _last_checkpoint
    from forgekit.worker.checkpoints import has_optimizer_state

    full = Path(runs[("zero_2", False)]["best_checkpoint"])
    weights_only_run = Path(runs[("zero_3", False)]["run_dir"])
    weights_only = Path(runs[("zero_3", False)]["best_checkpoint"])
    assert has_optimizer_state(full) and not has_optimizer_state(weights_only)

    def size(d: Path) -> int:
        return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())

    assert size(weights_only) < size(full) / 2  # full fine-tune with Adam: weights + fp32 master + 2 moments
    assert _last_checkpoint(Path(runs[("zero_2", False)]["run_dir"])) == str(full)
    with pytest.raises(ConfigError) as err:
        _last_checkpoint(weights_only_run)
    assert "save_optimizer_state" in str(err.value) and "initial_base_model_ckpt_path" in str(err.value)


def test_cpu_bf16_autocast_trains_like_fp32(runs, ray_cluster, tiny_model_dir, data, tmp_path):
    """precision auto (the default) on CPU workers with bf16 instructions: autocast around the forward, fp32 weights;
    the same run as precision: fp32 within bf16 noise."""
    from safetensors.torch import load_file

    from forgekit.config import load_config
    from forgekit.hardware import cpu_has_bf16
    from forgekit.train import finetune

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 instructions (AMX / AVX512-BF16)")
    bf16 = runs[("zero_2", True)]  # the default precision
    fp32 = finetune(load_config(config(tiny_model_dir, data, tmp_path / "runs", lora_config=LORA, precision="fp32")),
                    progress=False)
    assert bf16["precision"] == "bf16-autocast" and fp32["precision"] == "fp32"
    levers = json.loads((Path(bf16["run_dir"]) / "result.json").read_text())["levers"]
    assert levers["lora_fp32_sums"] > 0  # perf.lora_sum_in_fp32 applied on the workers
    a, b = _train_losses(Path(fp32["run_dir"])), _train_losses(Path(bf16["run_dir"]))
    assert a.keys() == b.keys() == set(range(1, 7))
    assert a[1] != b[1]  # the forward really ran in bf16 ...
    assert all(b[s] == pytest.approx(a[s], rel=0.02) for s in a)  # ... and computed the same function
    assert b[6] < b[1] - 0.25
    weights = load_file(Path(bf16["best_checkpoint"]) / "adapter_model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}  # the weights stayed fp32


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir, "train")}


@pytest.mark.parametrize("preset", ["zero_3_offload_optim", "zero_3_offload_optim+param"])
def test_offload_presets_train_like_zero_3(runs, tiny_model_dir, data, tmp_path, preset):
    """The two offload presets (optimizer, optimizer + parameters on the CPU) train the ZeRO-3 full fine-tune of
    the matrix step for step: offloading moves tensors, not the math."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    reference = runs[("zero_3", False)]
    cfg = config(tiny_model_dir, data, tmp_path / "runs", learning_rate=3e-3, save_optimizer_state=False,
                 deepspeed={"config_path": str(REPO / "deepspeed_configs" / f"{preset}.json")}, max_steps=2)
    result = finetune(load_config(cfg), progress=False)
    want, got = _train_losses(Path(reference["run_dir"])), _train_losses(Path(result["run_dir"]))
    assert sorted(got) == [1, 2]  # step 2's loss is computed with weights the offloaded optimizer updated
    for step in (1, 2):
        assert got[step] == pytest.approx(want[step], abs=1e-4), (step, got, want)
    assert (Path(result["best_checkpoint"]) / "model.safetensors").is_file()


def test_zero_0_preset_trains_like_zero_2(runs, tiny_model_dir, data, tmp_path):
    """deepspeed_configs/zero_0.json (DeepSpeed without ZeRO: plain data parallelism) trains the ZeRO-2 full
    fine-tune of the matrix step for step: partitioning the optimizer state moves it, not the math."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    reference = runs[("zero_2", False)]
    cfg = config(tiny_model_dir, data, tmp_path / "runs", learning_rate=3e-3, save_optimizer_state=False,
                 deepspeed={"config_path": str(REPO / "deepspeed_configs" / "zero_0.json")}, max_steps=2)
    result = finetune(load_config(cfg), progress=False)
    want, got = _train_losses(Path(reference["run_dir"])), _train_losses(Path(result["run_dir"]))
    assert sorted(got) == [1, 2]
    for step in (1, 2):
        assert got[step] == pytest.approx(want[step], abs=1e-4), (step, got, want)
    assert (Path(result["best_checkpoint"]) / "model.safetensors").is_file()


def test_a_worker_lost_after_a_checkpoint_is_restarted_by_ray_and_resumes(runs, tiny_model_dir, data, tmp_path):
    """Ray's FailureConfig (max_failures 1): a worker dies after step 3's checkpoint; Ray restarts the worker group,
    which resumes from that checkpoint, and the run ends exactly where an uninterrupted run does.

    Each worker acts as the only worker of its own node (FORGEKIT_FAULTS=node_per_worker), as on a multi-node
    cluster with shared storage: a checkpoint is gathered from both nodes' parts, the second node being a second
    slower, and it must never be visible without that node's part (its ZeRO optimizer shard and RNG state, which
    the resume needs).
    """
    reference = runs[("zero_2", True)]  # the same config, run without interruption
    path = write_config(tmp_path / "cfg.yaml", config(tiny_model_dir, data, tmp_path / "runs", lora_config=LORA))
    env = {**os.environ, "FORGEKIT_MAX_FAILURES": "1", "FORGEKIT_FAULTS": "die_after_step=3,node_per_worker=1"}
    env.pop("RAY_ADDRESS", None)  # its own cluster, whose workers inherit the variables
    run_dir = tmp_path / "runs" / Path(reference["run_dir"]).name
    proc = subprocess.Popen([*CLI, "finetune", str(path)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_seen: dict[str, set[str]] = {}  # each checkpoint's files when it first appeared
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        for ckpt in list_checkpoints(run_dir):
            if ckpt.name not in first_seen:
                first_seen[ckpt.name] = {f.name for f in ckpt.rglob("*")}
        time.sleep(0.01)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, stderr[-3000:]
    assert sorted(first_seen) == ["step-000003", "step-000006"]
    for name, files in first_seen.items():
        assert {"trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"} <= files, (name, sorted(files))
        assert any("zero_pp_rank_1_" in f for f in files) and any("zero_pp_rank_0_" in f for f in files), name
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # nothing left from the gathering
    assert (run_dir / ".forgekit-test-died").exists(), "the worker was meant to die once"
    want, got = _train_losses(Path(reference["run_dir"])), _train_losses(run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["final_eval_loss"] == pytest.approx(reference["final_eval_loss"], abs=1e-5)
