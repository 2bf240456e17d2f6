"""The GPU tier of preference tuning (``pytest -m gpu tests/gpu/test_gpu_preference.py`` on a CUDA host): DPO on the device.

``forgekit.train.finetune`` with ``task: preference_tuning`` on the tiny model (tests/conftest.py), bf16, one GPU, through
Ray + DeepSpeed: LoRA on the ZeRO-2 preset, full fine-tuning on the ZeRO-3 preset (with the reference log-probs
precomputed, forgekit's default, and computed in every step by TRL's sharded reference copy). The data is the CPU
tier's learnable preference (tests/integration/test_preference.py: numbered steps chosen, one sentence rejected).
Checked:

- at step 0 the policy is the reference: the first step's loss (computed before its update) and the baseline
  evaluation's are ln 2, the rewards 0, within what bf16 allows (``REWARD_TOL``);
- it learns: the training loss falls, and on held-out pairs (other topics, other seeds) the reward accuracy ends
  well above chance with a positive margin;
- the run directory is complete: resolved config, data manifest, result.json, metrics.jsonl whose training rows
  carry the rewards, log-probs and GPU figures and whose evaluations carry their ``eval_`` rewards, and the last
  checkpoint's weights (the adapter, or the full model gathered from the ZeRO-3 shards).

About 2-3 minutes on one H100 (three runs, one Ray cluster). Run it in a pytest process of its own, as ``make test``
runs each integration file (a Ray Train run after another module's cluster was shut down in the same process dies).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.integration.test_preference import LORA, TOPICS, pairs, write

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[2]
BETA = 0.1
PRECISION = "bf16"
# At step 0 policy and reference are the same weights, but their log-probs come from different batches (the
# reference pass runs over the pairs in order before training, training draws shuffled batches, so the padding and
# the kernels' shapes differ) or from a differently sharded copy (ZeRO-3's reference). A reward is
# beta * sum(log p - log p_ref) over an answer's ~10-30 tokens; one bf16 rounding of each token's log-prob
# (|log p| ~ ln 49152 ~ 10.8, so 2**-9 * 10.8 ~ 0.02 nats), in independent directions over 30 tokens, is
# ~0.02 * sqrt(30) ~ 0.12 nats: 0.012 after beta. Rewards within 0.02; the loss, ln 2 - margin / 2 near a zero
# margin, within 0.01. What training moves is far larger (final margins > 0.5: below).
REWARD_TOL = 0.02
LOSS_TOL = 0.01
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pref-gpu")
    return {"train": write(root / "train.jsonl", pairs(32, 0, TOPICS[:6])),
            "valid": write(root / "valid.jsonl", pairs(16, 1, TOPICS[6:]))}  # held out: other topics and seeds


def _config(tiny_model_dir: Path, data: dict, out: Path, zero: int, **extra) -> dict:
    steps = extra.pop("max_steps")
    cfg = {"model_id": str(tiny_model_dir), "train_path": data["train"], "valid_path": data["valid"],
           "task": "preference_tuning", "num_devices": 1, "use_gpu": True, "precision": PRECISION,
           "train_batch_size_per_device": 4, "eval_batch_size_per_device": 16, "gradient_accumulation_steps": 1,
           "max_steps": steps, "learning_rate": 5e-3, "lr_scheduler_type": "constant", "num_warmup_steps": 0,
           "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": steps}, "logging_steps": 1,
           "deepspeed": {"config_path": str(REPO / "deepspeed_configs" / f"zero_{zero}.json")},
           "output_dir": str(out), "run_name": f"dpo-zero{zero}", "preference_tuning_config": {"beta": BETA}}
    return cfg | extra


def _finetune(cfg: dict) -> tuple[Path, list[dict], list[dict]]:
    """(run dir, train rows, eval rows)."""
    from forgekit.config import load_config
    from forgekit.runs import read_metrics
    from forgekit.train import finetune

    run_dir = Path(finetune(load_config(cfg), progress=False)["run_dir"])
    return run_dir, read_metrics(run_dir, kind="train"), read_metrics(run_dir, kind="eval")


def _assert_policy_is_reference(train_rows: list[dict], eval_rows: list[dict]) -> None:
    first, baseline = train_rows[0], eval_rows[0]
    assert first["step"] == 1 and baseline["step"] == 0
    assert first["loss"] == pytest.approx(math.log(2), abs=LOSS_TOL), first
    assert baseline["eval_loss"] == pytest.approx(math.log(2), abs=LOSS_TOL), baseline
    for key in REWARD_KEYS:
        assert first[key] == pytest.approx(0.0, abs=REWARD_TOL), (key, first)
        assert baseline[f"eval_{key}"] == pytest.approx(0.0, abs=REWARD_TOL), (key, baseline)


def _assert_run_dir_complete(run_dir: Path, train_rows: list[dict], eval_rows: list[dict], steps: int,
                             weights: str) -> None:
    from forgekit.runs import list_checkpoints, read_metrics, read_result

    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "result.json"):
        assert (run_dir / name).is_file(), (name, sorted(p.name for p in run_dir.iterdir()))
    result = read_result(run_dir)
    assert result["steps"] == steps, result
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["task"] == "preference_tuning" and manifest["preference_format"] == "paired", manifest
    assert manifest["train_examples"] == 32 and manifest["valid_examples"] == 16, manifest
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    for row in train_rows:
        assert all(k in row for k in (*REWARD_KEYS, "rewards/accuracies", "logps/chosen", "logps/rejected")), row
        assert all(math.isfinite(row[k]) for k in ("loss", "grad_norm", *REWARD_KEYS)), row
        assert row["peak_memory_gb"] > 0 and row["tokens_per_second"] > 0, row
    assert [r["step"] for r in eval_rows] == [0, steps]
    assert all("eval_rewards/accuracies" in r and "eval_rewards/margins" in r for r in eval_rows), eval_rows
    (final,) = read_metrics(run_dir, kind="final")
    assert final["step"] == steps and final["precision"] == PRECISION and final["train_tokens"] > 0, final
    ckpt = list_checkpoints(run_dir)[-1]
    assert (ckpt / weights).is_file(), sorted(p.name for p in ckpt.iterdir())


@pytest.fixture(scope="module")
def lora_zero2(tiny_model_dir, data, tmp_path_factory):
    """LoRA DPO on the ZeRO-2 preset, 12 steps (1.5 epochs of 32 pairs), evaluated at steps 0 and 12."""
    cfg = _config(tiny_model_dir, data, tmp_path_factory.mktemp("lora"), 2, lora_config=LORA, max_steps=12)
    return _finetune(cfg)


def test_lora_dpo_on_zero2_starts_at_ln2_with_zero_rewards(lora_zero2):
    _, train_rows, eval_rows = lora_zero2
    _assert_policy_is_reference(train_rows, eval_rows)


def test_lora_dpo_on_zero2_learns_the_held_out_preference(lora_zero2):
    _, train_rows, eval_rows = lora_zero2
    assert train_rows[-1]["loss"] < train_rows[0]["loss"] - 0.1, [r["loss"] for r in train_rows]
    baseline, final = eval_rows[0], eval_rows[-1]
    assert final["eval_loss"] < 0.6 and final["eval_loss"] < baseline["eval_loss"] - 0.1, (baseline, final)
    # at step 0 bf16 noise breaks the ties either way; after training nearly every held-out pair is preferred
    assert final["eval_rewards/accuracies"] >= 0.8 and final["eval_rewards/margins"] > 0.5, final


def test_lora_dpo_on_zero2_writes_a_complete_run_directory(lora_zero2):
    _assert_run_dir_complete(*lora_zero2, steps=12, weights="adapter_model.safetensors")


@pytest.mark.parametrize("precompute", [True, False], ids=["ref-precomputed", "ref-every-step"])
def test_full_dpo_on_zero3_starts_at_ln2_learns_and_saves_the_full_model(tiny_model_dir, data, tmp_path, precompute):
    """Full fine-tuning on ZeRO-3: the reference log-probs precomputed through a DeepSpeed inference engine over the
    policy's shards (no reference copy), or computed in every step by TRL's reference copy, sharded like the policy."""
    cfg = _config(tiny_model_dir, data, tmp_path, 3, lora_config=None, max_steps=4, learning_rate=1e-3,
                  preference_tuning_config={"beta": BETA, "precompute_ref_log_probs": precompute})
    run_dir, train_rows, eval_rows = _finetune(cfg)
    _assert_policy_is_reference(train_rows, eval_rows)
    assert train_rows[-1]["loss"] < math.log(2) - 0.05, [r["loss"] for r in train_rows]
    assert eval_rows[-1]["eval_loss"] < eval_rows[0]["eval_loss"], eval_rows
    _assert_run_dir_complete(run_dir, train_rows, eval_rows, steps=4, weights="model.safetensors")
