"""Tests for forgekit.convert: every source kind, file:line problems from the row function, raw text, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgekit.convert import (
    chat,
    csv_to_chat,
    read_rows,
    rows_to_chat,
    split_train_valid,
    text_to_pretraining,
    to_chat,
    write_jsonl,
)
from forgekit.data import DataError, read_examples


def qa(row):
    return chat(row["question"], row["answer"])


def lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_chat_builds_one_turn_conversations():
    assert chat("q", "a") == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert chat("q", "a", system="s")[0] == {"role": "system", "content": "s"}
    assert chat("text") == [{"role": "user", "content": "text"}]


def test_csv_with_quoted_multiline_field_and_bom_converts_to_valid_chat_jsonl(tmp_path):
    src = tmp_path / "faq.csv"
    src.write_text(
        '\ufeffquestion,answer\n"Can I return it?","Yes, within 30 days.\nKeep the receipt."\nWhere?,Here\n',
        encoding="utf-8",
    )
    out = csv_to_chat(src, qa, tmp_path / "out" / "faq.jsonl")
    records = lines(out)
    assert [r["messages"][1]["content"] for r in records] == [
        "Yes, within 30 days.\nKeep the receipt.",
        "Here",
    ]
    assert len(read_examples(str(out))) == 2  # what training reads


def test_tsv_uses_tabs(tmp_path):
    src = tmp_path / "faq.tsv"
    src.write_text("question\tanswer\nA, b?\tc, d\n")
    assert lines(csv_to_chat(src, qa, tmp_path / "o.jsonl"))[0]["messages"][0]["content"] == "A, b?"


def test_problems_name_the_csv_line_where_the_record_starts_and_nothing_is_written(tmp_path):
    src = tmp_path / "faq.csv"
    # record 1 spans lines 2-3, so the empty answer of record 2 is on line 4 and the short row on line 5
    src.write_text('question,answer\n"a","multi\nline"\nb,\nc\n')
    out = tmp_path / "faq.jsonl"
    with pytest.raises(DataError) as info:
        csv_to_chat(src, qa, out)
    assert info.value.problems == [
        f"{src}:4: messages[1] (assistant): empty content",
        f"{src}:5: no assistant message (nothing to train on for this task)",  # a short row: answer is None
    ]
    assert not out.exists()


def test_row_function_errors_are_collected_with_the_columns_of_the_row(tmp_path):
    src = tmp_path / "faq.csv"
    src.write_text("prompt,reply\nx,y\nz,w\n")
    with pytest.raises(DataError) as info:
        csv_to_chat(src, qa, tmp_path / "o.jsonl")
    assert len(info.value.problems) == 2
    assert (
        info.value.problems[0]
        == f"{src}:2: the row function raised KeyError: 'question' (columns: prompt, reply)"
    )


def test_row_function_may_skip_rows_or_return_whole_records():
    rows = [{"q": "a", "keep": True}, {"q": "b", "keep": False}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    records = rows_to_chat(
        rows, lambda r: {"messages": chat(r["q"], "ok"), "tools": tools} if r["keep"] else None
    )
    assert records == [{"messages": chat("a", "ok"), "tools": tools}]


def test_a_wrong_return_type_and_the_task_rules_are_reported():
    with pytest.raises(DataError, match="row 1: the row function returned str"):
        rows_to_chat([{"q": "a"}], lambda r: r["q"])
    text_only = [{"t": "some text"}]
    with pytest.raises(DataError, match="no assistant message"):
        rows_to_chat(text_only, lambda r: chat(r["t"]))
    assert rows_to_chat(text_only, lambda r: chat(r["t"]), task="causal_lm") == [
        {"messages": chat("some text")}
    ]


def test_report_is_capped_but_counts_every_problem():
    with pytest.raises(DataError) as info:
        rows_to_chat([{"q": ""}] * 7, lambda r: chat(r["q"], "a"), max_reported=3)
    assert len(info.value.problems) == 3
    assert "7 problem(s)" in str(info.value) and "... and 4 more" in str(info.value)


def test_jsonl_instruction_file_with_a_broken_line(tmp_path):
    src = tmp_path / "alpaca.jsonl"
    src.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n\n{oops\n[1]\n")
    with pytest.raises(DataError) as info:
        to_chat(src, lambda r: chat(r["instruction"], r["output"]), tmp_path / "o.jsonl")
    assert info.value.problems[0].startswith(f"{src}:3: invalid JSON")
    assert info.value.problems[1] == f"{src}:4: expected a JSON object, got list"


def test_parquet_and_saved_datasets_folders(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}])
    ds.to_parquet(str(tmp_path / "qa.parquet"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    assert [loc for loc, _ in read_rows(tmp_path / "qa.parquet")] == [
        f"{tmp_path / 'qa.parquet'}:row 1",
        f"{tmp_path / 'qa.parquet'}:row 2",
    ]
    assert len(lines(to_chat(tmp_path / "qa.parquet", qa, tmp_path / "p.jsonl"))) == 2
    assert len(lines(to_chat(tmp_path / "saved", qa, tmp_path / "t.jsonl", split="test"))) == 1
    with pytest.raises(DataError, match=r"no split 'valid' \(splits: train, test\)"):
        read_rows(tmp_path / "saved", split="valid")
    # in-memory sources
    assert len(rows_to_chat(ds, qa)) == 2
    assert len(read_rows(ds.to_pandas())) == 2


def test_hub_names_are_loaded_with_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"question": "q", "answer": "a"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert read_rows("some-org/some-data:validation") == [
        ("some-org/some-data:validation:row 1", {"question": "q", "answer": "a"})
    ]
    read_rows("some-org/some-data")
    assert calls == [("some-org/some-data", "validation"), ("some-org/some-data", "train")]


def test_missing_unknown_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_rows(tmp_path / "nope.csv")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        read_rows(tmp_path / "x.xlsx")
    (tmp_path / "empty.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="no rows"):
        read_rows(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="expected a .csv"):
        csv_to_chat(tmp_path / "x.xlsx", qa, tmp_path / "o.jsonl")
    with pytest.raises(DataError, match="skipped every row"):
        to_chat([{"a": 1}], lambda r: None, tmp_path / "o.jsonl")


def test_text_to_pretraining_paragraphs_and_documents(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Care\n\nWash by hand.\nDry in the shade.\n\n   \n\nStore it dry.\n")
    (docs / "b.txt").write_text("Second file.")
    (docs / "image.png").write_bytes(b"\x89PNG")
    paras = lines(text_to_pretraining(docs, tmp_path / "p.jsonl", min_chars=8))
    assert [r["messages"][0]["content"] for r in paras] == [
        "Wash by hand.\nDry in the shade.",
        "Store it dry.",
        "Second file.",
    ]
    whole = lines(text_to_pretraining([docs / "a.md"], tmp_path / "d.jsonl", unit="document"))
    assert len(whole) == 1 and whole[0]["messages"][0]["content"].startswith("# Care")
    assert len(read_examples(str(tmp_path / "p.jsonl"), task="causal_lm")) == 3
    with pytest.raises(DataError, match="no assistant message"):  # raw text is not chat data
        read_examples(str(tmp_path / "p.jsonl"))
    with pytest.raises(ValueError, match="unit"):
        text_to_pretraining(docs, tmp_path / "x.jsonl", unit="line")
    with pytest.raises(DataError, match="no text of at least"):
        text_to_pretraining(docs, tmp_path / "x.jsonl", min_chars=1000)
    with pytest.raises(DataError, match="file not found"):
        text_to_pretraining(tmp_path / "missing", tmp_path / "x.jsonl")


def test_write_jsonl_keeps_unicode_and_leaves_no_temporary_file(tmp_path):
    out = write_jsonl([{"messages": chat("Grüße", "¡hola!")}], tmp_path / "sub" / "u.jsonl")
    assert "Grüße" in out.read_text(encoding="utf-8")
    assert [p.name for p in out.parent.iterdir()] == ["u.jsonl"]


def test_split_train_valid_is_seeded_disjoint_and_complete(tmp_path):
    src = write_jsonl([{"messages": chat(f"q{i}", "a")} for i in range(20)], tmp_path / "all.jsonl")
    first = split_train_valid(src, 0.25, seed=1, out_dir=tmp_path / "s1")
    again = split_train_valid(src, 0.25, seed=1, out_dir=tmp_path / "s2")
    train, valid = lines(first["train"]), lines(first["valid"])
    assert (len(train), len(valid)) == (15, 5)
    assert sorted(json.dumps(r) for r in train + valid) == sorted(json.dumps(r) for r in lines(src))
    assert Path(first["valid"]).read_text() == Path(again["valid"]).read_text()
    assert (
        Path(first["valid"]).read_text()
        != Path(split_train_valid(src, 0.25, seed=2, out_dir=tmp_path / "s3")["valid"]).read_text()
    )
    with pytest.raises(ValueError, match="valid_fraction"):
        split_train_valid(src, 1.0)
    one = write_jsonl([{"messages": chat("q", "a")}], tmp_path / "one.jsonl")
    with pytest.raises(ValueError, match="cannot make both"):
        split_train_valid(one, 0.5)
