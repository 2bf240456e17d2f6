"""forgekit.storage (and data paths) against a real S3-compatible server: moto's standalone server on 127.0.0.1.

The module starts `moto_server` on a free port, points the AWS variables at it (as a user points forgekit at
MinIO: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), creates a bucket, and ends the server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgekit import storage
from forgekit.data import DataError, read_examples
from tests.integration.servers import S3_SECRET as SECRET
from tests.integration.servers import free_port, moto_s3
from tests.integration.servers import fresh_s3fs as _fresh_s3fs

pytest.importorskip("s3fs")

BUCKET = "forgekit-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """`s3://<bucket>` on a fresh moto server; the AWS variables point at it for the module."""
    with moto_s3(tmp_path_factory.mktemp("moto"), BUCKET) as url:
        yield url


@pytest.fixture
def env(monkeypatch):
    yield monkeypatch
    _fresh_s3fs()  # a test that changed the AWS variables leaves no filesystem built from them


def test_chat_jsonl_train_path_is_read_from_s3(s3, tmp_path):
    from forgekit.examples.sample_data import write_quickstart_dataset

    local = write_quickstart_dataset(tmp_path / "tickets", n_train=6, n_valid=2, n_test=1)["train"]
    url = f"{s3}/data/train.jsonl"
    storage.write_text(url, Path(local).read_text())
    remote = read_examples(url)
    assert [e.messages for e in remote] == [e.messages for e in read_examples(str(local))]
    assert remote[0].source == url and [e.line for e in remote] == list(range(1, 7))
    with pytest.raises(DataError, match=rf"{s3}/data/missing.jsonl: file not found"):
        read_examples(f"{s3}/data/missing.jsonl")
    storage.write_text(f"{s3}/data/bad.jsonl", '{"messages": []}\nnot json\n')
    with pytest.raises(DataError) as e:
        read_examples(f"{s3}/data/bad.jsonl")
    assert e.value.problems == [f"{s3}/data/bad.jsonl:1: 'messages' must be a non-empty list",
                                f"{s3}/data/bad.jsonl:2: invalid JSON (Expecting value at column 1)"]


def test_a_run_directory_is_written_listed_and_read_on_s3(s3, tmp_path):
    run = storage.join(s3, "runs", "run-1")
    assert not storage.exists(run) and storage.listdir(run) == []
    storage.write_text(storage.join(run, "config.yaml"), "learning_rate: 0.0001\n")
    rows = [{"kind": "train", "step": s, "loss": 2.0 / s} for s in (1, 2)]
    storage.write_text(storage.join(run, "metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = tmp_path / "step-000002"
    (checkpoint / "nested").mkdir(parents=True)
    (checkpoint / "adapter_config.json").write_text("{}")
    (checkpoint / "nested" / "rng_state.pth").write_bytes(b"\0" * 1000)
    storage.upload_dir(checkpoint, storage.join(run, "checkpoints", "step-000002"))

    assert storage.exists(run)
    assert storage.listdir(run) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    assert storage.listdir(storage.join(run, "checkpoints")) == ["step-000002"]
    assert storage.read_text(storage.join(run, "config.yaml")) == "learning_rate: 0.0001\n"
    assert [json.loads(x) for x in storage.read_text(storage.join(run, "metrics.jsonl")).splitlines()] == rows
    back = storage.download_dir(storage.join(run, "checkpoints", "step-000002"), tmp_path / "back")
    assert (back / "nested" / "rng_state.pth").read_bytes() == b"\0" * 1000
    storage.write_text(storage.join(run, "config.yaml"), "learning_rate: 0.001\n")  # replaced whole
    assert storage.read_text(storage.join(run, "config.yaml")) == "learning_rate: 0.001\n"
    storage.remove(storage.join(run, "checkpoints", "step-000002"))
    assert storage.listdir(storage.join(run, "checkpoints")) == []
    with pytest.raises(storage.StorageError, match=r"output_dir: s3://.*/nothing.txt: file not found"):
        storage.read_text(storage.join(run, "nothing.txt"), key="output_dir")


def test_a_model_and_an_adapter_on_s3_are_localized_once_and_load(s3, tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache"
    model_url = f"{s3}/models/tiny"
    storage.upload_dir(tiny_model_dir, model_url)
    local = storage.localize(model_url, cache, key="initial_base_model_ckpt_path")
    assert local.parent == cache and local != Path(tiny_model_dir)
    assert storage.localize(model_url, cache) == local and len(list(cache.iterdir())) == 1  # downloaded once
    ids = AutoTokenizer.from_pretrained(local)("the printer is out of toner", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        assert torch.equal(AutoModelForCausalLM.from_pretrained(local)(ids).logits, expected)

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # not a no-op
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora)
    adapter.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        adapted = adapter(ids).logits
    adapter_url = f"{s3}/runs/run-1/checkpoints/step-000003"
    storage.upload_dir(tmp_path / "adapter", adapter_url)
    local_adapter = storage.localize(adapter_url, cache, key="initial_adapter_model_ckpt_path")
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local), local_adapter)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, adapted, atol=1e-6)
        assert not torch.allclose(adapted, expected, atol=1e-3)

    # a checkpoint rewritten at the same URL is a new copy; the unchanged model's copy is kept
    storage.write_text(f"{adapter_url}/README.md", "retrained\n")
    again = storage.localize(adapter_url, cache)
    assert again != local_adapter and (again / "README.md").read_text() == "retrained\n"
    assert storage.localize(model_url, cache) == local


def test_the_pyarrow_filesystem_for_ray_writes_and_lists_objects(s3, tmp_path):
    import pyarrow.fs

    storage_path, fs = storage.ray_storage(f"{s3}/ray-runs")
    assert storage_path == f"{BUCKET}/ray-runs" and isinstance(fs, pyarrow.fs.FileSystem)
    # what Ray Train does with a checkpoint directory: copy it into <storage_path>/<run>/<checkpoint>
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    (checkpoint / "trainer_state.json").write_text('{"global_step": 3}')
    target = f"{storage_path}/run-1/checkpoint_000000"
    fs.create_dir(target)
    pyarrow.fs.copy_files(str(checkpoint), target, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)
    with fs.open_output_stream(f"{storage_path}/run-1/.validate_storage_marker") as f:
        f.write(b"ok")
    listed = fs.get_file_info(pyarrow.fs.FileSelector(f"{storage_path}/run-1", recursive=True))
    files = sorted(i.path.removeprefix(f"{storage_path}/run-1/") for i in listed if i.type == pyarrow.fs.FileType.File)
    assert files == [".validate_storage_marker", "checkpoint_000000/model.safetensors",
                     "checkpoint_000000/trainer_state.json"]
    # and forgekit's fsspec view sees the same objects
    assert storage.read_text(f"{s3}/ray-runs/run-1/checkpoint_000000/trainer_state.json") == '{"global_step": 3}'
    fs.delete_dir(f"{storage_path}/run-1/checkpoint_000000")  # what num_checkpoints_to_keep does through Ray
    assert storage.listdir(f"{s3}/ray-runs/run-1") == [".validate_storage_marker"]
    assert storage.ray_storage(tmp_path / "runs") == (str(tmp_path / "runs"), None)


def test_a_reachable_bucket_passes_the_check_and_takes_a_write(s3):
    storage.check_reachable(f"{s3}/runs", "output_dir", write=True)
    assert not [n for n in storage.listdir(f"{s3}/runs") if n.startswith(".forgekit-write-check")]


def test_a_missing_bucket_names_the_key(s3):
    with pytest.raises(storage.StorageError, match=r"output_dir: s3://no-such-bucket/runs: the bucket no-such-bucket "
                                                   r"does not exist"):
        storage.check_reachable("s3://no-such-bucket/runs", "output_dir")


def test_a_wrong_endpoint_is_a_clear_error_naming_the_key(s3, env):
    port = free_port()  # nothing listens there
    env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    env.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries of a refused connection
    _fresh_s3fs()
    with pytest.raises(storage.StorageError) as e:
        storage.check_reachable(f"{s3}/runs", "output_dir", write=True)
    assert str(e.value) == (f"output_dir: {s3}/runs: the storage server does not answer at "
                            f"http://127.0.0.1:{port} (AWS_ENDPOINT_URL)")
    with pytest.raises(DataError, match=r"the storage server does not answer"):
        read_examples(f"{s3}/data/train.jsonl")


def test_missing_credentials_are_a_clear_error_without_secrets(s3, env):
    env.delenv("AWS_ACCESS_KEY_ID")
    env.delenv("AWS_SECRET_ACCESS_KEY")
    _fresh_s3fs()
    with pytest.raises(storage.StorageError) as e:
        storage.check_reachable(f"{s3}/runs", "output_dir")
    assert str(e.value).startswith(f"output_dir: {s3}/runs: no credentials: set AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY")
    assert SECRET not in str(e.value)


def test_a_tokenization_cache_on_s3_is_reused_by_another_machine(s3, tiny_model_dir, tmp_path, monkeypatch):
    """`FORGEKIT_CACHE=s3://...`: the first machine's tokenized data lands on the bucket, a second machine (another
    home, so another local cache) finds it there instead of tokenizing, and a worker on a third fetches it."""
    import shutil

    from datasets import load_from_disk

    from forgekit import prepare
    from forgekit.config import load_config
    from forgekit.examples.sample_data import write_quickstart_dataset

    data = write_quickstart_dataset(tmp_path / "tickets", n_train=6, n_valid=2, n_test=1)
    cfg = load_config({"model_id": str(tiny_model_dir), "train_path": str(data["train"]),
                       "valid_path": str(data["valid"]), "context_length": 256})
    monkeypatch.setenv("FORGEKIT_CACHE", f"{s3}/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "machine-1"))
    monkeypatch.chdir(tmp_path)
    first = prepare.prepare_data(cfg, use_gpu=False)
    key = first.manifest["cache_key"]
    assert not first.manifest["cache_hit"] and first.shared_dir == f"{s3}/cache/prepared/{key}"
    assert first.cache_dir == tmp_path / "machine-1" / ".cache" / "forgekit" / "prepared" / key
    assert storage.listdir(first.shared_dir) == ["manifest.json", "tokenizer", "train", "valid"]
    assert not list(tmp_path.rglob("s3:*"))  # nothing in a local folder named after the URL

    monkeypatch.setenv("HOME", str(tmp_path / "machine-2"))
    monkeypatch.setattr(prepare, "_build", lambda *a: pytest.fail("tokenized again: the shared cache was not used"))
    second = prepare.prepare_data(cfg, use_gpu=False)
    assert second.manifest["cache_hit"] and second.manifest["cache_key"] == key
    assert second.cache_dir == tmp_path / "machine-2" / ".cache" / "forgekit" / "prepared" / key
    for split in ("train_dir", "valid_dir"):
        assert load_from_disk(str(getattr(second, split)))[:] == load_from_disk(str(getattr(first, split)))[:]

    # a worker on a machine without the driver's copy fetches the data from the bucket
    shutil.rmtree(first.cache_dir)
    monkeypatch.setenv("HOME", str(tmp_path / "machine-3"))
    on_node = prepare.node_data(first)
    assert on_node.cache_dir == tmp_path / "machine-3" / ".cache" / "forgekit" / "prepared" / key
    assert load_from_disk(str(on_node.train_dir))[:] == load_from_disk(str(second.train_dir))[:]
    assert (on_node.tokenizer_dir / "tokenizer_config.json").is_file()
