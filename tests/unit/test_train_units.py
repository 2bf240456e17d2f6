"""Pieces of forgekit.train that need no Ray worker: the DeepSpeed check, Ray's scaling config, context
extension, classification metrics, and LLMForge's classification YAML."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from forgekit.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **extra):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    return load_config({"model_id": "smollm2-135m-instruct", "train_path": str(train), "context_length": 128,
                        "train_batch_size_per_device": 4, "gradient_accumulation_steps": 2, "num_devices": 2, **extra})


def test_deepspeed_values_that_contradict_the_yaml_are_all_reported_with_both_names(tmp_path):
    from forgekit.plan import deepspeed_config

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": "auto",
                              "train_batch_size": 16, "gradient_clipping": 0.5,
                              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                              "zero_optimization": {"stage": 2}}))
    cfg = _cfg(tmp_path, deepspeed={"config_path": str(ds)}, max_grad_norm=1.0, learning_rate=2e-4)
    with pytest.raises(ConfigError) as e:
        deepspeed_config(cfg)
    text = str(e.value)
    for fragment in ("train_micro_batch_size_per_gpu=3 contradicts train_batch_size_per_device=4",
                     "gradient_clipping=0.5 contradicts max_grad_norm=1.0",
                     "optimizer.params.lr=0.001 contradicts learning_rate=0.0002"):
        assert fragment in text
    assert str(ds) in text
    # train_batch_size 16 = 4 x 2 x 2 agrees; "auto" accumulation is filled, not reported
    assert "train_batch_size=16" not in text and "gradient_accumulation_steps=" not in text


def test_deepspeed_auto_values_are_filled_from_the_yaml(tmp_path):
    from forgekit.plan import deepspeed_config

    cfg = _cfg(tmp_path, deepspeed={"config_path": str(REPO / "deepspeed_configs" / "zero_3.json")})
    ds = deepspeed_config(cfg, bf16=False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (4, 2, 16)
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False


def test_trainer_resources_is_reported_and_left_out_of_rays_scaling_config(tmp_path, caplog):
    from forgekit.train import _scaling_config

    cfg = _cfg(tmp_path, trainer_resources={"memory": 1e9}, worker_resources={"accelerator_type:A10G": 0.001})
    with caplog.at_level(logging.WARNING, logger="forgekit"):
        sc = _scaling_config(cfg, use_gpu=True)  # Ray 2.60 raises on trainer_resources
    assert "trainer_resources" in caplog.text
    assert sc.num_workers == 2 and sc.use_gpu
    assert sc.resources_per_worker == {"accelerator_type:A10G": 0.001, "GPU": 1, "CPU": 1}
    cpu = _scaling_config(_cfg(tmp_path, worker_resources={"GPU": 1, "CPU": 2}), use_gpu=False)
    assert cpu.resources_per_worker == {"CPU": 2}  # a CPU run asks for no GPU


def test_context_beyond_the_models_maximum_stretches_rope(tmp_path, tiny_model_dir, tokenizer):
    import torch
    from transformers import AutoConfig

    from forgekit.worker.model import load_model as _load_model

    model_max = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings
    cfg = _cfg(tmp_path, model_id=str(tiny_model_dir), context_length=model_max * 4)
    model, _ = _load_model(cfg, tokenizer, torch.float32, "sdpa", False, source=str(tiny_model_dir),
                           context_length=model_max * 4)
    assert model.config.max_position_embeddings == model_max * 4
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert model.config.rope_parameters["factor"] == pytest.approx(4.0)
    plain, _ = _load_model(_cfg(tmp_path, model_id=str(tiny_model_dir), context_length=model_max), tokenizer,
                           torch.float32, "sdpa", False, source=str(tiny_model_dir), context_length=model_max)
    assert plain.config.max_position_embeddings == model_max
    assert plain.config.rope_parameters.get("rope_type", "default") == "default"


# ------------------------------------------------------------------------------------ classification metrics

A, B = 101, 202  # two label tokens' ids


def test_classification_metrics_against_hand_computed_values():
    from forgekit.worker.model import classification_metrics

    labels = np.array([A, A, B, B])
    predicted = np.array([A, B, B, B])
    p_a = np.array([0.9, 0.4, 0.6, 0.1])  # P(A) per example; ranking by it: A, B, A, B
    logits = np.log(np.stack([p_a, 1 - p_a], axis=1))
    m = classification_metrics(predicted, logits, labels, [A, B], ["accuracy", "f1", "prauc"])
    assert m["accuracy"] == pytest.approx(0.75)
    # F1(A) = 2*1/(2*1+0+1) = 2/3, F1(B) = 2*2/(2*2+1+0) = 4/5
    assert m["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # both classes rank hit, miss, hit, miss: average precision (1 + 2/3) / 2
    assert m["prauc"] == pytest.approx((1 + 2 / 3) / 2)


def test_classification_metrics_perfect_and_off_label_predictions():
    from forgekit.worker.model import classification_metrics

    labels = np.array([A, B, A, B])
    sure = np.log(np.array([[0.99, 0.01], [0.01, 0.99]] * 2))
    perfect = classification_metrics(labels, sure, labels, [A, B], ["f1", "prauc"])
    assert perfect == {"accuracy": 1.0, "f1": 1.0, "prauc": 1.0}
    # the model says some other token: wrong for accuracy and F1, though the label tokens still rank right
    off = classification_metrics(np.array([7, 7, 7, 7]), sure, labels, [A, B], ["f1", "prauc"])
    assert off["accuracy"] == 0.0 and off["f1"] == 0.0 and off["prauc"] == 1.0
    assert set(classification_metrics(labels, sure, labels, [A, B])) == {"accuracy"}  # only what was asked


def test_llmforge_classification_yaml_infers_the_task_and_takes_eval_metrics(tmp_path):
    cfg = _cfg(tmp_path, classifier_config={"label_tokens": ["[[1]]", "[[2]]"], "eval_metrics": ["prauc", "f1"]})
    assert cfg.task == "classification"
    assert cfg.classifier_config.eval_metrics == ["prauc", "f1"]
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, classifier_config={"label_tokens": ["[[1]]", "[[2]]"], "eval_metrics": ["auroc"]})
    assert "classifier_config.eval_metrics.0" in str(e.value) and "'prauc'" in str(e.value)
    with pytest.raises(ConfigError, match="only used with task: classification"):
        _cfg(tmp_path, task="causal_lm", classifier_config={"label_tokens": ["[[1]]", "[[2]]"]})


def test_progress_bar_reads_new_lines_and_starts_over_when_a_retried_worker_rewrites_the_file(tmp_path):
    import os

    from forgekit.train import _Progress

    metrics = tmp_path / "metrics.jsonl"
    p = _Progress(metrics, enabled=True)
    assert p.new_rows() == []  # no file yet
    rows = [{"kind": "train", "step": s, "max_steps": 6, "loss": 1.0 / s} for s in range(1, 5)]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + '{"kind": "tra')  # a line being written
    assert [r["step"] for r in p.new_rows()] == [1, 2, 3]
    with metrics.open("a") as f:
        f.write('in", "step": 4, "max_steps": 6, "loss": 0.25}\n')
    assert [r["step"] for r in p.new_rows()] == [4]
    assert p.new_rows() == []
    # a retried worker keeps the lines up to its checkpoint (step 2) in a new file, then goes on from there
    tmp = tmp_path / "metrics.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    os.replace(tmp, metrics)
    with metrics.open("a") as f:
        f.write(json.dumps({"kind": "train", "step": 3, "max_steps": 6, "loss": 0.3}) + "\n")
    assert [r["step"] for r in p.new_rows()] == [1, 2, 3]


def test_result_json_takes_the_best_trained_evaluation_and_the_last_step(tmp_path):
    """Training that makes eval loss worse: best_eval_loss is that of the best checkpoint, not the untrained
    baseline of step 0 (which has none); with logging_steps 2 the last train row is step 4 of 5."""
    from types import SimpleNamespace

    from forgekit.train import _summarize

    rows = [{"kind": "eval", "step": 0, "eval_loss": 1.0}, {"kind": "train", "step": 2, "loss": 2.0, "tokens": 20},
            {"kind": "eval", "step": 2, "eval_loss": 1.5}, {"kind": "train", "step": 4, "loss": 1.9, "tokens": 40},
            {"kind": "eval", "step": 5, "eval_loss": 1.2}, {"kind": "final", "step": 5, "train_tokens": 50}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step in (2, 5):
        (tmp_path / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    ray_best = SimpleNamespace(path=str(tmp_path / "checkpoints" / "step-000005"))
    out = _summarize(tmp_path, SimpleNamespace(best_checkpoints=[(ray_best, {})]), wall=1.0)
    assert (out["first_eval_loss"], out["best_eval_loss"], out["final_eval_loss"]) == (1.0, 1.2, 1.2)
    assert out["best_checkpoint"] == str(tmp_path / "checkpoints" / "step-000005")
    assert (out["steps"], out["train_tokens"], out["final_train_loss"]) == (5, 50, 1.9)


def test_finetune_applies_overrides_to_a_loaded_config(tmp_path, monkeypatch):
    """finetune(load_config(...), ["learning_rate=1e-3"]): the overrides re-validate the loaded config."""
    from forgekit import train

    seen = {}

    def stop(address, num_devices):  # the first step after the config is settled
        raise SystemExit

    real_load = train.load_config
    monkeypatch.setattr(train, "load_config", lambda *a, **k: seen.setdefault("cfg", real_load(*a, **k)))
    monkeypatch.setattr(train, "init_ray", stop)
    with pytest.raises(SystemExit):
        train.finetune(_cfg(tmp_path), ["learning_rate=1e-3", "lora_config.r=4"], progress=False)
    assert seen["cfg"].learning_rate == 1e-3 and seen["cfg"].lora_config["r"] == 4
    with pytest.raises(ConfigError, match="learning_rate"):
        train.finetune(_cfg(tmp_path), ["learning_rate=fast"], progress=False)


def test_an_llmforge_classification_yaml_with_another_error_reports_only_that_error():
    """classifier_config without task is a classification run, also when another field is invalid."""
    with pytest.raises(ConfigError) as e:
        load_config({"model_id": "m", "train_path": "t", "classifier_config": {"label_tokens": ["<a>", "<b>"]},
                     "learning_rate": "fast"})
    assert len(e.value.problems) == 1 and "learning_rate" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:  # a preference_tuning config reports only its own error too
        load_config({"model_id": "m", "train_path": "t", "task": "preference_tuning", "learning_rate": "fast"})
    assert len(e.value.problems) == 1 and "learning_rate" in e.value.problems[0]


def test_logger_provider_config_reaches_the_environment_of_transformers_callbacks(tmp_path, monkeypatch):
    from forgekit.tracking import logger_setup as _logger_setup

    for key in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_ENTITY", "WANDB_DIR", "MLFLOW_TRACKING_URI",
                "MLFLOW_TAGS", "TENSORBOARD_LOGGING_DIR"):
        # set, then removed: monkeypatch records the variable, so what logger_setup sets is undone after the test
        # (delenv of an absent variable records nothing, and MLFLOW_TRACKING_URI leaked into every later run)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    cfg = _cfg(tmp_path, logger={"provider": "wandb", "provider_config": {"project": "p", "group": "g",
                                                                         "tags": ["a", "b"], "entity": "team"}})
    assert _logger_setup(cfg, tmp_path) == (["wandb"], None)
    assert [os.environ[k] for k in ("WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_ENTITY")] == ["p", "g", "a,b", "team"]
    assert os.environ["WANDB_DIR"] == str(tmp_path)  # the run's files in the run directory, not the worker's cwd
    cfg = _cfg(tmp_path, logger={"provider": "mlflow", "provider_config": {"tracking_uri": "file:/x", "tags": {"k": "v"}}})
    assert _logger_setup(cfg, tmp_path) == (["mlflow"], None)
    assert os.environ["MLFLOW_TRACKING_URI"] == "file:/x" and json.loads(os.environ["MLFLOW_TAGS"]) == {"k": "v"}
    cfg = _cfg(tmp_path, logger={"provider": "tensorboard"})
    assert _logger_setup(cfg, tmp_path) == (["tensorboard"], str(tmp_path / "tensorboard"))


def test_a_logger_without_its_package_is_a_config_error_before_ray_starts(tmp_path, monkeypatch):
    import importlib.util

    from forgekit.tracking import check_logger as _check_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger.provider: wandb needs the wandb package.*pip install wandb"):
        _check_logger(_cfg(tmp_path, logger={"provider": "wandb"}))
    _check_logger(_cfg(tmp_path, logger={"provider": "tensorboard"}))  # installed with forgekit's dev extras


@pytest.mark.parametrize("tied", [True, False])
def test_classification_lora_trains_and_saves_the_new_label_rows(tmp_path, tiny_model_dir, tied):
    """LoRA classification adds label tokens: their embedding rows (and the output rows of an untied model) are
    trained, and the saved adapter carries them, so a fresh load predicts with the trained rows."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from forgekit.prepare import load_tokenizer
    from forgekit.worker.model import load_model as _load_model

    model_dir = tiny_model_dir
    if not tied:
        model_dir = tmp_path / "untied"
        shutil.copytree(tiny_model_dir, model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    cfg = _cfg(tmp_path, model_id=str(model_dir), task="classification", lora_config={"r": 4, "target_modules": "all-linear"},
               classifier_config={"label_tokens": ["<yes>", "<no>"]})
    tok = load_tokenizer(cfg)
    labels = tok.convert_tokens_to_ids(["<yes>", "<no>"])
    torch.manual_seed(0)
    model, _ = _load_model(cfg, tok, torch.float32, "sdpa", False, source=str(model_dir), context_length=64)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("embed_tokens" in n and "trainable_tokens" in n for n in trainable), trainable
    assert any("lm_head" in n for n in trainable) == (not tied)
    before = model.get_input_embeddings()(torch.tensor(labels)).detach().clone()
    ids = torch.tensor([[tok.convert_tokens_to_ids("Hi"), *labels]])
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=10.0).step()
    trained = model.get_input_embeddings()(torch.tensor(labels)).detach()
    assert not torch.allclose(trained, before)  # the label rows learnt
    model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    base.resize_token_embeddings(len(tok))
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.allclose(loaded.get_input_embeddings()(torch.tensor(labels)), trained)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(ids).logits, model.eval()(ids).logits, atol=1e-5)


