"""Tests for forgekit.prepare: masks per task, supervised-share guards, packing == unpacked, derived values,
over-length policies, the tokenization cache and collation. Uses the tiny model and its real tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgekit.config import ConfigError, load_config
from forgekit.data import DataError
from forgekit.prepare import (
    MIN_CONTEXT,
    _pow2_context,
    cache_root,
    collate,
    count_real_tokens,
    load_tokenizer,
    pack_rows,
    prepare_data,
)

LABELS = ["[[delivery]]", "[[damaged]]", "[[refund]]"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def chat(user: str, assistant: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    }


def counting_data(n: int = 12, start: int = 1) -> list[dict]:
    """Conversations of growing length: 'Count to i.' -> '0 1 ... i-1'."""
    return [chat(f"Count to {i}.", " ".join(str(k) for k in range(i))) for i in range(start, start + n)]


@pytest.fixture
def prep(tmp_path, tiny_model_dir):
    """prepare_data for a config dict (model: the tiny model) with a per-test cache root."""

    def run(records: list[dict] | None = None, path: Path | None = None, **cfg):
        if path is None:
            path = write_jsonl(tmp_path / "train.jsonl", records if records is not None else counting_data())
        data = {"model_id": str(tiny_model_dir), "train_path": str(path), **cfg}
        return prepare_data(load_config(data), use_gpu=False, root=tmp_path / "cache")

    return run


@pytest.fixture
def planned(tmp_path, tiny_model_dir):
    """The plan (forgekit.plan.plan_run, CPU) of a config dict like `prep`'s: what a run derives from the data."""
    from forgekit.plan import plan_run

    def run(records: list[dict] | None = None, **cfg):
        path = write_jsonl(tmp_path / "train.jsonl", records if records is not None else counting_data())
        data = {"model_id": str(tiny_model_dir), "train_path": str(path), **cfg}
        return plan_run(load_config(data), use_gpu=False, root=tmp_path / "cache")

    return run


def rows(prepared, split: str = "train") -> list[dict]:
    from datasets import load_from_disk

    return list(load_from_disk(str(prepared.train_dir if split == "train" else prepared.valid_dir)))


def trained_text(tok, row: dict) -> str:
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100])


# --- masking per task
def test_instruction_tuning_trains_replies_with_their_end_of_turn(prep, tokenizer):
    p = prep([chat("Hi", "Hello there!", system="Be brief."), chat("2+2?", "4")])
    got = sorted(trained_text(tokenizer, r) for r in rows(p))
    assert got == sorted(["Hello there!<|im_end|>\n", "4<|im_end|>\n"])
    m = p.manifest
    trained = sum(sum(x != -100 for x in r["labels"][1:]) for r in rows(p))
    assert m["supervised_tokens"] == trained
    assert m["supervised_share"] == pytest.approx(trained / sum(len(r["input_ids"]) - 1 for r in rows(p)))


def test_causal_lm_trains_every_token(prep, tokenizer):
    docs = [
        {"messages": [{"role": "user", "content": f"Article {i}: tents need dry storage."}]} for i in range(3)
    ]
    p = prep(docs, task="causal_lm", generation_config={"prompt_format": "passthrough"})
    assert len(rows(p)) == 3
    for r in rows(p):
        assert r["labels"] == r["input_ids"]
        assert r["input_ids"][-1] == tokenizer.eos_token_id  # each document ends with EOS, which is learnt
    assert p.manifest["supervised_share"] == 1.0


def test_classification_label_tokens_are_special_and_only_the_final_label_is_trained(prep, tokenizer):
    records = [
        {
            "messages": [
                {"role": "user", "content": "Where is my parcel?"},
                {"role": "assistant", "content": "[[delivery]]"},
                {"role": "user", "content": "And it arrived broken."},
                {"role": "assistant", "content": "[[damaged]]"},
            ]
        },
        chat("I want my money back", "[[refund]]"),
    ]
    p = prep(records, task="classification", classifier_config={"label_tokens": LABELS})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(p.tokenizer_dir)
    ids = tok.convert_tokens_to_ids(LABELS)
    assert all(i >= len(tokenizer) for i in ids)  # new tokens, one id each
    assert set(LABELS) <= {str(t) for t in tok.added_tokens_decoder.values() if t.special}
    trained = sorted([i for i, lab in zip(r["input_ids"], r["labels"]) if lab != -100] for r in rows(p))
    assert trained == sorted(
        [[ids[1]], [ids[2]]]
    )  # the final label alone, not the earlier one, no end-of-turn


