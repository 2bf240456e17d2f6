"""Tests for forgekit.config: one invalid file per promised error, all problems at once, overrides, default mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from forgekit.config import (
    DEFAULT_LORA,
    ConfigError,
    apply_overrides,
    format_config,
    load_config,
    with_derived,
)

CONFIGS = Path(__file__).parents[1] / "fixtures" / "configs"
INVALID = CONFIGS / "invalid"

# file -> fragments that must all appear in the error (the dotted key, what was expected, a did-you-mean)
INVALID_CASES = {
    "unknown_top_level_key.yaml": ["learnig_rate: unknown key", "did you mean 'learning_rate'?"],
    "unknown_nested_key.yaml": [
        "checkpoint_and_evaluation_frequency.frequncy: unknown key",
        "did you mean 'frequency'?",
    ],
    "lora_misspelt_key.yaml": [
        "lora_config.lora_alpah: not a peft LoraConfig field",
        "did you mean 'lora_alpha'?",
    ],
    "bad_task.yaml": ["task:", "'causal_lm'", "'instruction_tuning'", "'classification'", "(got 'chat')"],
    "bad_padding.yaml": ["padding:", "'longest' or 'max_length'", "(got 'longest_first')"],
    "bad_checkpoint_unit.yaml": [
        "checkpoint_and_evaluation_frequency.unit:",
        "'steps' or 'epochs'",
        "(got 'minutes')",
    ],
    "bad_logger_provider.yaml": ["logger.provider:", "'wandb', 'mlflow' or 'tensorboard'", "(got 'neptune')"],
    "negative_epochs.yaml": ["num_epochs:", "greater than or equal to 1", "(got -2)"],
    "prompt_format_no_instruction.yaml": [
        "generation_config.prompt_format:",
        "assistant: template must contain '{instruction}'",
    ],
    "system_in_user_without_system.yaml": [
        "generation_config.prompt_format:",
        "system_in_user is true, so the user template must contain '{system}'",
    ],
    "classification_without_classifier_config.yaml": [
        "classifier_config.label_tokens is required when task is classification",
    ],
    "total_and_per_device_batch.yaml": ["total_batch_size", "not both"],
    "invalid_yaml_syntax.yaml": ["invalid_yaml_syntax.yaml:6: invalid YAML"],
    "preference_tuning.yaml": ["preference_tuning_config.loss_type:", "'sigmoid', 'ipo'", "(got 'dpo')"],
}


def test_every_invalid_fixture_has_a_case():
    assert sorted(p.name for p in INVALID.glob("*.yaml")) == sorted([*INVALID_CASES, "many_problems.yaml"])


@pytest.mark.parametrize("name", sorted(INVALID_CASES))
def test_invalid_config_reports_the_problem(name):
    with pytest.raises(ConfigError) as info:
        load_config(INVALID / name)
    message = str(info.value)
    for fragment in INVALID_CASES[name]:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert str(INVALID / name) in message  # the file is named
    assert len(info.value.problems) == 1, info.value.problems  # and nothing spurious is added


def test_all_problems_of_one_file_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_config(INVALID / "many_problems.yaml")
    problems = info.value.problems
    expected = [
        "model_id: required but missing",
        "learnig_rate: unknown key (did you mean 'learning_rate'?)",
        "num_epochs: Input should be greater than or equal to 1",
        "padding: Input should be 'longest' or 'max_length'",
        "lora_config.rank: not a peft LoraConfig field (did you mean 'r'?)",
        # a cross-field check, reported even though field checks failed too
        "classifier_config.label_tokens is required when task is classification",
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, f"{fragment!r} not reported once in {problems}"
    assert len(problems) == len(expected)
    assert str(info.value).startswith(f"{len(expected)} problem(s) in ")


def test_several_cross_field_problems_are_all_reported():
    with pytest.raises(ConfigError) as info:
        load_config({"model_id": "m", "train_path": "t", "task": "classification", "total_batch_size": 8,
                     "train_batch_size_per_device": 2})
    assert len(info.value.problems) == 2
    assert any("classifier_config.label_tokens is required" in p for p in info.value.problems)
    assert any("not both" in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"packing": True, "padding": "max_length"}, "packing: true has no padding"),
        ({"packing": True, "task": "classification", "classifier_config": {"label_tokens": ["<a>", "<b>"]}},
         "packing is not supported for task: classification"),
        ({"max_batch_size_per_device": 4}, "max_batch_size_per_device is only used together with total_batch_size"),
        ({"initial_adapter_model_ckpt_path": "/x"}, "initial_adapter_model_ckpt_path needs lora_config"),
        # (without a task, classifier_config makes it a classification run, as in LLMForge)
        ({"task": "instruction_tuning", "classifier_config": {"label_tokens": ["<a>", "<b>"]}},
         "classifier_config is only used with task"),
        ({"task": "classification", "classifier_config": {"label_tokens": ["<a>", "<a>"]}}, "must be unique"),
        ({"task": "classification", "classifier_config": {"label_tokens": ["<a>"]}}, "at least 2 items"),
        ({"lora_config": {"r": 0}}, "lora_config.r: expected a positive integer (got 0)"),
        ({"lora_config": {"lora_alpha": "high"}}, "lora_config.lora_alpha: expected int (got 'high')"),
        ({"lora_config": {"target_modules": 5}}, "lora_config.target_modules: expected list of str or str or null (got 5)"),
        ({"lora_config": {"lora_dropout": 2.0}}, "lora_config.lora_dropout: expected a probability in [0, 1)"),
        ({"lora_config": {"bias": "sometimes"}},
         "lora_config.bias: expected one of 'none', 'all', 'lora_only' (got 'sometimes')"),
        # peft's own consistency checks, before any worker starts
        ({"lora_config": {"layers_pattern": "layers"}}, "lora_config: When `layers_pattern` is specified"),
        ({"generation_config": {"prompt_format": {"usr": "{instruction}"}}},
         "generation_config.prompt_format.usr: unknown key (did you mean 'user'?)"),
        ({"learning_rate": "fast"}, "learning_rate: Input should be a valid number"),
        ({"profile_steps": [3, 2]}, "profile_steps: expected [first, last] with 1 <= first <= last, got [3, 2]"),
        ({"profile_steps": [0, 2]}, "profile_steps: expected [first, last]"),
        ({"profile_steps": [2]}, "profile_steps.1: required but missing"),
    ],
)
def test_other_checks(extra, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        load_config({"model_id": "m", "train_path": "t", **extra})
    assert fragment in str(info.value)


def test_missing_required_keys_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config({})
    assert info.value.problems == ["model_id: required but missing", "train_path: required but missing"]
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of config keys, got list"):
        load_config(tmp_path / "list.yaml")


def test_llmforge_config_validates_unchanged():
    cfg = load_config(CONFIGS / "valid_llmforge.yaml")
    raw = yaml.safe_load((CONFIGS / "valid_llmforge.yaml").read_text())
    assert cfg.model_id == raw["model_id"]
    assert cfg.deepspeed.config_path == raw["deepspeed"]["config_path"]
    assert cfg.lora_config == raw["lora_config"]
    assert cfg.generation_config.prompt_format.bos == "<|begin_of_text|>"
    assert cfg.generation_config.prompt_format.user.endswith("\n\n{instruction}<|eot_id|>")
    assert cfg.logger.provider == "wandb" and cfg.logger.provider_config == {"project": "forge"}
    assert cfg.worker_resources == {"accelerator_type:A10G": 0.001}
    assert cfg.derived == set()  # custom mode derives nothing at load time
    assert cfg.attn_implementation == "auto"  # flash_attention_2: true is what forgekit does on GPUs anyway
    assert [n.split(":")[0] for n in cfg.notes] == ["dataset_size_scaling_factor", "flash_attention_2",
                                                     "trainer_resources"]  # (unused: noted at validate)
    assert format_config(cfg).startswith("# LLMForge key dataset_size_scaling_factor: ")


def test_every_lora_config_problem_is_reported_under_its_own_key():
    with pytest.raises(ConfigError) as info:
        load_config({"model_id": "m", "train_path": "t", "seed": "x",
                     "lora_config": {"rank": 8, "lora_alpha": "high", "bias": "sometimes"}})
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "lora_config.bias", "lora_config.lora_alpha", "lora_config.rank", "seed"]
    # values peft accepts pass, including the init_lora_weights family its annotation spells as a placeholder
    cfg = load_config({"model_id": "m", "train_path": "t", "lora_config": {
        "r": 8, "lora_alpha": 16.0, "target_modules": ["q_proj"], "init_lora_weights": "pissa_niter_4"}})
    assert cfg.lora_config["init_lora_weights"] == "pissa_niter_4"


def test_llmforge_only_keys_are_translated_or_reported():
    base = {"model_id": "m", "train_path": "t"}
    cfg = load_config({**base, "flash_attention_2": False, "checkpoint_every_n_epochs": 2})
    assert cfg.attn_implementation == "sdpa"
    assert (cfg.checkpoint_and_evaluation_frequency.unit, cfg.checkpoint_and_evaluation_frequency.frequency) == (
        "epochs", 2)
    assert load_config(cfg, ["seed=1"]).notes == cfg.notes  # a reloaded config keeps what was done
    with pytest.raises(ConfigError) as info:
        load_config({**base, "flash_attention_2": "yes", "dataset_size_scaling_factor": "big", "num_epochs": -1,
                     "checkpoint_every_n_epochs": 1, "checkpoint_and_evaluation_frequency": {"unit": "steps",
                                                                                            "frequency": 3},
                     "preference_tuning_config": {"beta": 0.1}})
    assert [p.split(":")[0] for p in info.value.problems] == [
        "dataset_size_scaling_factor", "flash_attention_2", "checkpoint_every_n_epochs", "preference_tuning_config",
        "num_epochs"]
    assert "give only one of them" in info.value.problems[2]


def test_overrides_are_dotted_and_typed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_id: m\ntrain_path: t\nlora_config:\n  r: 8\n  lora_alpha: 16\n")
    cfg = load_config(path, ["learning_rate=2e-4", "lora_config.r=16", "packing=true", "num_epochs=3",
                             "generation_config.stopping_sequences=[a, '<|im_end|>']", "logger.provider=mlflow",
                             "run_name=exp=1"])
    assert cfg.learning_rate == pytest.approx(2e-4) and isinstance(cfg.learning_rate, float)
    assert cfg.lora_config == {"r": 16, "lora_alpha": 16}  # sibling keys kept
    assert cfg.packing is True
    assert cfg.num_epochs == 3 and isinstance(cfg.num_epochs, int)
    assert cfg.generation_config.stopping_sequences == ["a", "<|im_end|>"]
    assert cfg.logger.provider == "mlflow"
    assert cfg.run_name == "exp=1"  # only the first '=' splits


def test_overrides_are_validated_like_the_file():
    with pytest.raises(ConfigError) as info:
        load_config({"model_id": "m", "train_path": "t"}, ["num_epochs=-1", "lora_config.rr=2"])
    text = str(info.value)
    assert "num_epochs: Input should be greater than or equal to 1" in text
    assert "lora_config.rr: not a peft LoraConfig field" in text


def test_bad_override_syntax():
    with pytest.raises(ConfigError) as info:
        load_config({"model_id": "m", "train_path": "t"}, ["learning_rate", "seed=1", "lora_config.r"])
    assert info.value.problems == [
        "override 'learning_rate': expected key=value, e.g. learning_rate=2e-4",
        "override 'lora_config.r': expected key=value, e.g. learning_rate=2e-4",
    ]
    assert "command line" in str(info.value)


def test_apply_overrides_does_not_mutate_input():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, {"a.c": 2, "d.e": "x"})
    assert out == {"a": {"b": 1, "c": 2}, "d": {"e": "x"}}
    assert data == {"a": {"b": 1}}


def test_default_mode_lora_and_derived():
    cfg = load_config({"model_id": "m", "train_path": "t"}, default=True)
    assert cfg.lora_config == DEFAULT_LORA
    assert cfg.lora_config["r"] == 8 and cfg.lora_config["target_modules"] == "all-linear"
    assert cfg.derived == {"lora_config"}
    # user keys merge over the default adapter, and the adapter is then the user's, not derived
    cfg = load_config({"model_id": "m", "train_path": "t", "lora_config": {"r": 32, "lora_dropout": 0.0}},
                      default=True)
    assert cfg.lora_config == {**DEFAULT_LORA, "r": 32, "lora_dropout": 0.0}
    assert cfg.derived == set()
    # custom mode: no adapter unless asked for (full fine-tuning)
    assert load_config({"model_id": "m", "train_path": "t"}).lora_config is None


def test_default_mode_still_requires_model_and_data():
    with pytest.raises(ConfigError) as info:
        load_config({"model_id": "m"}, default=True)
    assert info.value.problems == ["train_path: required but missing"]


def test_with_derived_and_format_config_marks_derived_values():
    cfg = load_config({"model_id": "m", "train_path": "t"}, default=True)
    resolved = with_derived(cfg, context_length=1024, num_epochs=3)
    assert resolved.derived == {"lora_config", "context_length", "num_epochs"}
    assert cfg.context_length is None  # the original is untouched
    text = format_config(resolved)
    lines = text.splitlines()
    assert "context_length: 1024  # derived" in lines
    assert "num_epochs: 3  # derived" in lines
    assert "lora_config:  # derived" in lines
    assert "learning_rate: 0.0001" in lines  # user/default values unmarked
    assert "model_id: m" in lines
    # what the workers settle is marked with what it will be (gradient checkpointing on by default)
    assert any(line.startswith("gradient_checkpointing: true  # on each worker: every layer on CPUs; on GPUs")
               for line in lines)
    assert "use_gpu: null  # on each worker: GPUs when the Ray cluster has them" in lines
    # every field is shown, and the text parses back to the same values
    data = yaml.safe_load(text)
    assert set(data) == set(type(cfg).model_fields)
    assert data["context_length"] == 1024 and data["lora_config"] == DEFAULT_LORA
    with pytest.raises(Exception, match="greater than or equal to 8"):
        with_derived(cfg, context_length=4)  # derived values obey the schema too