def test_a_cluster_that_cannot_host_the_workers_is_reported_by_key_and_what_it_has(tmp_path):
    from forgekit.checks import cluster_fit_problems

    h100 = {"CPU": 26.0, "GPU": 1.0, "accelerator_type:H100": 1.0, "memory": 1e11}
    # an LLMForge config for A100s on an H100 machine: named, with the types the cluster has
    a100 = _cfg(tmp_path, num_devices=1, worker_resources={"accelerator_type:A100-80G": 0.001})
    (problem,) = cluster_fit_problems(a100, True, h100)
    assert problem.startswith("worker_resources.accelerator_type:A100-80G: 1 worker(s) x 0.001 need 0.001, "
                              "the Ray cluster has 0")
    assert "accelerator types: H100" in problem and "remove the key" in problem
    assert cluster_fit_problems(a100.model_copy(update={"worker_resources": {"accelerator_type:H100": 0.001}}),
                                True, h100) == []
    # two GPU workers on one GPU, and an explicit CPU request too large: both reported at once
    both = _cfg(tmp_path, num_devices=2, worker_resources={"CPU": 16})
    assert cluster_fit_problems(both, True, h100) == [
        "worker_resources.CPU: 2 worker(s) x 16 need 32, the Ray cluster has 26",
        "num_devices: 2 GPU workers need 2 GPU, the Ray cluster has 1; lower num_devices to at most 1",
    ]
    assert cluster_fit_problems(both, False, h100) == ["worker_resources.CPU: 2 worker(s) x 16 need 32, the Ray "
                                                       "cluster has 26"]  # CPU workers ask for no GPU


