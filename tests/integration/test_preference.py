"""Preference tuning through `forgekit.train.finetune`: Ray workers running TRL's DPOTrainer / KTOTrainer on the plan.

The tiny random model (tests/conftest.py) trains on a seeded house-format preference: the chosen answer lists its
steps ("Steps: 1. ... 2. ..."), the rejected one says the same in a sentence. Checked: at step 0 the policy is the
reference (DPO loss ln 2, rewards 0; LoRA and full); forgekit's first steps equal TRL's DPOTrainer run alone on the
same pairs and hyper-parameters; held-out reward accuracy rises well above 0.5; the other losses (IPO, SimPO, KTO)
and 2 workers with DeepSpeed ZeRO-2 run; bad data stops the run before any worker starts. DPO with `rpo_alpha`
(its step-0 loss ln 2 plus the chosen answers' NLL, zero margins) is the preference cookbook's test (tests/notebooks):
its dpo.yaml sets it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from forgekit.runs import read_metrics

REPO = Path(__file__).resolve().parents[2]
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.0}
ACTIONS = ["open Settings", "click Billing", "choose Refund", "enter the order number", "press Send", "sign in",
           "open Orders", "click Track", "reset the password", "check the email", "update the card", "save"]
TOPICS = ["refund", "invoice", "password", "delivery", "login", "card", "order", "account", "plan", "receipt"]


def pairs(n: int, seed: int, topics: list[str]) -> list[dict]:
    """TRL conversational pairs: the same two actions as numbered steps (chosen) or one sentence (rejected)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(ACTIONS, 2)
        prompt = [{"role": "user", "content": f"How do I fix my {rng.choice(topics)} problem?"}]
        out.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"Steps: 1. {a} 2. {b}"}],
                    "rejected": [{"role": "assistant", "content": f"You should {a} and then {b}."}]})
    return out


def write(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pref")
    kto = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"}
           for p in pairs(8, 3, TOPICS) for k in ("chosen", "rejected")]
    return {"train": write(root / "train.jsonl", pairs(32, 0, TOPICS[:6])),
            "valid": write(root / "valid.jsonl", pairs(16, 1, TOPICS[6:])),  # held out: other topics and seeds
            "kto": write(root / "kto.jsonl", kto)}


def config(tiny_model_dir: Path, data: dict, out: Path, **extra) -> dict:
    cfg = {"model_id": str(tiny_model_dir), "train_path": data["train"], "valid_path": data["valid"],
           "task": "preference_tuning", "num_devices": 1, "train_batch_size_per_device": 4,
           "gradient_accumulation_steps": 1, "max_steps": 3, "learning_rate": 5e-3, "lr_scheduler_type": "constant",
           "num_warmup_steps": 0, "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 3},
           "output_dir": str(out), "preference_tuning_config": {"beta": 0.1}}
    cfg.update(extra)
    return cfg


def train(cfg: dict) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) of the run's metrics.jsonl."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    rows = read_metrics(finetune(load_config(cfg), progress=False)["run_dir"])
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "eval"]


@pytest.fixture(scope="module")
def lora_run(ray_cluster, tiny_model_dir, data, tmp_path_factory):
    """LoRA DPO, one worker, 12 steps: the reference run of the TRL comparison and the learning check."""
    return train(config(tiny_model_dir, data, tmp_path_factory.mktemp("lora"), lora_config=LORA, max_steps=12,
                        checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 12}))


def assert_policy_is_reference(train_rows: list[dict], eval_rows: list[dict]) -> None:
    first, baseline = train_rows[0], eval_rows[0]
    assert first["step"] == 1 and baseline["step"] == 0
    # the first step's loss is computed before its update; the baseline evaluation before any
    for loss in (first["loss"], baseline["eval_loss"]):
        assert loss == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
        assert baseline[f"eval_{key}"] == pytest.approx(0.0, abs=1e-6), key


def test_lora_dpo_starts_at_ln2_with_zero_rewards(lora_run):
    assert_policy_is_reference(*lora_run)


def test_full_dpo_starts_at_ln2_with_zero_rewards(ray_cluster, tiny_model_dir, data, tmp_path):
    train_rows, eval_rows = train(config(tiny_model_dir, data, tmp_path, max_steps=2, learning_rate=1e-3,
                                         checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 2}))
    assert_policy_is_reference(train_rows, eval_rows)
    assert train_rows[-1]["loss"] < math.log(2)  # and the full weights learn


def test_held_out_reward_accuracy_rises_well_above_chance(lora_run):
    train_rows, eval_rows = lora_run
    assert eval_rows[0]["eval_rewards/accuracies"] == 0.0  # ties: no pair is preferred yet
    final = eval_rows[-1]
    assert final["step"] == 12 and final["eval_rewards/accuracies"] >= 0.9, final
    assert final["eval_rewards/margins"] > 0 and final["eval_loss"] < 0.5
    assert all(k in train_rows[-1] for k in ("rewards/accuracies", "rewards/margins", "logps/chosen"))


