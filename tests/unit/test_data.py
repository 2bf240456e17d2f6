"""Tests for forgekit.data: one bad JSONL per problem with line numbers, the report limit, and every path kind."""

from __future__ import annotations

import functools
import glob
import hashlib
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from forgekit.data import MAX_REPORTED, DataError, data_fingerprint, read_examples, validate_record

DATA = Path(__file__).parents[1] / "fixtures" / "data"

# Each bad file has two good lines, then the bad one on line 3.
BAD_FILES = {
    "bad_invalid_json.jsonl": "invalid JSON (Expecting ',' delimiter at column 48)",
    "bad_missing_messages.jsonl": "missing 'messages' (keys found: conversation)",
    "bad_unknown_role.jsonl": "messages[0]: unknown role 'bot' (expected one of system, user, assistant, tool)",
    "bad_empty_content.jsonl": "messages[1] (assistant): empty content",
    "bad_no_assistant.jsonl": "no assistant message (nothing to train on for this task)",
    "bad_assistant_first.jsonl": "messages[0]: assistant message before any user message",
    "bad_tool_without_tool_calls.jsonl": "messages[1]: tool message without a preceding assistant tool_calls",
    "bad_tool_call_arguments.jsonl": "messages[1].tool_calls[0].function.arguments: not valid JSON",
}


def test_every_bad_fixture_has_a_case():
    assert sorted(p.name for p in DATA.glob("bad_*.jsonl")) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_line_is_reported_with_file_and_line(name):
    path = str(DATA / name)
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert info.value.problems == [f"{path}:3: {BAD_FILES[name]}"]
    assert str(info.value).startswith("1 problem(s) in the data; nothing was trained:")


def test_several_problems_in_one_file_each_with_its_line():
    path = str(DATA / "several_problems.jsonl")
    with pytest.raises(DataError) as info:
        read_examples(path)
    assert info.value.problems == [
        f"{path}:2: invalid JSON (Expecting value at column 1)",
        f"{path}:4: 'messages' must be a non-empty list",
        f"{path}:6: messages[0] (user): empty content",
        f"{path}:6: messages[1]: unknown role 'narrator' (expected one of system, user, assistant, tool)",
        f"{path}:6: no assistant message (nothing to train on for this task)",
    ]  # line 5 is blank (skipped, but counted), lines 1, 3 and 7 are fine


def test_report_is_limited_with_and_n_more(tmp_path):
    path = tmp_path / "many.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})]
    lines += ["{broken"] * 120
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_examples(str(path))
    problems = info.value.problems
    assert len(problems) == MAX_REPORTED == 50
    assert problems[0].startswith(f"{path}:2: invalid JSON") and problems[-1].startswith(f"{path}:51: invalid JSON")
    text = str(info.value)
    assert text.startswith("120 problem(s) in the data")
    assert text.rstrip().endswith("... and 70 more")
    # a smaller limit
    with pytest.raises(DataError) as info:
        read_examples(str(path), max_reported=5)
    assert len(info.value.problems) == 5 and str(info.value).rstrip().endswith("... and 115 more")


