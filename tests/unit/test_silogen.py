"""The Silogen engine's YAML sections (rejected with the forgekit field to use; quant_conf accepted) and its command
line: `forgekit sft`, `forgekit merge-adapter BASE ADAPTER OUT`, `--logging-level`."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from forgekit.config import ConfigError, load_config

SILOGEN = {
    "data_conf": {"training_data": {"type": "CONCATENATION", "datasets": [{"path": "train.jsonl"}]}},
    "training_args": {"learning_rate": 2e-4, "num_train_epochs": 3, "save_steps": 50, "report_to": "none"},
    "batchsize_conf": {"total_train_batch_size": 64, "max_per_device_train_batch_size": 4},
    "peft_conf": {"peft_type": "LORA", "peft_kwargs": {"r": 16, "lora_alpha": 32}},
    "run_conf": {"model": "meta-llama/Llama-3.1-8B"},
    "sft_args": {"max_seq_length": 2048},
    "quant_conf": {"quantization_type": "bits-and-bytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
}


def test_a_silogen_config_is_rejected_section_by_section_naming_the_forgekit_field():
    with pytest.raises(ConfigError) as e:
        load_config(SILOGEN)
    problems = e.value.problems
    assert problems[:9] == [
        "data_conf: the Silogen engine's data section; forgekit trains on one chat JSONL: train_path (and valid_path "
        "for evaluation), rows of {messages: [...]}; the chat template is the tokenizer's, or "
        "generation_config.prompt_format (a built-in name such as chatml)",
        "batchsize_conf: use total_batch_size (Silogen's total_train_batch_size) and max_batch_size_per_device (its "
        "max_per_device_train_batch_size) (here: total_batch_size: 64)",
        "peft_conf: use lora_config: peft LoraConfig keywords (r, lora_alpha, lora_dropout, target_modules, ...) "
        "(here: lora_config: {'r': 16, 'lora_alpha': 32})",
        "run_conf: use model_id for the model; initial_base_model_ckpt_path / initial_adapter_model_ckpt_path to "
        "continue from a checkpoint; precision and attn_implementation for the dtype and the attention "
        "(here: model_id: meta-llama/Llama-3.1-8B)",
        "sft_args: use context_length (Silogen's max_seq_length); the loss covers the assistant turns with task: "
        "instruction_tuning, every token with task: causal_lm (here: context_length: 2048)",
        "training_args.learning_rate: use learning_rate: 0.0002 (top level)",
        "training_args.num_train_epochs: use num_epochs: 3 (top level)",
        "training_args.save_steps: use checkpoint_and_evaluation_frequency: {unit: steps, frequency: N}",
        "training_args.report_to: no forgekit field; forgekit derives or does not use it (`forgekit validate` shows "
        "every value the run uses)",
    ]
    # quant_conf is forgekit's own field: its keys pass; it needs the LoRA that peft_conf's rewrite gives
    assert not any(p.startswith("quant_conf.") for p in problems)
    assert any(p.startswith("quant_conf: a quantized base model cannot be fully fine-tuned") for p in problems)
    assert "model_id: required but missing" in problems


def test_the_rewritten_config_with_the_silogen_quant_conf_validates():
    cfg = load_config({"model_id": "meta-llama/Llama-3.1-8B", "train_path": "train.jsonl", "learning_rate": 2e-4,
                       "num_epochs": 3, "total_batch_size": 64, "max_batch_size_per_device": 4, "context_length": 2048,
                       "lora_config": {"r": 16, "lora_alpha": 32}, "quant_conf": SILOGEN["quant_conf"]})
    assert cfg.quant_conf["load_in_4bit"] and cfg.is_lora


def test_sft_fixes_the_task_unless_the_config_names_one(tmp_path, monkeypatch):
    from forgekit import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_finetune", lambda args: seen.append(list(args.overrides)) or 0)
    plain, causal = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plain.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl"}))
    causal.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl", "task": "causal_lm"}))
    assert cli.main(["sft", str(plain), "learning_rate=1e-4"]) == 0
    assert cli.main(["sft", str(causal)]) == 0
    assert cli.main(["sft", str(plain), "task=causal_lm"]) == 0
    assert seen == [["task=instruction_tuning", "learning_rate=1e-4"], [], ["task=causal_lm"]]


def test_dpo_fixes_the_task_and_the_tracking_options_become_overrides(tmp_path, monkeypatch):
    """`forgekit dpo` is finetune with task preference_tuning; --mlflow-server-uri, --experiment-name and
    --hf-mlflow-log-artifacts set the tracking section (or the logger section the config has), and the config
    they make validates to an MLflow logger with those values."""
    import forgekit.train
    from forgekit import cli
    from forgekit.config import load_config

    seen = []
    monkeypatch.setattr(forgekit.train, "finetune", lambda config, overrides, **kw: seen.append(list(overrides)) or {})
    plain, logged = tmp_path / "a.yaml", tmp_path / "b.yaml"
    plain.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl"}))
    logged.write_text(yaml.safe_dump({"model_id": "m", "train_path": "t.jsonl",
                                      "logger": {"provider": "mlflow", "provider_config": {"experiment_name": "x"}}}))
    flags = ["--mlflow-server-uri", "http://127.0.0.1:5000", "--experiment-name", "exp", "--hf-mlflow-log-artifacts",
             "true"]
    assert cli.main(["dpo", str(plain), *flags]) == 0
    assert cli.main(["finetune", str(logged), "--experiment-name", "exp2"]) == 0
    assert seen[0] == ["tracking.mlflow_server_uri=http://127.0.0.1:5000", "tracking.experiment_name=exp",
                       "tracking.hf_mlflow_log_artifacts=true", "task=preference_tuning"]
    assert seen[1] == ["logger.provider=mlflow", "logger.provider_config.experiment_name=exp2"]
    cfg = load_config(plain, seen[0][:3])
    assert cfg.logger.provider == "mlflow"
    assert cfg.logger.provider_config["tracking_uri"] == "http://127.0.0.1:5000"
    assert cfg.logger.provider_config["experiment_name"] == "exp"
    assert load_config(logged, seen[1]).logger.provider_config["experiment_name"] == "exp2"


def test_logging_level(monkeypatch, capsys):
    from forgekit import cli

    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    levels = []
    assert cli.main(["--logging-level", "debug", "models", "list"]) == 0
    assert cli.main(["models", "list"]) == 0
    assert levels == [logging.DEBUG, logging.INFO]


def test_merge_adapter_takes_the_engines_argument_order_and_base(tiny_model_dir, tmp_path, capsys):
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgekit.cli import main

    torch.manual_seed(0)
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).save_pretrained(adapter)
    copy = tmp_path / "base-copy"  # the same base elsewhere: BASE wins over the adapter's recorded path
    shutil.copytree(tiny_model_dir, copy)
    assert main(["merge-adapter", str(copy), str(adapter), str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    info = json.loads((tmp_path / "merged" / "forgekit_export.json").read_text())
    assert info["base"] == str(copy) and info["max_abs_logit_diff"] < 1e-4
    assert main(["merge-adapter", str(tmp_path / "nowhere"), str(adapter), str(tmp_path / "m2")]) == 2
    assert "cannot load the base model" in capsys.readouterr().err