def test_first_steps_equal_trl_dpo_trainer_alone(lora_run, tiny_model_dir, data, tmp_path):
    """TRL's DPOTrainer on the same conversational pairs (tokenized by TRL itself), model, LoRA init, batches and
    hyper-parameters: the same loss and rewards, step by step, in fp32."""
    import torch
    import transformers
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    transformers.set_seed(42)  # as the worker: seed, load, wrap (LoRA's A matrices are drawn here)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(**LORA, task_type="CAUSAL_LM"))
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=5e-3,
                     lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", seed=42, data_seed=42,
                     beta=0.1, max_length=512, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     bf16=False, gradient_checkpointing=False, disable_tqdm=True)
    trl_trainer = DPOTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                             train_dataset=load_dataset("json", data_files=data["train"], split="train"))
    trl_trainer.train()
    trl_rows = [r for r in trl_trainer.state.log_history if "loss" in r]
    ours = lora_run[0][:3]
    assert [r["step"] for r in ours] == [r["step"] for r in trl_rows] == [1, 2, 3]
    for mine, theirs in zip(ours, trl_rows):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-4), (mine["step"], key, mine[key], theirs[key])
    assert ours[-1]["loss"] < ours[0]["loss"]  # the steps compared did move the policy


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_ipo_and_reference_free_simpo_train_on_two_zero2_workers(ray_cluster, tiny_model_dir, data, tmp_path,
                                                                  loss_type):
    pref = {"beta": 2.0 if loss_type == "simpo" else 0.1, "loss_type": loss_type}
    train_rows, eval_rows = train(config(
        tiny_model_dir, data, tmp_path, num_devices=2, lora_config=LORA, max_steps=4,
        checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 4},
        deepspeed={"config_path": str(REPO / "deepspeed_configs" / "zero_2.json")}, preference_tuning_config=pref))
    assert len(train_rows) == 4 and all(math.isfinite(r["loss"]) for r in train_rows)
    if loss_type == "ipo":  # (ipo_delta - 1/(2 beta))^2 at a zero delta: 25
        assert train_rows[0]["loss"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-5)
    else:  # -log sigmoid(-gamma) at step 0 is not ln 2: SimPO's reward is the policy's, not a log-ratio
        assert train_rows[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"]  # on the held-out pairs too
    if loss_type == "ipo":  # (SimPO's logged rewards are summed log-probs against a constant: not comparable)
        assert eval_rows[-1]["eval_rewards/accuracies"] > 0.9 > eval_rows[0]["eval_rewards/accuracies"]


def test_kto_trains_on_labelled_completions(ray_cluster, tiny_model_dir, data, tmp_path):
    train_rows, _ = train(config(tiny_model_dir, data, tmp_path, train_path=data["kto"], valid_path=None,
                                 lora_config=LORA, max_steps=2, preference_tuning_config={"loss_type": "kto"}))
    assert len(train_rows) == 2 and all(math.isfinite(r["loss"]) for r in train_rows)
    assert train_rows[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0): policy == reference, KL 0


def test_bad_pairs_stop_the_run_before_any_worker(ray_cluster, tiny_model_dir, data, tmp_path):
    from forgekit.data import DataError

    bad = write(tmp_path / "bad.jsonl", pairs(2, 5, TOPICS) + [{"prompt": pairs(1, 6, TOPICS)[0]["prompt"],
                                                                "chosen": [{"role": "user", "content": "x"}],
                                                                "rejected": pairs(1, 6, TOPICS)[0]["rejected"]}])
    with pytest.raises(DataError) as e:
        train(config(tiny_model_dir, data, tmp_path / "runs", train_path=bad))
    assert f"{bad}:3: 'chosen' has no assistant turn at its end" in str(e.value)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))


def test_a_dpo_worker_lost_after_a_checkpoint_resumes_to_the_uninterrupted_losses(ray_cluster, tiny_model_dir, data,
                                                                                   tmp_path):
    """Ray's FailureConfig (max_failures 1): the worker dies after step 3's checkpoint; the restarted worker resumes
    from it (adapter, optimizer, RNG, data position, cached reference log-probs) and steps 4-6 log the losses of a
    run that was never interrupted."""
    import os
    import subprocess
    import sys

    import yaml

    from forgekit.config import load_config
    from forgekit.train import finetune

    every = {"max_steps": 6, "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 3}}
    reference = finetune(load_config(config(tiny_model_dir, data, tmp_path / "ref", lora_config=LORA, **every)),
                         progress=False)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config(tiny_model_dir, data, tmp_path / "runs", lora_config=LORA, **every)))
    env = {**os.environ, "FORGEKIT_MAX_FAILURES": "1", "FORGEKIT_FAULTS": "die_after_step=3"}
    env.pop("RAY_ADDRESS", None)  # its own cluster, whose workers inherit the variables
    proc = subprocess.run([sys.executable, "-m", "forgekit.cli", "finetune", str(path)], check=False, cwd=tmp_path,
                          env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("result.json")]
    assert (run_dir / ".forgekit-test-died").exists(), "the worker was meant to die once"

    def losses(run: Path, kind: str, key: str) -> dict[int, float]:
        return {r["step"]: r[key] for r in read_metrics(run, kind)}

    want, got = losses(Path(reference["run_dir"]), "train", "loss"), losses(run_dir, "train", "loss")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    want_eval, got_eval = (losses(r, "eval", "eval_loss") for r in (Path(reference["run_dir"]), run_dir))
    assert got_eval[6] == pytest.approx(want_eval[6], abs=1e-5), (got_eval, want_eval)