def test_classification_rejects_an_unknown_label_with_its_line(prep, tmp_path):
    path = write_jsonl(tmp_path / "cls.jsonl", [chat("a", "[[delivery]]"), chat("b", "delivery")])
    with pytest.raises(DataError) as info:
        prep(path=path, task="classification", classifier_config={"label_tokens": LABELS})
    assert f"{path}:2: the last assistant message must be one of classifier_config.label_tokens" in str(
        info.value
    )


def test_load_tokenizer_keeps_existing_tokens_and_sets_the_training_template(tiny_model_dir, tokenizer):
    cfg = load_config(
        {
            "model_id": str(tiny_model_dir),
            "train_path": "x",
            "task": "classification",
            "classifier_config": {"label_tokens": ["<|im_end|>", "[[new]]"]},
            "generation_config": {"prompt_format": "chatml"},
        }
    )
    tok = load_tokenizer(cfg)
    assert len(tok) == len(tokenizer) + 1  # only the unknown label is added
    assert tok.chat_template != tokenizer.chat_template  # role templates are saved as the chat template


# --- guards against silent masking bugs
def _model_with_template(tmp_path: Path, tiny_model_dir: Path, template: str) -> Path:
    from transformers import AutoTokenizer

    out = tmp_path / "model-with-template"
    out.mkdir()
    shutil.copy(tiny_model_dir / "config.json", out / "config.json")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = template
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        # a template that drops the replies: nothing is trained
        (
            "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n{% endif %}{% endfor %}",
            "no token is trained (0% supervised). Hint:",
        ),
        # a template that drops the prompts: everything is trained although the task is instruction tuning
        (
            "{% for m in messages %}{% if m.role == 'assistant' %}{{ m.content }}\n{% endif %}{% endfor %}",
            "every token is trained (100% supervised) although task is 'instruction_tuning'. Hint:",
        ),
    ],
    ids=["0%", "100%"],
)
def test_supervised_share_guards(prep, tmp_path, tiny_model_dir, template, fragment):
    model = _model_with_template(tmp_path, tiny_model_dir, template)
    with pytest.raises(DataError) as info:
        prep(model_id=str(model))
    assert fragment in str(info.value)
    assert str(tmp_path / "train.jsonl") in str(info.value)


