"""A Hugging Face id served by the embedded copy is announced, and FORGEKIT_EMBEDDED=0 leaves it to the Hub."""

from __future__ import annotations

import logging

import pytest

from forgekit import models
from forgekit.models import EMBEDDED_ENV, MARKER, resolve_model_path

HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def fetched_cache(tmp_path, monkeypatch):
    """A cache holding a complete (marker-bearing) copy of the embedded model, and a fresh warn-once memory."""
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path))
    monkeypatch.delenv(EMBEDDED_ENV, raising=False)
    monkeypatch.setattr(models, "_warned", set())
    copy = tmp_path / "models" / "SmolLM2-135M-Instruct"
    copy.mkdir(parents=True)
    (copy / MARKER).write_text("{}")
    return copy


def test_hf_id_resolving_to_the_embedded_copy_says_so_once(fetched_cache, caplog):
    with caplog.at_level(logging.INFO, logger="forgekit"):
        assert resolve_model_path(HF_ID) == str(fetched_cache)
        assert resolve_model_path(HF_ID) == str(fetched_cache)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(fetched_cache) in warnings[0] and "Q4_1" in warnings[0] and f"{EMBEDDED_ENV}=0" in warnings[0]


def test_the_alias_resolves_quietly(fetched_cache, caplog):
    with caplog.at_level(logging.INFO, logger="forgekit"):
        assert resolve_model_path("smollm2-135m-instruct") == str(fetched_cache)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("value", ["0", "false", "off", " NO "])
def test_env_var_leaves_the_hf_id_to_the_hub(fetched_cache, monkeypatch, caplog, value):
    monkeypatch.setenv(EMBEDDED_ENV, value)
    with caplog.at_level(logging.INFO, logger="forgekit"):
        assert resolve_model_path(HF_ID) == HF_ID
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the alias names the embedded copy itself: the switch does not apply to it
    assert resolve_model_path("smollm2-135m-instruct") == str(fetched_cache)


def test_env_var_on_keeps_the_embedded_copy(fetched_cache, monkeypatch):
    monkeypatch.setenv(EMBEDDED_ENV, "1")
    assert resolve_model_path(HF_ID) == str(fetched_cache)