def test_good_file_reads_every_record_with_its_line():
    examples = read_examples(str(DATA / "good.jsonl"))
    assert [e.line for e in examples] == [1, 2, 4]  # line 3 is blank
    assert examples[0].messages[0] == {"role": "system", "content": "You are terse."}
    assert examples[2].tools[0]["function"]["name"] == "get_weather"
    assert examples[2].messages[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert all(e.source == str(DATA / "good.jsonl") for e in examples)


def test_causal_lm_accepts_user_only_records():
    path = str(DATA / "user_only.jsonl")
    assert len(read_examples(path, task="causal_lm")) == 2
    with pytest.raises(DataError) as info:
        read_examples(path, task="instruction_tuning")
    assert info.value.problems == [
        f"{path}:1: no assistant message (nothing to train on for this task)",
        f"{path}:2: no assistant message (nothing to train on for this task)",
    ]


def test_validate_record_direct():
    assert validate_record({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) == []
    assert validate_record([1, 2]) == ["expected a JSON object with 'messages', got list"]
    assert validate_record({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}) == [
        "messages[0] (user): content must be a string, got int"
    ]
    assert "a system message must come first" in validate_record(
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "b"}]}
    )[0]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="run `make data`"):  # a fresh clone before `make data`
        read_examples(str(tmp_path / "data" / "generated" / "support_tickets" / "train.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        read_examples(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="a directory, not a data file"):  # not IsADirectoryError's traceback
        read_examples(str(tmp_path))
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"binary.jsonl:1: not UTF-8 text \(byte 0x89 at column 1"):
        read_examples(str(tmp_path / "binary.jsonl"))


def test_file_url():
    path = DATA / "good.jsonl"
    examples = read_examples(f"file://{path}")
    assert len(examples) == 3 and examples[0].source == f"file://{path}"
    assert data_fingerprint(f"file://{path}") == data_fingerprint(str(path))
    with pytest.raises(DataError) as info:
        read_examples(f"file://{DATA / 'bad_unknown_role.jsonl'}")
    assert info.value.problems[0].startswith(f"file://{DATA / 'bad_unknown_role.jsonl'}:3: messages[0]: unknown role")


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A local HTTP server (python's http.server in a thread) serving a temp dir; yields (dir, base URL)."""
    root = tmp_path_factory.mktemp("http")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_fsspec_url_over_http(http_root):
    root, base = http_root
    shutil.copy(DATA / "good.jsonl", root / "x.jsonl")
    shutil.copy(DATA / "bad_empty_content.jsonl", root / "bad.jsonl")
    url = f"{base}/x.jsonl"
    examples = read_examples(url)
    assert [e.line for e in examples] == [1, 2, 4] and examples[0].source == url
    assert examples[1].messages[-1]["content"] == "6"
    assert data_fingerprint(url) == hashlib.sha256((DATA / "good.jsonl").read_bytes()).hexdigest()
    with pytest.raises(DataError) as info:
        read_examples(f"{base}/bad.jsonl")
    assert info.value.problems == [f"{base}/bad.jsonl:3: messages[1] (assistant): empty content"]
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        read_examples(f"{base}/missing.jsonl")


def test_memory_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/forgekit-test/chat.jsonl", (DATA / "good.jsonl").read_bytes())
    try:
        assert len(read_examples("memory://forgekit-test/chat.jsonl")) == 3
    finally:
        fs.rm("/forgekit-test/chat.jsonl")


@pytest.fixture
def hf_cached_dataset(tmp_path, monkeypatch):
    """`forgekit-test/chat` as a Hugging Face dataset in an offline datasets cache (no Hub access).

    Built by loading the local JSONL with datasets' json builder, then placing its Arrow files where
    `load_dataset("forgekit-test/chat")` looks for a previously downloaded Hub dataset when offline.
    """
    import datasets

    bad = tmp_path / "bad.jsonl"
    shutil.copy(DATA / "good.jsonl", tmp_path / "good.jsonl")
    bad.write_text((DATA / "good.jsonl").read_text().replace('"Hello!"', '"  "'))
    cache = tmp_path / "hf-cache"
    datasets.load_dataset(
        "json", data_files={"train": str(tmp_path / "good.jsonl"), "validation": str(bad)},
        cache_dir=str(cache / "build"),
    )
    built = Path(glob.glob(str(cache / "build" / "json" / "*" / "*" / "*"))[0])
    target = cache / "forgekit-test___chat" / "default" / built.parts[-2] / built.parts[-1]
    shutil.copytree(built, target)
    for f in target.glob("json-*.arrow"):
        f.rename(target / f.name.replace("json-", "chat-", 1))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so "forgekit-test/chat" is not a local path
    return "forgekit-test/chat"


def test_hf_dataset_name(hf_cached_dataset):
    name = hf_cached_dataset
    examples = read_examples(name)  # default split: train
    assert len(examples) == 3
    assert [e.line for e in examples] == [1, 2, 3]  # rows, not file lines
    assert examples[0].messages[2]["content"] == "Hello!"
    assert examples[2].tools[0]["function"]["name"] == "get_weather"
    with pytest.raises(DataError) as info:
        read_examples(f"{name}:validation")
    assert info.value.problems == [f"{name}:validation:row 1: messages[2] (assistant): empty content"]
    assert data_fingerprint(name) != data_fingerprint(f"{name}:validation")


def test_a_hugging_face_valid_path_must_name_its_split(hf_cached_dataset):
    """Without a split, `org/name` loads the train split: as valid_path it would evaluate on training data."""
    from forgekit.config import ConfigError, load_config
    from forgekit.prepare import prepare_data

    cfg = load_config({"model_id": "m", "train_path": hf_cached_dataset, "valid_path": hf_cached_dataset})
    with pytest.raises(ConfigError) as info:
        prepare_data(cfg, use_gpu=False)
    assert info.value.problems == [f"valid_path: {hf_cached_dataset} names a Hugging Face dataset without a split, so "
                                   f"it would evaluate on its train split; name one: {hf_cached_dataset}:validation (or :test)"]
