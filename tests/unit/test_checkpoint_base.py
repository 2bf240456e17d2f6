"""The base model a checkpoint records and where forgekit finds it (`forgekit.models`): the name as the user wrote
it, an embedded alias as its Hub id, and the fallbacks of `adapter_base` in order. A real run's checkpoint, moved
to another machine: tests/integration/test_checkpoint_portability.py."""

from __future__ import annotations

import json

import pytest

from forgekit.models import (
    CHECKPOINT_META,
    MARKER,
    ModelError,
    adapter_base,
    base_model_metadata,
    base_model_name,
)

HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _checkpoint(path, recorded, meta=None):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": recorded}))
    if meta is not None:
        (path / CHECKPOINT_META).write_text(json.dumps({"base_model": meta}))
    return path


@pytest.fixture
def embedded(tmp_path, monkeypatch):
    """A fetched embedded model in a cache of the test's own (only its marker: nothing here loads it)."""
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path / "cache"))
    where = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    where.mkdir(parents=True)
    (where / MARKER).write_text(json.dumps({"name": "smollm2-135m-instruct", "hf_id": HF_ID}))
    return where


def test_the_recorded_name_is_what_the_user_wrote():
    assert base_model_name("org/model") == "org/model"
    assert base_model_name("models/mine") == "models/mine"  # relative: peft resolves it where it loads
    assert base_model_name("s3://bucket/models/mine") == "s3://bucket/models/mine"
    assert base_model_name("org/model", "runs/a/checkpoints/step-000010") == "runs/a/checkpoints/step-000010"
    assert base_model_name("smollm2-135m-instruct") == HF_ID  # forgekit's alias: the Hub id, which peft can load


def test_metadata_keeps_where_the_base_was_found(embedded, tmp_path, monkeypatch):
    import huggingface_hub.constants

    meta = base_model_metadata("smollm2-135m-instruct", None, str(embedded))
    assert meta == {"name": HF_ID, "model_id": "smollm2-135m-instruct", "initial_base_model_ckpt_path": None,
                    "local_path": str(embedded), "embedded": "smollm2-135m-instruct"}
    # a Hub id: the snapshot the Hugging Face cache holds
    repo = tmp_path / "hub" / "models--org--model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert base_model_metadata("org/model", None, "org/model")["local_path"] == str(repo / "snapshots" / "abc123")
    assert base_model_metadata("org/other", None, "org/other")["local_path"] == "org/other"  # not cached


def test_adapter_base_tries_the_name_then_where_the_run_found_it(tmp_path, monkeypatch):
    (tmp_path / "here" / "models" / "mine").mkdir(parents=True)
    found = tmp_path / "found"
    found.mkdir()
    ckpt = _checkpoint(tmp_path / "ckpt", "models/mine", {"name": "models/mine", "local_path": str(found)})
    monkeypatch.chdir(tmp_path / "here")
    assert adapter_base(ckpt) == ("models/mine", "models/mine")  # the name resolves here: peft's own answer
    monkeypatch.chdir(tmp_path)
    assert adapter_base(ckpt) == ("models/mine", str(found))  # it does not: where the run found the base
    found.rmdir()
    assert adapter_base(ckpt) == ("models/mine", "models/mine")  # neither: the name, for the caller's error
    hub = _checkpoint(tmp_path / "hub-ckpt", "org/model", {"name": "org/model", "local_path": "org/model"})
    assert adapter_base(hub) == ("org/model", "org/model")  # a Hub id: the Hugging Face cache or the Hub
    old = _checkpoint(tmp_path / "old", str(tmp_path / "here" / "models" / "mine"))  # no forgekit_checkpoint.json
    assert adapter_base(old) == (str(tmp_path / "here" / "models" / "mine"),) * 2
    with pytest.raises(ModelError, match="no base_model_name_or_path"):
        adapter_base(_checkpoint(tmp_path / "none", None))


def test_a_run_on_the_embedded_model_loads_the_embedded_copy(embedded, tmp_path):
    """Recorded as the Hub id (for plain peft); forgekit loads the copy the run trained on, not the Hub's weights."""
    ckpt = _checkpoint(tmp_path / "ckpt", HF_ID, {"name": HF_ID, "local_path": "/elsewhere/gone",
                                                  "embedded": "smollm2-135m-instruct"})
    assert adapter_base(ckpt) == (HF_ID, str(embedded))