# --- packing
def test_pack_rows_best_fit_is_deterministic_and_respects_capacity():
    lengths = [50, 30, 70, 20, 10, 90, 40]
    bins = pack_rows(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 4  # 310 tokens need at least 4 rows of 100; best fit needs no more
    assert bins == pack_rows(lengths, 100)


@pytest.fixture(scope="module")
def packed_and_unpacked(tmp_path_factory, tiny_model_dir):
    """The same 12 conversations prepared packed (rows of <= 128 tokens) and unpacked."""
    tmp = tmp_path_factory.mktemp("packing")
    path = write_jsonl(tmp / "train.jsonl", counting_data(12))
    out = {}
    for packing in (False, True):
        cfg = load_config(
            {
                "model_id": str(tiny_model_dir),
                "train_path": str(path),
                "context_length": 128,
                "packing": packing,
            }
        )
        out[packing] = prepare_data(cfg, use_gpu=False, root=tmp / "cache")
    return out


def test_packed_rows_reset_position_ids_at_every_example(packed_and_unpacked):
    unpacked, packed = rows(packed_and_unpacked[False]), rows(packed_and_unpacked[True])
    lengths = sorted(len(r["input_ids"]) for r in unpacked)
    assert len(packed) < len(unpacked)  # several examples share a row
    seen = []
    for r in packed:
        assert len(r["input_ids"]) <= 128
        pos = r["position_ids"]
        starts = [k for k, p in enumerate(pos) if p == 0]
        assert starts[0] == 0
        for a, b in zip(starts, [*starts[1:], len(pos)]):
            assert pos[a:b] == list(range(b - a))  # each example counts from 0 again
            assert r["labels"][a] == -100  # no example's first token is predicted from the previous example
            seen.append(b - a)
    assert sorted(seen) == lengths
    m = packed_and_unpacked[True].manifest
    assert m["packed_rows"] == len(packed) and 0 < m["pack_fill"] <= 1


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_batch_loss_equals_unpacked_loss(packed_and_unpacked, tiny_model_dir, tokenizer, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attn
    )
    model.eval()
    pad = tokenizer.pad_token_id
    unpacked = collate(rows(packed_and_unpacked[False]), pad_token_id=pad)
    packed = collate(rows(packed_and_unpacked[True]), pad_token_id=pad)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        loss_unpacked = model(**unpacked).loss.item()
        loss_packed = model(**packed).loss.item()
    assert loss_packed == pytest.approx(loss_unpacked, abs=1e-4)
    # and a packed row really is one row: the model is not just seeing one example
    assert count_real_tokens(packed) == count_real_tokens(unpacked)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_no_example_attends_to_another_in_a_packed_row(packed_and_unpacked, tiny_model_dir, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attn
    )
    model.eval()
    row = max(rows(packed_and_unpacked[True]), key=lambda r: r["position_ids"].count(0))
    pos = row["position_ids"]
    starts = [k for k, p in enumerate(pos) if p == 0]
    assert len(starts) >= 2
    batch = collate([row], pad_token_id=0)
    with torch.no_grad():
        packed_logits = model(**batch).logits[0]
        for a, b in zip(starts, [*starts[1:], len(pos)]):
            alone = model(input_ids=torch.tensor([row["input_ids"][a:b]])).logits[0]
            torch.testing.assert_close(packed_logits[a:b], alone, atol=1e-4, rtol=1e-4)


# --- collation
def test_collate_pads_right_with_masked_labels():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = collate(feats, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert count_real_tokens(b) == 4
    b = collate(feats, pad_token_id=0, padding="max_length", context_length=6)
    assert b["input_ids"].shape == (2, 6) and count_real_tokens(b) == 4


def test_collate_rounds_the_width_up_to_a_multiple_but_not_past_context_length():
    feats = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    b = collate(feats, pad_token_id=0, multiple=2)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert collate(feats, pad_token_id=0, multiple=4)["input_ids"].shape == (2, 3)  # shorter than one multiple
    assert b["labels"][:, 3].tolist() == [-100, -100] and count_real_tokens(b) == 4
    long = [{"input_ids": list(range(70)), "labels": list(range(70))}]
    assert collate(long, pad_token_id=0, multiple=64)["input_ids"].shape == (1, 128)
    assert collate(long, pad_token_id=0, multiple=64, context_length=100)["input_ids"].shape == (1, 100)
    assert collate(long, pad_token_id=0, multiple=64, context_length=50)["input_ids"].shape == (1, 70)  # never cut


# --- derived values (default mode)
@pytest.mark.parametrize(
    ("lengths", "model_max", "expected"),
    [
        ([40] * 100, None, MIN_CONTEXT),  # short data: never below 512
        ([600] * 100, None, 1024),  # p95 600 -> next power of two
        ([512] * 100, None, 512),  # a power of two stays
        ([100] * 94 + [3000] * 6, None, 4096),  # p95 lies among the long examples
        ([100] * 96 + [3000] * 4, None, 512),  # ... or among the short ones
        ([5000] * 10, 4096, 4096),  # never above the model's maximum
        ([100] * 10, 256, 256),  # a model shorter than 512 wins over the minimum
    ],
)
def test_context_length_rule(lengths, model_max, expected):
    assert _pow2_context(lengths, model_max) == expected


def test_default_mode_derives_context_length_batch_and_epochs(prep, tmp_path, tiny_model_dir):
    from forgekit.plan import plan_run

    long_records = [chat("Repeat: " + "word " * (600 + 7 * i), "ok") for i in range(20)]
    path = write_jsonl(tmp_path / "long.jsonl", long_records)
    cfg = load_config(
        {"model_id": str(tiny_model_dir), "train_path": str(path), "min_num_update_steps": 12}, default=True
    )
    p = plan_run(cfg, use_gpu=False, root=tmp_path / "cache")
    r, m = p.resolved, p.data.manifest
    assert 600 < m["token_length"]["p95"] <= 1024
    assert r.context_length == 1024 and m["context_length_derived"] is True
    # CPU budget of 2048 tokens per device at 1024 tokens per row -> 2 rows; 20 rows / 2 = 10 steps per epoch
    assert (r.train_batch_size_per_device, r.gradient_accumulation_steps) == (2, 1)
    assert r.num_epochs == 2  # ceil(12 / 10)
    assert r.lora_config["r"] == 8
    assert {
        "context_length",
        "num_epochs",
        "train_batch_size_per_device",
        "gradient_accumulation_steps",
        "eval_batch_size_per_device",
        "lora_config",
    } <= r.derived
    # the user's own values are kept and not marked derived
    cfg = load_config(
        {
            "model_id": str(tiny_model_dir),
            "train_path": str(path),
            "context_length": 2048,
            "num_epochs": 3,
            "train_batch_size_per_device": 1,
        },
        default=True,
    )
    r = plan_run(cfg, use_gpu=False, root=tmp_path / "cache").resolved
    assert (r.context_length, r.num_epochs, r.train_batch_size_per_device) == (2048, 3, 1)
    assert not {"context_length", "num_epochs", "train_batch_size_per_device"} & r.derived


def test_context_length_never_exceeds_the_models_maximum(planned, tmp_path, tiny_model_dir):
    model = tmp_path / "short-model"
    model.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 256}))
    for f in tiny_model_dir.glob("*"):
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, model / f.name)
    p = planned([chat("Say " + "a " * 300, "ok"), *counting_data(3)], model_id=str(model))
    assert p.data.manifest["model_max_length"] == 256 and p.resolved.context_length == 256
    assert p.data.manifest["dropped_overlength"] == 1  # the 300-word example does not fit


