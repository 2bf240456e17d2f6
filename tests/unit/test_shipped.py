"""forgekit.shipped: the shipped configs and presets found, listed, copied; a config's relative paths resolved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from forgekit.config import load_config
from forgekit.shipped import (
    ShippedError,
    copy_shipped,
    format_listing,
    list_shipped,
    resolve_shipped,
    shipped_root,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_checkout_is_the_shipped_root_and_everything_is_listed():
    assert shipped_root() == REPO  # an editable install: the top-level folders themselves (a wheel: forgekit/_shipped)
    on_disk = sorted(p.relative_to(REPO).as_posix() for d in ("training_configs", "deepspeed_configs")
                     for p in (REPO / d).rglob("*") if p.suffix in (".yaml", ".json"))
    assert list_shipped() == on_disk


def test_listing_groups_like_training_configs():
    text = format_listing()
    groups = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert groups == ["training_configs/quickstart/", "training_configs/default/", "training_configs/custom/",
                      "deepspeed_configs/"]
    assert "  quickstart/smollm2-135m-lora-cpu.yaml" in text and "CPU only" in text


@pytest.mark.parametrize("name", ["training_configs/quickstart/smollm2-135m-lora-cpu.yaml",
                                  "quickstart/smollm2-135m-lora-cpu.yaml", "quickstart/smollm2-135m-lora-cpu",
                                  "smollm2-135m-lora-cpu"])
def test_names_resolve_with_or_without_folder_and_suffix(name):
    assert resolve_shipped(name) == REPO / "training_configs/quickstart/smollm2-135m-lora-cpu.yaml"


def test_unknown_and_ambiguous_names_say_what_to_give():
    with pytest.raises(ShippedError, match=r"did you mean 'zero_3.json'"):
        resolve_shipped("zero3.json")
    with pytest.raises(ShippedError, match=r"names 2 shipped files; give one of them: custom/HuggingFaceTB"):
        resolve_shipped("2xCPU-256")


def test_copy_refuses_to_overwrite_without_force(tmp_path):
    target = copy_shipped("zero_2", tmp_path)
    assert target == tmp_path / "zero_2.json" and json.loads(target.read_text())["zero_optimization"]["stage"] == 2
    target.write_text("{}")
    with pytest.raises(ShippedError, match="exists; pass --force"):
        copy_shipped("zero_2.json", target)
    assert target.read_text() == "{}"
    copy_shipped("zero_2.json", target, force=True)
    assert target.read_text() == (REPO / "deepspeed_configs/zero_2.json").read_text()
    assert copy_shipped("zero_0", f"{tmp_path}/new/") == tmp_path / "new" / "zero_0.json"  # DEST/: a folder


def _config(folder: Path, **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump({"model_id": "m", "train_path": "train.jsonl", **keys}))
    return path


def test_deepspeed_path_resolves_beside_the_config_then_cwd_then_the_shipped_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = {"deepspeed": {"config_path": "deepspeed_configs/zero_2.json"}}
    path = _config(tmp_path / "cfg", **ds)
    assert load_config(path).deepspeed.config_path == str(REPO / "deepspeed_configs/zero_2.json")  # shipped
    (tmp_path / "deepspeed_configs").mkdir()
    (tmp_path / "deepspeed_configs/zero_2.json").write_text("{}")
    assert load_config(path).deepspeed.config_path == "deepspeed_configs/zero_2.json"  # the current directory
    (tmp_path / "cfg/deepspeed_configs").mkdir()
    (tmp_path / "cfg/deepspeed_configs/zero_2.json").write_text("{}")
    assert load_config(path).deepspeed.config_path == str(tmp_path / "cfg/deepspeed_configs/zero_2.json")
    # a bare preset name, and a path found nowhere (left as written: the run reports it missing)
    assert load_config(_config(tmp_path / "b", deepspeed={"config_path": "zero_3.json"})).deepspeed.config_path == (
        str(REPO / "deepspeed_configs/zero_3.json"))
    missing = _config(tmp_path / "m", deepspeed={"config_path": "nowhere/zero_9.json"})
    assert load_config(missing).deepspeed.config_path == "nowhere/zero_9.json"


def test_data_paths_resolve_beside_the_config_when_the_file_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path / "cfg", valid_path="data/valid.jsonl")
    assert load_config(path).train_path == "train.jsonl"  # not beside it: the current directory, as today
    (tmp_path / "cfg/train.jsonl").write_text("")
    (tmp_path / "cfg/data").mkdir()
    (tmp_path / "cfg/data/valid.jsonl").write_text("")
    cfg = load_config(path)
    assert (cfg.train_path, cfg.valid_path) == (str(tmp_path / "cfg/train.jsonl"), str(tmp_path / "cfg/data/valid.jsonl"))
    # a command-line override is the user's, relative to where they are; URLs and dataset names are left alone
    assert load_config(path, ["train_path=train.jsonl"]).train_path == "train.jsonl"
    hub = _config(tmp_path / "hub", train_path="org/dataset:train", valid_path="s3://b/v.jsonl")
    assert (load_config(hub).train_path, load_config(hub).valid_path) == ("org/dataset:train", "s3://b/v.jsonl")
