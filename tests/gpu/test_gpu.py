"""The GPU tier (``pytest -m gpu tests/gpu/test_gpu.py`` on a CUDA host): forgekit's fast paths on the device, through the real path.

The notebooks' ``gpu`` cells run in ``tests/gpu/test_gpu_notebooks.py`` (the same tier; it needs the notebook kernel's
wheels from ``benchmarks/make_test_wheels.sh`` on an offline host).

- The attention paths forgekit picks for packed rows (``forgekit_varlen``: PyTorch's variable-length
  FlashAttention; ``flex_attention``) keep the examples of a packed row apart in bf16 on the GPU: every
  example's logits inside the row match the example run alone, within a tolerance derived from bf16 and
  checked to be tight enough to catch contamination (a control that lets examples see each other fails it).
- ``forgekit.train.finetune`` on a tiny model through Ray + DeepSpeed ZeRO-2 (LoRA) and ZeRO-3 (full):
  runs, learns, checkpoints, reports GPU figures.
- Packed == unpacked through ``finetune``: with the whole data set in one optimizer step, the logged loss of
  step 1 (before any update) and of step 2 (after one update, so the gradients agree too) match.
- NEFTune (``neftune_noise_alpha``) changes the first training step's loss and not the evaluation before it.
- A diverging ZeRO-2 bf16 run (DeepSpeed's overflow scan off) stops at the step its loss stopped being finite.
- Resume: a run killed after its first checkpoint and started again continues with the same losses as a
  run that was never interrupted.

The tiny model is built from the embedded SmolLM2's config and tokenizer; on a host without the embedded
model, point ``FORGEKIT_TINY_SOURCE`` at a folder with its ``config.json`` and tokenizer files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[2]
# bf16 keeps 8 significant bits: one rounding is at most 2**-9 relative. Logits come out of a few layers of
# bf16 matmuls (each output summed in fp32, rounded once to bf16) whose kernels differ between the paths
# compared (dense-mask SDPA, FlashAttention varlen, FlexAttention), so equal math differs by a few roundings
# of each intermediate. The tolerance is 16 roundings of the largest logit, 2**-5 of it; the contamination
# control below must exceed it, so the test can fail.
BF16_LOGIT_TOL = 2.0**-5


def _random_llama(attn: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=2048, use_cache=False,
                      initializer_range=0.1)  # larger than default, so attending elsewhere shows in the logits
    model = LlamaForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
    model.set_attn_implementation(attn)
    return model


def _examples(lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 1000, (n,), generator=g).cuda() for n in lengths]


@pytest.mark.parametrize("attn", ["varlen", "varlen+boundaries", "flex_attention", "sdpa"])
def test_packed_row_logits_equal_each_example_alone_in_bf16(attn):
    from forgekit import perf

    lengths = [300, 17, 1024, 1, 433, 129]
    ex = _examples(lengths)
    name = perf.pick_attention(attn.split("+")[0], packing=True, on_gpu=True)
    ids = torch.cat(ex)[None]
    pos = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    extra = perf.varlen_kwargs(pos.cpu()) if attn.endswith("boundaries") else {}
    extra = {k: v.cuda() if torch.is_tensor(v) else v for k, v in extra.items()}
    with torch.no_grad():
        ref = _random_llama("sdpa")
        alone = [ref(input_ids=x[None]).logits[0].float() for x in ex]
        model = _random_llama(name)
        packed = model(input_ids=ids, position_ids=pos, **extra).logits[0].float()
        # control: the KV cache switches transformers' packed-row detection off: examples see each other
        leaky = ref(input_ids=ids, position_ids=pos, use_cache=True).logits[0].float()
    scale = max(float(a.abs().max()) for a in alone)
    start, worst, worst_leak = 0, 0.0, 0.0
    for a, n in zip(alone, lengths):
        worst = max(worst, float((packed[start:start + n] - a).abs().max()))
        worst_leak = max(worst_leak, float((leaky[start:start + n] - a).abs().max()))
        start += n
    assert worst <= BF16_LOGIT_TOL * scale, f"{attn}: max |logit diff| {worst:.4f} vs scale {scale:.3f}"
    assert worst_leak > BF16_LOGIT_TOL * scale, "the control should show contamination; the tolerance is too loose"


def test_varlen_gradients_match_sdpa_in_bf16():
    from forgekit import perf

    lengths = [700, 64, 900, 5]
    ex = _examples(lengths)
    ids = torch.cat(ex)[None]
    pos = torch.cat([torch.arange(n, device="cuda") for n in lengths])[None]
    grads = {}
    for attn in ("sdpa", perf.register_varlen_attention()):
        model = _random_llama(attn)
        model(input_ids=ids, position_ids=pos, labels=ids).loss.backward()
        grads[attn] = model.model.layers[0].self_attn.q_proj.weight.grad.float()
    a, b = grads.values()
    rel = float((a - b).norm() / a.norm())
    assert rel < 2e-2, f"relative gradient difference {rel:.4f}"


def _counting_data(path: Path, n: int = 48) -> Path:
    rows = []
    for i in range(1, n + 1):
        rows.append({"messages": [{"role": "user", "content": f"Count to {i % 24 + 1}."},
                                  {"role": "assistant", "content": " ".join(str(k) for k in range(i % 24 + 1))}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp: Path, model_dir: Path, **over) -> Path:
    import yaml

    cfg = {
        "model_id": str(model_dir),
        "train_path": str(_counting_data(tmp / "train.jsonl")),
        "context_length": 256,
        "num_devices": 1,
        "use_gpu": True,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "num_warmup_steps": 0,
        "lora_config": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "deepspeed": {"config_path": str(REPO / "deepspeed_configs" / "zero_2.json")},
        "output_dir": str(tmp / "runs"),
        "logging_steps": 1,
        **over,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("zero", "lora"), [(2, True), (3, False)])
def test_finetune_through_ray_and_deepspeed(tmp_path, tiny_model_dir, zero, lora):
    from forgekit.runs import list_checkpoints, read_metrics
    from forgekit.train import finetune

    over = {"deepspeed": {"config_path": str(REPO / "deepspeed_configs" / f"zero_{zero}.json")},
            "packing": True, "max_steps": 8, "train_batch_size_per_device": 2, "gradient_accumulation_steps": 1,
            "run_name": f"zero{zero}", "profile_steps": [3, 5]}
    if not lora:
        over |= {"lora_config": None, "learning_rate": 1e-3}
    result = finetune(_config(tmp_path, tiny_model_dir, **over), progress=False)
    train = read_metrics(result["run_dir"], kind="train")
    assert result["steps"] == 8 and len(train) == 8
    assert all(r["peak_memory_gb"] > 0 and r["tokens_per_second"] > 0 for r in train)
    # MFU is reported on GPUs forgekit knows the peak of (forgekit.flops: H100, H200, A100, ...), to 4 significant
    # digits (a 2-layer model reaches ~1e-5)
    from forgekit.flops import peak_tflops

    if peak_tflops(torch.cuda.get_device_name()):
        assert all(0 < r["mfu"] < 1 for r in train) and 0 < result["mfu"] < 1
    assert train[-1]["loss"] < train[0]["loss"]
    # profile_steps on a GPU: the device timeline gives the share of the steps the GPU waited for the host
    summary = json.loads((Path(result["run_dir"]) / "profile" / "summary.json").read_text())
    assert summary["steps"] == [3, 5] and 0 < summary["gpu_busy_seconds"] <= summary["wall_seconds"]
    assert 0 <= summary["gpu_idle_fraction"] < 1
    ckpt = list_checkpoints(result["run_dir"])[-1]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    assert (ckpt / weights).exists(), sorted(p.name for p in ckpt.iterdir())


def test_neftune_noise_reaches_training_and_not_evaluation(tmp_path, tiny_model_dir):
    """neftune_noise_alpha on the GPU path (ZeRO-2, bf16, LoRA): the noise changes the loss of the first step
    (computed before any update, so only the noise can change it) and leaves the evaluation before training as it is."""
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    first = {}
    for alpha in (None, 15.0):
        d = tmp_path / f"alpha-{alpha}"
        d.mkdir()
        over = {"neftune_noise_alpha": alpha, "max_steps": 1, "train_batch_size_per_device": 8,
                "gradient_accumulation_steps": 1, "run_name": "n", "valid_path": str(_counting_data(d / "valid.jsonl"))}
        result = finetune(_config(d, tiny_model_dir, **over), progress=False)
        first[alpha] = (read_metrics(result["run_dir"], kind="eval")[0], read_metrics(result["run_dir"], kind="train")[0])
    (eval_off, train_off), (eval_on, train_on) = first[None], first[15.0]
    assert eval_on["step"] == eval_off["step"] == 0 and train_on["step"] == train_off["step"] == 1
    assert eval_on["eval_loss"] == pytest.approx(eval_off["eval_loss"], rel=1e-6)  # same kernels, same numbers
    assert abs(train_on["loss"] - train_off["loss"]) > 1e-3, (train_on["loss"], train_off["loss"])


def test_a_diverging_zero2_bf16_run_stops_at_that_step(tmp_path, tiny_model_dir):
    """ZeRO-2's bf16 overflow scan is off (forgekit's default), so forgekit's own check must stop the run."""
    import math

    from forgekit.runs import read_metrics
    from forgekit.train import TrainingDiverged, finetune

    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: .*Lower learning_rate") as info:
        finetune(_config(tmp_path, tiny_model_dir, learning_rate=1e30, max_steps=6, train_batch_size_per_device=2,
                         gradient_accumulation_steps=1, run_name="d"), progress=False)
    rows = read_metrics(tmp_path / "runs" / "d", kind="train")
    assert len(rows) < 6 and str(rows[-1]["step"]) in str(info.value)
    assert not (math.isfinite(rows[-1]["loss"]) and math.isfinite(rows[-1]["grad_norm"]))