def test_epochs_from_min_num_update_steps(planned):
    # 12 rows, 3 per step on 1 device: 4 steps per epoch -> 25 epochs for 100 steps
    p = planned(train_batch_size_per_device=3, gradient_accumulation_steps=1)
    assert p.resolved.num_epochs == 25 and "num_epochs" in p.resolved.derived
    # total_batch_size: derived per-device batch and accumulation
    p = planned(total_batch_size=6, max_batch_size_per_device=2, min_num_update_steps=4)
    r = p.resolved
    assert (r.train_batch_size_per_device, r.gradient_accumulation_steps) == (2, 3)
    assert r.num_epochs == 2  # 12 rows / 6 per step = 2 steps per epoch -> 2 epochs for 4 steps
    # the resolved config (as saved in the run directory's config.yaml) is itself valid: re-running it works
    again = load_config(r.model_dump(mode="json"))
    assert (again.total_batch_size, again.train_batch_size_per_device, again.gradient_accumulation_steps) == (
        6,
        2,
        3,
    )


# --- over-length policies
@pytest.mark.parametrize(
    ("task", "overlength", "dropped", "truncated"),
    [
        ("instruction_tuning", "auto", 6, 0),  # auto: drop for chat tasks
        ("instruction_tuning", "drop", 6, 0),
        ("causal_lm", "auto", 0, 6),  # auto: truncate for causal_lm
        ("causal_lm", "drop", 6, 0),
    ],
)
def test_overlength_policy_is_applied_and_counted(prep, task, overlength, dropped, truncated):
    # 12 examples of 38..63 tokens; the 6 longest exceed 48
    p = prep(counting_data(12), context_length=48, task=task, overlength=overlength)
    m = p.manifest
    lengths = sorted(len(r["input_ids"]) for r in rows(p))
    assert max(lengths) <= 48 and len(lengths) == 12 - dropped
    assert (m["dropped_overlength"], m["truncated"]) == (dropped, truncated)
    assert m["train_examples"] == 12 and m["train_examples_kept"] == 12 - dropped
    assert m["overlength_policy"] == ("truncate" if truncated else "drop")


def test_truncating_a_reply_away_drops_the_example_and_counts_it(prep):
    # instruction tuning + truncate: examples whose reply lies beyond the cut have nothing left to train
    records = [chat("Tell me a story. " + "Please. " * 40, "Once."), *counting_data(3)]
    p = prep(records, context_length=64, overlength="truncate")
    assert (p.manifest["truncated"], p.manifest["dropped_unsupervised"]) == (1, 1)
    assert p.manifest["train_examples_kept"] == 3


