"""The bring-any-HF-model cookbook trains from its own weights dir in role templates and scores both formats."""

from __future__ import annotations

import json

import yaml

from tests.notebooks.harness import run_notebook

NOTEBOOK = "cookbooks/bring_any_hf_model/bring_any_hf_model.ipynb"


def test_notebook_trains_from_own_weights_and_compares_serving_formats(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(
        NOTEBOOK,
        {
            "RUN_ROOT": str(root),
            "MODEL_ID": str(tiny_model_dir),
            "N_TEST": 2,
            "MAX_NEW_TOKENS": 8,
            "OVERRIDES": ["max_steps=2", "num_devices=1"],
        },
        tmp_path,
    )
    weights = root / "my-weights"
    assert (weights / "model.safetensors").is_file() and (weights / "tokenizer_config.json").is_file()
    run_dir = root / "runs" / "own-weights"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["initial_base_model_ckpt_path"] == str(weights)
    assert config["generation_config"]["prompt_format"]["user"] == "### Customer message\n{instruction}\n\n"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 2
    checkpoint = run_dir / "checkpoints" / result["best_checkpoint"].rsplit("/", 1)[-1]
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(weights)
    # the checkpoint's tokenizer serves in the training format, not the base model's chat template
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(checkpoint).apply_chat_template(
        [{"role": "user", "content": "Where is my order?"}], tokenize=False, add_generation_prompt=True
    )
    assert served == "### Customer message\nWhere is my order?\n\n### Ticket\n"
    comparison = json.loads((root / "format_mismatch.json").read_text())
    assert set(comparison) == {"training format", "base model's chat template"}
    for scores in comparison.values():
        assert len(scores["answers"]) == 2
        assert 0 <= scores["fields_right"] <= scores["valid_json"] <= 1  # fields only count in valid tickets
    assert (root / "loss.png").stat().st_size > 10_000
