"""forgekit.preference: every preference format read to the same pairs, every bad record's message, and the rows
prepare_data caches for `task: preference_tuning`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgekit.config import load_config
from forgekit.data import DataError
from forgekit.preference import read_pairs, tokenize_pair

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my order?"}]
GOOD = [{"role": "assistant", "content": "Steps: 1. open Orders 2. click Track."}]
BAD = [{"role": "assistant", "content": "No idea."}]


def write(path: Path, records: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_every_paired_format_reads_to_the_same_pair_and_rows(tmp_path, tokenizer):
    records = {
        "llmforge": {"chosen": PROMPT + GOOD, "rejected": PROMPT + BAD},
        "silogen": {"prompt_messages": PROMPT, "chosen_messages": GOOD, "rejected_messages": BAD},
        "trl": {"prompt": PROMPT, "chosen": GOOD, "rejected": BAD},
    }
    rows = {}
    for name, record in records.items():
        (pair,) = read_pairs(write(tmp_path / f"{name}.jsonl", [record]))
        assert (pair.prompt, pair.chosen, pair.rejected, pair.line) == (PROMPT, GOOD, BAD, 1), name
        rows[name] = tokenize_pair(pair, tokenizer)
    assert rows["llmforge"] == rows["silogen"] == rows["trl"]
    row = rows["trl"]
    # the prompt ends with the generation prompt; each answer is the rest of its whole rendered conversation
    whole = tokenizer.apply_chat_template(PROMPT + GOOD, tokenize=True)["input_ids"]
    assert row["prompt_ids"] + row["chosen_ids"] == list(whole)
    assert tokenizer.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(row["chosen_ids"]).startswith("Steps: 1.")
    assert tokenizer.decode(row["rejected_ids"]).strip() == "No idea.<|im_end|>"


def test_kto_records_read_with_their_label(tmp_path, tokenizer):
    path = write(tmp_path / "kto.jsonl", [{"prompt": PROMPT, "completion": GOOD, "label": True},
                                          {"prompt": PROMPT, "completion": BAD, "label": False}])
    good, bad = read_pairs(path, "kto")
    assert (good.label, bad.label, good.rejected) == (True, False, None)
    row = tokenize_pair(bad, tokenizer)
    assert row["label"] is False and tokenizer.decode(row["completion_ids"]).startswith("No idea.")


BAD_RECORDS = [
    ({"chosen": PROMPT + GOOD, "rejected": PROMPT + GOOD}, "chosen and rejected are the same answer"),
    ({"prompt": PROMPT, "chosen": GOOD, "rejected": GOOD}, "chosen and rejected are the same answer"),
    ({"chosen": PROMPT + GOOD, "rejected": [PROMPT[0], {"role": "user", "content": "Other?"}] + BAD},
     "the prompts differ between chosen and rejected (first at messages[1])"),
    ({"chosen": PROMPT + GOOD, "rejected": [{"role": "system", "content": "Be long."}, PROMPT[1]] + BAD},
     "the prompts differ between chosen and rejected (first at messages[0])"),
    ({"chosen": PROMPT + GOOD, "rejected": PROMPT + [{"role": "user", "content": "and?"}]},
     "'rejected' has no assistant turn at its end"),
    ({"prompt_messages": PROMPT, "chosen_messages": [{"role": "user", "content": "hi"}], "rejected_messages": BAD},
     "'chosen_messages' has no assistant turn at its end"),
    ({"prompt": PROMPT, "chosen": GOOD}, "missing 'rejected' (trl format)"),
    ({"prompt": "Where is my order?", "chosen": "Steps", "rejected": "No"}, "'prompt', 'chosen', 'rejected': text; forgekit reads conversations"),
    ({"prompt": PROMPT, "completion": GOOD, "label": True}, "a KTO (unpaired) record, but loss_type sigmoid"),
    ({"messages": PROMPT + GOOD}, "not a preference record (keys found: messages)"),
    ({"prompt": [{"role": "user", "content": ""}], "chosen": GOOD, "rejected": BAD}, "chosen: messages[0] (user): empty content"),
    ("{not json", "invalid JSON"),
]


@pytest.mark.parametrize(("record", "message"), BAD_RECORDS, ids=[m[:40] for _, m in BAD_RECORDS])
def test_every_bad_record_gives_its_message_with_file_and_line(tmp_path, record, message):
    path = write(tmp_path / "train.jsonl", [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}, record])
    with pytest.raises(DataError) as e:
        read_pairs(path)
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith(f"{path}:2: "), e.value.problems
    assert message in e.value.problems[0], e.value.problems


def test_kto_loss_rejects_pairs_and_label_must_be_boolean(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD},
                                        {"prompt": PROMPT, "completion": GOOD, "label": "yes"}])
    with pytest.raises(DataError) as e:
        read_pairs(path, "kto")
    assert [p.split(": ", 1)[1] for p in e.value.problems] == [
        "a paired record, but loss_type kto trains on prompt + completion + label records",
        "'label' must be true or false (got 'yes')"]


def config(tiny_model_dir: Path, train: str, valid: str | None = None, **extra) -> dict:
    return {"model_id": str(tiny_model_dir), "train_path": train, "task": "preference_tuning",
            **({"valid_path": valid} if valid else {}), **extra}


def test_checks_and_prepare_read_pairs_and_name_every_bad_line(tmp_path, tiny_model_dir):
    from forgekit.checks import check_data
    from forgekit.hardware import detect_hardware

    good = {"prompt": PROMPT, "chosen": GOOD, "rejected": BAD}
    train = write(tmp_path / "train.jsonl", [good, {"chosen": PROMPT + GOOD, "rejected": PROMPT + GOOD}])
    valid = write(tmp_path / "valid.jsonl", [good, good, {"prompt": PROMPT, "chosen": BAD}])
    cfg = load_config(config(tiny_model_dir, train, valid))
    with pytest.raises(DataError) as e:
        check_data(cfg, detect_hardware(cfg, use_gpu=False))
    assert [p.split(": ")[0] for p in e.value.problems] == [f"{train}:2", f"{valid}:3"]


def test_prepare_data_caches_the_pairs_rows_with_a_derived_context(tmp_path, tiny_model_dir, tokenizer):
    from datasets import load_from_disk

    from forgekit.prepare import prepare_data

    records = [{"prompt": [{"role": "user", "content": f"question {i}"}], "chosen": GOOD, "rejected": BAD}
               for i in range(6)]
    cfg = load_config(config(tiny_model_dir, write(tmp_path / "t.jsonl", records), write(tmp_path / "v.jsonl", records[:2])))
    prepared = prepare_data(cfg, use_gpu=False, root=tmp_path / "cache")
    m = prepared.manifest
    assert (m["train_rows"], m["valid_rows"], m["context_length"], m["preference_format"]) == (6, 2, 512, "paired")
    train = load_from_disk(str(prepared.train_dir))
    assert set(train.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids", "length"}
    (pair,) = read_pairs(write(tmp_path / "one.jsonl", records[:1]))
    assert {k: train[0][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} == tokenize_pair(pair, tokenizer)
    assert prepare_data(cfg, use_gpu=False, root=tmp_path / "cache").manifest["cache_hit"] is True


def test_a_pair_longer_than_the_context_is_an_error(tmp_path, tiny_model_dir):
    from forgekit.prepare import prepare_data

    long = [{"role": "assistant", "content": "word " * 80}]
    path = write(tmp_path / "t.jsonl", [{"prompt": PROMPT, "chosen": GOOD, "rejected": BAD},
                                        {"prompt": PROMPT, "chosen": long, "rejected": BAD}])
    cfg = load_config(config(tiny_model_dir, path, context_length=64))
    with pytest.raises(DataError) as e:
        prepare_data(cfg, use_gpu=False, root=tmp_path / "cache")
    (problem,) = e.value.problems
    assert problem.startswith(f"{path}:2: the pair is ") and "longer than context_length 64" in problem


def test_llmforge_preference_config_validates_with_notes():
    """LLMForge's published preference configs (0.5.x) validate as they are; what forgekit does is noted."""
    cfg = load_config({
        "model_id": "meta-llama/Meta-Llama-3-8B-Instruct", "train_path": "s3://b/train.jsonl",
        "task": "preference_tuning", "num_devices": 4, "num_epochs": 3, "learning_rate": 5e-6,
        "train_batch_size_per_device": 2, "num_data_blocks_per_device": 4, "no_gradient_checkpoint": False,
        "deepspeed": {"config_path": "deepspeed_configs/zero_3_offload_optim+param.json"},
        "preference_tuning_config": {"beta": 0.01, "logprob_processor_scaling_config": {
            "custom_resources": {"accelerator_type:A100-80G": 0.001}, "concurrency": 2, "batch_size": 8}},
        "lora_config": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
    })
    assert cfg.preference_tuning_config.beta == 0.01 and cfg.preference_tuning_config.loss_type == "sigmoid"
    notes = "\n".join(cfg.notes)
    assert "custom_resources, concurrency not used" in notes and "precompute_ref_batch_size" in notes
    assert "num_data_blocks_per_device" in notes and "gradient_checkpointing: true" in notes


@pytest.mark.parametrize("loss_type", ["kto", "simpo"])
def test_rpo_alpha_with_a_loss_it_cannot_join_names_the_key(loss_type):
    from forgekit.config import ConfigError

    base = {"model_id": "m", "train_path": "t.jsonl", "task": "preference_tuning"}
    assert load_config({**base, "preference_tuning_config": {"rpo_alpha": 1.0}}).preference_tuning_config.rpo_alpha == 1
    with pytest.raises(ConfigError) as e:
        load_config({**base, "preference_tuning_config": {"rpo_alpha": 1.0, "loss_type": loss_type}})
    assert "preference_tuning_config" in str(e.value) and f"not with loss_type {loss_type}" in str(e.value)