def test_nothing_fits_is_an_error(prep):
    with pytest.raises(DataError, match="no example fits context_length=16"):
        prep(counting_data(3, start=5), context_length=16)


def test_validation_split_is_prepared_with_the_same_policy(prep, tmp_path):
    # two validation examples fit in 64 tokens, two (117 and 120 tokens) do not
    valid = write_jsonl(tmp_path / "valid.jsonl", counting_data(2) + counting_data(2, start=30))
    p = prep(valid_path=str(valid), context_length=64)
    assert len(rows(p, "valid")) == 2
    assert (p.manifest["valid_examples"], p.manifest["valid_rows"]) == (4, 2)
    assert p.manifest["valid_counts"]["dropped_overlength"] == 2


# --- the cache
def test_cache_root_follows_forgekit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("FORGEKIT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "forgekit"
    from forgekit.models import shared_cache

    assert shared_cache() is None
    monkeypatch.setenv("FORGEKIT_CACHE", f"file://{tmp_path / 'c'}")
    assert (cache_root(), shared_cache()) == (tmp_path / "c", None)
    # on object storage: the tokenized data is cached there, the rest (models, downloads) on this machine
    monkeypatch.setenv("FORGEKIT_CACHE", "s3://bucket/forgekit-cache/")
    assert (cache_root(), shared_cache()) == (Path.home() / ".cache" / "forgekit", "s3://bucket/forgekit-cache")


def test_cache_is_reused_and_invalidated_by_data_tokenizer_and_format(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "train.jsonl", counting_data(4))

    def prepare(model=tiny_model_dir, **extra):
        cfg = load_config({"model_id": str(model), "train_path": str(data), **extra})
        return prepare_data(cfg, use_gpu=False)

    first = prepare()
    assert first.cache_dir.parent == tmp_path / "cache" / "prepared"
    assert first.manifest["cache_hit"] is False
    again = prepare()
    assert again.manifest["cache_hit"] is True and again.cache_dir == first.cache_dir
    # a config change that does not change tokens reuses the cache
    assert prepare(learning_rate=3e-4, padding="max_length").cache_dir == first.cache_dir

    # the data changes: a new entry; the old one is kept
    write_jsonl(data, counting_data(5))
    changed_data = prepare()
    assert changed_data.manifest["cache_hit"] is False and changed_data.cache_dir != first.cache_dir
    assert changed_data.manifest["train_examples"] == 5

    # the tokenizer changes (same data, same model weights)
    model = tmp_path / "model-b"
    shutil.copytree(tiny_model_dir, model)
    assert prepare(model=model).cache_dir == changed_data.cache_dir  # an identical copy hits
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["<|extra|>"], special_tokens=True)
    tok.save_pretrained(model)
    changed_tok = prepare(model=model)
    assert changed_tok.manifest["cache_hit"] is False
    assert changed_tok.cache_dir not in (first.cache_dir, changed_data.cache_dir)

    # the prompt format changes
    changed_fmt = prepare(generation_config={"prompt_format": "passthrough"})
    assert changed_fmt.manifest["cache_hit"] is False and changed_fmt.cache_dir != changed_data.cache_dir
    entries = [p for p in (tmp_path / "cache" / "prepared").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 4


def test_format_problems_are_config_errors(prep):
    with pytest.raises(ConfigError, match="unknown built-in format 'chatlm'"):
        prep(generation_config={"prompt_format": "chatlm"})


def test_the_cache_key_sees_a_tokenizer_change_that_keeps_the_vocabulary(tiny_model_dir, tmp_path):
    """A tokenizer.json with fewer BPE merges (same vocabulary, same template) tokenizes differently."""
    from transformers import AutoTokenizer

    from forgekit.prepare import _tokenizer_fingerprint

    changed = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, changed)
    spec = json.loads((changed / "tokenizer.json").read_text())
    spec["model"]["merges"] = spec["model"]["merges"][:1000]
    (changed / "tokenizer.json").write_text(json.dumps(spec))
    a, b = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(changed)
    assert a.get_vocab() == b.get_vocab() and a("Hello").input_ids != b("Hello").input_ids
    assert _tokenizer_fingerprint(a) != _tokenizer_fingerprint(b)
    assert _tokenizer_fingerprint(a) == _tokenizer_fingerprint(AutoTokenizer.from_pretrained(tiny_model_dir))
