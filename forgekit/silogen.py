"""The Silogen engine's YAML sections: what forgekit accepts as written, and what it rejects with the field to use.

A Silogen finetuning config has the top-level sections `data_conf`, `training_args`, `batchsize_conf`,
`peft_conf`, `quant_conf`, `run_conf`, `sft_args` and `tracking`. forgekit's decision, section by section:

* `quant_conf`: accepted as written (`FinetuneConfig.quant_conf`, checked against transformers'
  `BitsAndBytesConfig`; forgekit.quantization);
* `tracking`: translated to `logger: {provider: mlflow, ...}`, with a note (`forgekit.config._silogen_tracking`);
* every other section: **rejected**, one problem per section or key, each naming the forgekit field to use
  (`training_args.num_train_epochs: use num_epochs`).

Why reject rather than translate: these sections carry the engine's own semantics, which have no one-to-one
forgekit field — a dataset concatenation spec instead of one chat JSONL, a chat template by name, batch sizes
whose derivation differs, HF `TrainingArguments` that forgekit derives or does not use. A translation would run a
different experiment than the YAML says without an error; a list of exact rewrites costs the user one edit and
`forgekit validate` then shows every value the run will use.

Also here: what the `forgekit sft` alias needs to know of a config (`config_names_task`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SILOGEN_REJECTED", "TRAINING_ARGS", "config_names_task", "silogen_sections"]

# HF TrainingArguments names (the Silogen engine's training_args) -> forgekit's field
TRAINING_ARGS = {
    "learning_rate": "learning_rate",
    "num_train_epochs": "num_epochs",
    "max_steps": "max_steps",
    "per_device_train_batch_size": "train_batch_size_per_device",
    "per_device_eval_batch_size": "eval_batch_size_per_device",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler_type",
    "warmup_steps": "num_warmup_steps",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "gradient_checkpointing": "gradient_checkpointing",
    "logging_steps": "logging_steps",
    "output_dir": "output_dir",
    "neftune_noise_alpha": "neftune_noise_alpha",
    "deepspeed": "deepspeed.config_path",
    "bf16": "precision: bf16",
    "save_total_limit": "num_checkpoints_to_keep",
    "save_steps": "checkpoint_and_evaluation_frequency: {unit: steps, frequency: N}",
    "eval_steps": "checkpoint_and_evaluation_frequency: {unit: steps, frequency: N}",
}

SILOGEN_REJECTED = {
    "data_conf": "the Silogen engine's data section; forgekit trains on one chat JSONL: train_path (and valid_path "
                 "for evaluation), rows of {messages: [...]}; the chat template is the tokenizer's, or "
                 "generation_config.prompt_format (a built-in name such as chatml)",
    "batchsize_conf": "use total_batch_size (Silogen's total_train_batch_size) and max_batch_size_per_device "
                      "(its max_per_device_train_batch_size)",
    "peft_conf": "use lora_config: peft LoraConfig keywords (r, lora_alpha, lora_dropout, target_modules, ...)",
    "run_conf": "use model_id for the model; initial_base_model_ckpt_path / initial_adapter_model_ckpt_path to "
                "continue from a checkpoint; precision and attn_implementation for the dtype and the attention",
    "sft_args": "use context_length (Silogen's max_seq_length); the loss covers the assistant turns with "
                "task: instruction_tuning, every token with task: causal_lm",
}


def silogen_sections(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`data` without the Silogen sections forgekit rejects, and one problem per section (or per `training_args`
    key) naming the forgekit field to use. `quant_conf` and `tracking` stay (accepted / translated elsewhere)."""
    found = [k for k in (*SILOGEN_REJECTED, "training_args") if k in data]
    if not found:
        return data, []
    data, problems = dict(data), []
    for key in found:
        section = data.pop(key)
        if key != "training_args":
            hint = _example(key, section)
            problems.append(f"{key}: {SILOGEN_REJECTED[key]}{hint}")
            continue
        if not isinstance(section, dict):
            problems.append("training_args: the Silogen engine's HF TrainingArguments; forgekit's fields are top-level")
            continue
        for arg, value in section.items():
            field = TRAINING_ARGS.get(arg)
            if field is None:
                problems.append(f"training_args.{arg}: no forgekit field; forgekit derives or does not use it "
                                "(`forgekit validate` shows every value the run uses)")
            elif ":" in field:
                problems.append(f"training_args.{arg}: use {field}")
            else:
                problems.append(f"training_args.{arg}: use {field}: {value!r} (top level)")
    return data, problems


def _example(key: str, section: Any) -> str:
    """The rewrite, where the section holds what it needs (`peft_conf.peft_kwargs` -> `lora_config: {...}`)."""
    if not isinstance(section, dict):
        return ""
    if key == "peft_conf" and isinstance(section.get("peft_kwargs"), dict):
        return f" (here: lora_config: {section['peft_kwargs']})"
    if key == "run_conf" and isinstance(section.get("model"), str):
        return f" (here: model_id: {section['model']})"
    if key == "sft_args" and "max_seq_length" in section:
        return f" (here: context_length: {section['max_seq_length']})"
    if key == "batchsize_conf" and "total_train_batch_size" in section:
        return f" (here: total_batch_size: {section['total_train_batch_size']})"
    return ""


def config_has_key(config: str | Path, *keys: str) -> bool:
    """Whether the YAML file `config` has any of these top-level keys. A file that cannot be read counts as not
    having them; loading it reports why."""
    import yaml

    try:
        data = yaml.safe_load(Path(config).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and any(k in data for k in keys)


def config_names_task(config: str | Path) -> bool:
    """Whether the YAML file `config` sets `task` (or `classifier_config`, which implies it), for `forgekit sft`."""
    return config_has_key(config, "task", "classifier_config")