def test_an_unmet_worker_resource_fails_a_local_run_and_warns_on_an_attached_cluster(tmp_path, monkeypatch, caplog):
    from forgekit.checks import check_cluster

    have = {"CPU": 2.0, "memory": 1e10}
    cfg = _cfg(tmp_path, worker_resources={"accelerator_type:A100-80G": 0.001})
    with pytest.raises(ConfigError, match=r"worker_resources\.accelerator_type:A100-80G: .*types: none"):
        check_cluster(cfg, True, have, attached=False)
    with caplog.at_level(logging.WARNING, logger="forgekit"):
        check_cluster(cfg, True, have, attached=True)  # an autoscaling cluster can still add such nodes
    assert "accelerator_type:A100-80G" in caplog.text and "autoscaling" in caplog.text
    check_cluster(_cfg(tmp_path), False, have, attached=False)  # 2 CPU workers fit 2 CPUs
    with pytest.raises(ConfigError, match=r"num_devices: 2 GPU workers need 2 GPU, the Ray cluster has 0; run on "
                                          r"a machine with a GPU, or set use_gpu: false"):
        check_cluster(_cfg(tmp_path, use_gpu=True), True, have, attached=False)


@pytest.mark.parametrize(("name", "gib", "label"), [("NVIDIA A100-SXM4-80GB", 79.2, "accelerator_type:A100-80G"),
                                                    ("NVIDIA A100 80GB PCIe", 79.2, "accelerator_type:A100-80G"),
                                                    ("NVIDIA A100-SXM4-40GB", 39.4, "accelerator_type:A100-40G"),
                                                    ("NVIDIA H100 80GB HBM3", 79.1, None)])
def test_a_local_cluster_labels_its_a100s_with_their_memory_as_llmforge_configs_ask(monkeypatch, name, gib, label):
    """Ray labels every A100 `A100`; the 1xA100-80G configs ask for `A100-80G`, which a local cluster adds."""
    import types

    import torch

    from forgekit import train
    from forgekit.checks import cluster_fit_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=name, total_memory=int(gib * 2**30)))
    assert train._local_accelerator_labels() == ({label: 1.0} if label else {})
    cfg = load_config(REPO / "training_configs/custom/meta-llama--Meta-Llama-3.1-8B-Instruct/lora/1xA100-80G-4096.yaml")
    have = {"CPU": 16.0, "GPU": 1.0, f"accelerator_type:{name.split()[1].split('-')[0]}": 1.0,
            **train._local_accelerator_labels()}
    assert (cluster_fit_problems(cfg, True, have) == []) == (label == "accelerator_type:A100-80G")