def test_packed_loss_equals_unpacked_loss_through_finetune(tmp_path, tiny_model_dir):
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    losses = {}
    for packing in (False, True):
        d = tmp_path / f"packing-{packing}"
        d.mkdir()
        # the whole data set in one optimizer step, two epochs: step 1 is the loss before any update,
        # step 2 the loss after one update (so the gradients must match too)
        over = {"packing": packing, "max_steps": 2, "train_batch_size_per_device": 64,
                "gradient_accumulation_steps": 1, "run_name": "p", "num_epochs": 2}
        result = finetune(_config(d, tiny_model_dir, **over), progress=False)
        losses[packing] = [r["loss"] for r in read_metrics(result["run_dir"], kind="train")]
    assert len(losses[True]) == len(losses[False]) == 2
    # one bf16 rounding of the mean loss is 2**-9 relative; allow four
    for a, b in zip(losses[False], losses[True]):
        assert b == pytest.approx(a, rel=2.0**-7)


def test_resume_after_kill_continues_like_an_uninterrupted_run(tmp_path, tiny_model_dir):
    from forgekit.runs import list_checkpoints, read_metrics
    from forgekit.train import finetune

    over = {"packing": True, "max_steps": 24, "train_batch_size_per_device": 2, "gradient_accumulation_steps": 1,
            "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 4}, "num_checkpoints_to_keep": 10}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = finetune(_config(tmp_path / "a", tiny_model_dir, run_name="r", **over), progress=False)
    uninterrupted = {r["step"]: r["loss"] for r in read_metrics(full["run_dir"], kind="train")}

    cfg_b = _config(tmp_path / "b", tiny_model_dir, run_name="r", **over)
    run_dir = tmp_path / "b" / "runs" / "r"
    code = f"from forgekit.train import finetune; finetune({str(cfg_b)!r}, progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list_checkpoints(run_dir):
        time.sleep(0.2)
    if proc.poll() is not None:
        pytest.fail(f"the run ended (rc={proc.returncode}) before it could be interrupted")
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray cluster and the worker: a lost machine
    proc.wait()
    assert not (run_dir / "result.json").exists()
    resumed = finetune(cfg_b, progress=False)
    rows = read_metrics(resumed["run_dir"], kind="train")
    assert resumed["steps"] == 24 and [r["step"] for r in rows] == list(range(1, 25))
    for r in rows:
        assert r["loss"] == pytest.approx(uninterrupted[r["step"]], rel=1e-3), r["step"]


@pytest.fixture(scope="module")
def bf16_lora_losses(tmp_path_factory, tiny_model_dir) -> list[float]:
    """The reference for the QLoRA runs: the same bf16 LoRA run on the unquantized base."""
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    tmp = tmp_path_factory.mktemp("bf16-lora")
    result = finetune(_config(tmp, tiny_model_dir, **QLORA_RUN, run_name="lora"), progress=False)
    return [r["loss"] for r in read_metrics(result["run_dir"], kind="train")]


QLORA_RUN = {"max_steps": 8, "train_batch_size_per_device": 4, "gradient_accumulation_steps": 1, "precision": "bf16"}


@pytest.mark.parametrize("zero", [2, 3])
def test_qlora_through_ray_and_deepspeed_follows_the_bf16_lora_run(tmp_path, tiny_model_dir, bf16_lora_losses, zero):
    """A 4-bit (nf4, double quantization) base with LoRA through `finetune` on one GPU: ZeRO-2 with bitsandbytes'
    uint8 storage, ZeRO-3 with bnb_4bit_quant_storage: bfloat16 (which ZeRO-3 can shard). It trains, its losses
    follow the bf16 LoRA run's loosely (the 4-bit weights differ from the bf16 ones by nf4's rounding), the
    checkpoint holds the adapter only, and `forgekit merge` puts it into the unquantized base."""
    from safetensors import safe_open

    from forgekit.export import merge_checkpoint
    from forgekit.runs import list_checkpoints, read_metrics
    from forgekit.train import finetune

    quant = {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
             "bnb_4bit_use_double_quant": True, **({"bnb_4bit_quant_storage": "bfloat16"} if zero == 3 else {})}
    over = {**QLORA_RUN, "quant_conf": quant, "run_name": f"qlora-zero{zero}",
            "deepspeed": {"config_path": str(REPO / "deepspeed_configs" / f"zero_{zero}.json")}}
    result = finetune(_config(tmp_path, tiny_model_dir, **over), progress=False)
    train = read_metrics(result["run_dir"], kind="train")
    losses = [r["loss"] for r in train]
    assert len(losses) == len(bf16_lora_losses) == 8
    assert losses[-1] < losses[0] - 0.1, losses
    assert losses[0] == pytest.approx(bf16_lora_losses[0], rel=0.05), (losses, bf16_lora_losses)  # before any update
    for q, ref in zip(losses, bf16_lora_losses):
        assert q == pytest.approx(ref, rel=0.2), (losses, bf16_lora_losses)
    assert all(r["peak_memory_gb"] > 0 for r in train)
    plan = json.loads((Path(result["run_dir"]) / "plan.json").read_text())
    assert plan["quantization"]["bits"] == 4 and plan["quantization"]["compute_dtype"] == "bfloat16"
    ckpt = list_checkpoints(result["run_dir"])[-1]
    assert not any(p.name.startswith("model") and p.suffix == ".safetensors" for p in ckpt.iterdir())
    with safe_open(ckpt / "adapter_model.safetensors", "pt") as f:
        assert all("lora_" in k for k in f.keys())  # noqa: SIM118 - safe_open has no __iter__
    info = merge_checkpoint(ckpt, tmp_path / "merged", dtype="float32")
    assert info["kind"] == "merged_lora" and info["max_abs_logit_diff"] < 1e-2, info
