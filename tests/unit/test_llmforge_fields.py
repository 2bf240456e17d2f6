"""The last LLMForge fields: each accepted and translated, noted as unused, or an error naming it; LLMForge's
over-length and derived-context-length behaviour against forgekit's (documented on `overlength` and
`context_length`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgekit.config import ConfigError, FinetuneConfig, format_config, load_config

BASE = {"model_id": "m", "train_path": "t"}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config({**BASE, **data})
    return info.value.problems


@pytest.mark.parametrize("value", [True, False])
def test_no_gradient_checkpoint_is_the_negation_of_gradient_checkpointing(value):
    cfg = load_config({**BASE, "no_gradient_checkpoint": value})
    assert cfg.gradient_checkpointing is (not value)
    assert cfg.notes == [f"no_gradient_checkpoint: {str(value).lower()} -> gradient_checkpointing: "
                         f"{str(not value).lower()}"]
    assert f"# LLMForge key no_gradient_checkpoint: {str(value).lower()}" in format_config(cfg)
    # both, agreeing, is fine; contradicting (no_... true and gradient_checkpointing true) is an error naming both
    assert load_config({**BASE, "no_gradient_checkpoint": value, "gradient_checkpointing": not value})
    (problem,) = problems_of({"no_gradient_checkpoint": value, "gradient_checkpointing": value})
    assert problem.startswith("no_gradient_checkpoint:") and "contradicts gradient_checkpointing" in problem
    (problem,) = problems_of({"no_gradient_checkpoint": "no"})
    assert problem == "no_gradient_checkpoint: expected true or false (got 'no')"


def test_max_num_checkpoints_is_num_checkpoints_to_keep():
    cfg = load_config({**BASE, "max_num_checkpoints": 3})
    assert cfg.num_checkpoints_to_keep == 3 and cfg.notes == ["max_num_checkpoints: 3 -> num_checkpoints_to_keep: 3"]
    assert load_config({**BASE, "max_num_checkpoints": 2, "num_checkpoints_to_keep": 2}).num_checkpoints_to_keep == 2
    (problem,) = problems_of({"max_num_checkpoints": 2, "num_checkpoints_to_keep": 4})
    assert problem.startswith("max_num_checkpoints: 2 contradicts num_checkpoints_to_keep: 4")
    (problem,) = problems_of({"max_num_checkpoints": 0})
    assert problem == "max_num_checkpoints: expected a positive integer (got 0)"


def test_num_data_blocks_per_device_is_accepted_and_noted_unused():
    cfg = load_config({**BASE, "num_data_blocks_per_device": 16})
    assert [n.split(":")[0] for n in cfg.notes] == ["num_data_blocks_per_device"] and "not used" in cfg.notes[0]
    assert "num_data_blocks_per_device" not in cfg.model_dump()
    (problem,) = problems_of({"num_data_blocks_per_device": "many"})
    assert problem == "num_data_blocks_per_device: expected a positive integer (got 'many')"


def test_embedding_scaling_technique_linear_is_forgekit_default_others_point_to_rope_scaling():
    cfg = load_config({**BASE, "embedding_scaling_technique": "linear"})
    assert cfg.rope_scaling is None and cfg.notes[0].startswith("embedding_scaling_technique: linear: not used")
    (problem,) = problems_of({"embedding_scaling_technique": "yarn"})
    assert problem.startswith("embedding_scaling_technique: 'yarn' is not supported; set rope_scaling")


def test_mlflow_create_experiment_if_not_exists():
    mlflow = {"provider": "mlflow", "provider_config": {"experiment_name": "e", "create_experiment_if_not_exists": True}}
    cfg = load_config({**BASE, "logger": mlflow})
    # dropped from provider_config: it would otherwise become an MLFLOW_CREATE_EXPERIMENT_IF_NOT_EXISTS nobody reads
    assert cfg.logger.provider_config == {"experiment_name": "e"}
    assert cfg.notes[0].startswith("logger.provider_config.create_experiment_if_not_exists: true: what happens anyway")
    key = "logger.provider_config.create_experiment_if_not_exists"
    (problem,) = problems_of({"logger": {**mlflow, "provider_config": {"create_experiment_if_not_exists": False}}})
    assert problem.startswith(f"{key}: false cannot be followed")
    (problem,) = problems_of({"logger": {"provider": "wandb", "provider_config": {"create_experiment_if_not_exists": 1}}})
    assert problem == f"{key}: an MLflow setting, but logger.provider is 'wandb'"


def test_anyscale_accelerator_shape_is_an_error_off_anyscale(monkeypatch):
    monkeypatch.delenv("ANYSCALE_CLUSTER_ID", raising=False)
    resources = {"anyscale/accelerator_shape:4xA10G": 0.001}
    (problem,) = problems_of({"worker_resources": resources})
    assert problem.startswith("worker_resources.anyscale/accelerator_shape:4xA10G: an Anyscale resource")
    assert "accelerator_type:A10G" in problem  # what to ask for instead, on any Ray cluster
    monkeypatch.setenv("ANYSCALE_CLUSTER_ID", "ses_123")  # on Anyscale the resource exists: passed on to Ray
    assert load_config({**BASE, "worker_resources": resources}).worker_resources == resources


def test_trainer_resources_is_noted_at_validate_and_once_after_reloading():
    cfg = load_config({**BASE, "trainer_resources": {"CPU": 2}})
    assert cfg.trainer_resources == {"CPU": 2}
    assert [n.split(":")[0] for n in cfg.notes] == ["trainer_resources"] and "not used" in cfg.notes[0]
    assert "# LLMForge key trainer_resources: not used" in format_config(cfg)
    assert load_config(cfg, ["seed=1"]).notes == cfg.notes
    assert load_config(BASE).notes == []


def test_every_problem_of_the_new_keys_is_reported_at_once(monkeypatch):
    monkeypatch.delenv("ANYSCALE_CLUSTER_ID", raising=False)
    problems = problems_of({"no_gradient_checkpoint": 1, "max_num_checkpoints": -1, "num_data_blocks_per_device": 0,
                            "embedding_scaling_technique": "ntk", "learning_rate": -1,
                            "worker_resources": {"anyscale/accelerator_shape:8xH100": 1}})
    assert sorted(p.split(":")[0] for p in problems) == [
        "embedding_scaling_technique", "learning_rate", "max_num_checkpoints", "no_gradient_checkpoint",
        "num_data_blocks_per_device", "worker_resources.anyscale/accelerator_shape"]


# --- over-length examples and the derived context length, against LLMForge's choices
def test_the_fields_document_how_they_differ_from_llmforge():
    fields = FinetuneConfig.model_fields
    assert "LLMForge truncates" in fields["overlength"].description
    assert "Set truncate to follow LLMForge" in fields["overlength"].description
    assert "LLMForge takes the larger" in fields["context_length"].description
    assert "capped at the model's max_position_embeddings" in fields["context_length"].description


@pytest.fixture
def short_model(tmp_path, tiny_model_dir) -> Path:
    """The tiny model with a 64-position maximum, shorter than the longest examples below."""
    out = tmp_path / "short-model"
    shutil.copytree(tiny_model_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def long_and_short(tmp_path) -> Path:
    """Examples from ~20 to ~150 tokens."""
    records = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                             {"role": "assistant", "content": " ".join(str(k) for k in range(i))}]}
               for i in range(1, 80, 4)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("overlength", ["auto", "truncate"])
def test_derived_context_is_capped_at_the_model_maximum_and_the_manifest_counts(short_model, long_and_short, tmp_path,
                                                                                 overlength):
    from forgekit.prepare import prepare_data

    cfg = load_config({"model_id": str(short_model), "train_path": str(long_and_short), "overlength": overlength})
    m = prepare_data(cfg, use_gpu=False, root=tmp_path / f"cache-{overlength}").manifest
    # LLMForge would take max(the data's need, the model's 64): forgekit keeps the model's maximum
    assert m["context_length"] == 64 and m["token_length"]["max"] > 64
    if overlength == "auto":  # instruction_tuning: dropped, as forgekit's default; LLMForge would truncate
        assert m["dropped_overlength"] > 0 and m["truncated"] == 0
    else:
        assert m["truncated"] > 0 and m["dropped_overlength"] == 0
    assert m["train_rows"] == m["train_examples"] - m["dropped_overlength"] - m.get("dropped_unsupervised", 0)
