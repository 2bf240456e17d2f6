"""The synthetic tool-calling dataset: catalog coverage, valid records, determinism, held-out test split."""

from __future__ import annotations

import json
import random
import re
import string

import pytest

from forgekit.data import validate_record
from forgekit.examples import toolcalling_data as datagen
from forgekit.examples.toolcalling_data import (
    HELD_OUT_TOOLS,
    KINDS,
    TOOLS,
    make_conversation,
    write_tool_calling_dataset,
)
from forgekit.toolcalling.evaluate import conversation_category


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tooldata")
    paths = write_tool_calling_dataset(out, n_train=300, n_valid=40, n_test=200, seed=3)
    return {k: [json.loads(line) for line in p.read_text().splitlines()] for k, p in paths.items()}


def _types(schema: dict) -> set[str]:
    found = {"enum" if "enum" in schema else schema["type"]}
    if schema.get("type") == "array":
        found |= {"array of " + t for t in _types(schema["items"])}
    for sub in schema.get("properties", {}).values():
        found |= _types(sub)
    return found


def test_catalog_covers_domains_and_argument_types():
    assert len(TOOLS) >= 30 and len(HELD_OUT_TOOLS) >= 6
    assert len({t.domain for t in TOOLS.values()}) >= 12
    types = set().union(*(_types(s) for t in TOOLS.values() for s in t.params.values()))
    assert {"string", "enum", "integer", "number", "boolean", "array of string", "object", "array of object"} <= types
    assert any(set(t.params) - set(t.required) for t in TOOLS.values())  # optional parameters


def _check_value(schema: dict, value, where: str) -> None:
    if "enum" in schema:
        assert value in schema["enum"], where
    kind = schema["type"]
    python = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    assert isinstance(value, python[kind]) and not (kind in ("integer", "number") and isinstance(value, bool)), where
    if kind == "array":
        for i, v in enumerate(value):
            _check_value(schema["items"], v, f"{where}[{i}]")
    if kind == "object":
        assert set(schema["required"]) <= set(value) <= set(schema["properties"]), where
        for k, v in value.items():
            _check_value(schema["properties"][k], v, f"{where}.{k}")


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_phrasing_yields_valid_arguments_and_answers(name):
    tool = TOOLS[name]
    spec = tool.spec()["function"]["parameters"]
    phrasings = tool.phrasings + tool.test_phrasings
    assert len(phrasings) >= 3 and (tool.held_out or tool.test_phrasings)
    assert tool.held_out == (not tool.phrasings)  # held-out tools have test phrasings only
    r = random.Random(name)
    for phrasing in phrasings:
        template = phrasing if isinstance(phrasing, str) else phrasing[0]
        slots = {s for _, s, _, _ in string.Formatter().parse(template) if s}
        assert slots <= set(tool.params), f"{name}: {template!r} names an unknown parameter"
        for _ in range(5):
            args = _args_for(tool, phrasing, r)
            _check_value({**spec, "type": "object"}, args, f"{name} {template!r}")
            tool.answer.format(**{**args, **tool.result(args, r)})


def _args_for(tool, phrasing, r):
    """The arguments `_request` derives for one given phrasing."""
    template, fixed = (phrasing, {}) if isinstance(phrasing, str) else phrasing
    values = tool.sample(r)
    return {**{k: values[k][0] for k in datagen._slots(template)}, **fixed}


def test_records_are_valid_and_match_their_kind(dataset):
    for rows in dataset.values():
        for row in rows:
            assert validate_record(row) == [], row
            kind = row["metadata"]["kind"]
            assert conversation_category(row["messages"]) == kind
            specs = {t["function"]["name"]: t["function"]["parameters"] for t in row["tools"]}
            assert 2 <= len(specs) == len(row["tools"])
            for m in row["messages"]:
                for call in m.get("tool_calls") or []:
                    fn = call["function"]
                    assert fn["name"] in specs  # only offered tools are called, as the (renamed) spec says
                    _check_value(specs[fn["name"]], json.loads(fn["arguments"]), fn["name"])


def test_split_sizes_and_mix(dataset):
    assert [len(dataset[s]) for s in ("train", "valid", "test")] == [300, 40, 200]
    kinds = {k: sum(r["metadata"]["kind"] == k for r in dataset["test"]) for k in KINDS}
    assert kinds == {"single": 60, "parallel": 30, "multi_turn": 40, "no_call": 70}
    # test conversations end at their last decision: a call, or a text answer for no-call / thanks
    assert all(r["messages"][-1].get("tool_calls") for r in dataset["test"] if r["metadata"]["kind"] in (
        "single", "parallel"))


def _called(rows) -> set[str]:
    return {c["function"]["name"] for r in rows for m in r["messages"] for c in m.get("tool_calls") or []}


def _offered(rows) -> set[str]:
    return {t["function"]["name"] for r in rows for t in r["tools"]}


def _patterns(phrasings) -> list[re.Pattern]:
    """A regex per template with enough fixed words to tell it apart (`{a} {b} in {c}?` matches anything)."""
    templates = [p if isinstance(p, str) else p[0] for p in phrasings]
    return [
        re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", t)), re.IGNORECASE)
        for t in templates if len(re.sub(r"\{\w+\}|\W", "", t)) >= 8
    ]


def test_test_split_holds_out_tools_and_phrasings(dataset):
    held = set(HELD_OUT_TOOLS)
    assert not held & (_offered(dataset["train"]) | _offered(dataset["valid"]))
    assert held <= _called(dataset["test"])  # every held-out tool is tested
    held_share = sum(r["metadata"]["held_out"] for r in dataset["test"]) / len(dataset["test"])
    assert 0.2 < held_share < 0.5
    # single-request test messages never use a training phrasing, and vice versa
    train_patterns = _patterns([p for t in TOOLS.values() for p in t.phrasings])
    test_patterns = _patterns([p for t in TOOLS.values() for p in t.test_phrasings])
    firsts = {s: [r["messages"][-2]["content"] for r in dataset[s] if r["metadata"]["kind"] == "single"
                  and r["messages"][-1].get("tool_calls")] for s in ("train", "test")}
    assert firsts["train"] and firsts["test"]
    assert not any(p.fullmatch(u) for u in firsts["test"] for p in train_patterns)
    assert not any(p.fullmatch(u) for u in firsts["train"] for p in test_patterns)


def test_deterministic_and_seeded(tmp_path):
    a = write_tool_calling_dataset(tmp_path / "a", 30, 5, 10, seed=1)
    b = write_tool_calling_dataset(tmp_path / "b", 30, 5, 10, seed=1)
    c = write_tool_calling_dataset(tmp_path / "c", 30, 5, 10, seed=2)
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)
    assert a["train"].read_bytes() != c["train"].read_bytes()


def test_no_call_conversations_answer_in_text():
    r = random.Random(0)
    for _ in range(30):
        row = make_conversation("no_call", "train", r)
        assert not any(m.get("tool_calls") for m in row["messages"]) and row["tools"]
    with pytest.raises(ValueError, match="unknown conversation kind"):
        make_conversation("chitchat", "train", r)


def test_training_variety_renames_tools_and_wraps_requests_but_never_touches_test(dataset):
    catalog = set(TOOLS)
    train_names = _offered(dataset["train"])
    renamed = train_names - catalog
    assert renamed and any(n[0].islower() and any(ch.isupper() for ch in n) for n in renamed)  # camelCase
    assert any(n.startswith(datagen.NAMESPACES) for n in renamed)
    assert _offered(dataset["test"]) <= catalog  # test tools keep their catalog names
    firsts = [r["messages"][0]["content"] for r in dataset["train"] if r["messages"][0]["role"] == "user"]
    assert any(u.startswith(datagen.PREFIXES) for u in firsts)
    tests = [m["content"] for r in dataset["test"] if r["metadata"]["kind"] in ("single", "parallel")
             for m in r["messages"] if m["role"] == "user"]  # (small talk may start "Hello, ")
    assert not any(u.startswith(datagen.PREFIXES) for u in tests)


def test_rename_keeps_calls_consistent_with_specs():
    r = random.Random(5)
    record = make_conversation("parallel", "test", r)  # test records are never renamed: rename one by hand
    for seed in range(20):
        out = datagen._rename(record, random.Random(seed))
        old_calls = [c["function"] for m in record["messages"] for c in m.get("tool_calls") or []]
        new_calls = [c["function"] for m in out["messages"] for c in m.get("tool_calls") or []]
        assert [sorted(json.loads(c["arguments"]).values(), key=str) for c in old_calls] == \
            [sorted(json.loads(c["arguments"]).values(), key=str) for c in new_calls]
        specs = {t["function"]["name"]: t["function"]["parameters"] for t in out["tools"]}
        for c in new_calls:
            assert set(json.loads(c["arguments"])) <= set(specs[c["name"]]["properties"])
            assert set(specs[c["name"]]["required"]) <= set(json.loads(c["arguments"]))


def test_schema_requests_name_every_argument_and_are_off_by_default(tmp_path, monkeypatch):
    assert datagen.SCHEMA_SHARE == 0.0  # measured not to help (benchmarks/results/fc-recipe-sweep, sweep 4)
    r = random.Random(2)
    seen = [t for t in datagen._CATALOG if not t.held_out]
    for _ in range(200):
        tool = r.choice(seen)
        text, args, joined = datagen._schema_request(tool, r)
        assert set(tool.required) <= set(args) <= set(tool.params)
        assert text.startswith((tool.description, "I want to", "Please", "Can you", "Help me"))
        assert joined == text[0].lower() + text[1:]
        for k in args:
            if tool.params[k].get("type") not in ("boolean", "object", "array"):  # named: "check in 2026-03-04"
                assert k.replace("_", " ") in text, (k, text)
    before = write_tool_calling_dataset(tmp_path / "off", 60, 5, 20, seed=4)
    monkeypatch.setattr(datagen, "SCHEMA_SHARE", 0.5)
    on = write_tool_calling_dataset(tmp_path / "on", 60, 5, 20, seed=4)
    assert on["test"].read_bytes() == before["test"].read_bytes()  # the test split never changes
    assert on["train"].read_bytes() != before["train"].read_bytes()
    users = [m["content"] for line in on["train"].read_text().splitlines()
             for m in json.loads(line)["messages"] if m["role"] == "user"]
    assert any(": " in u and re.search(r"[;,] [a-z ]+ \S", u) for u in users)


# sha256 of test.jsonl for n_test=200, seed=0: the split every published result of the example is measured on.
# Training-side changes to the generator must leave it byte-identical (whatever n_train is).
TEST_SPLIT_SHA256 = "19579e7f179753fe2a8bc1525c697984862864c54876b9adb456e0eb5c656447"


def test_the_example_test_split_is_unchanged(tmp_path):
    import hashlib

    paths = write_tool_calling_dataset(tmp_path, n_train=3, n_valid=2, n_test=200, seed=0)
    assert hashlib.sha256(paths["test"].read_bytes()).hexdigest() == TEST_SPLIT_SHA256


def test_training_up_weights_parallel_calls_with_more_joiners(dataset):
    def parallel(rows):
        return [r for r in rows if r["metadata"]["kind"] == "parallel"]

    assert len(parallel(dataset["train"])) == round(300 * datagen.TRAIN_MIX["parallel"]) == 90
    assert len(parallel(dataset["test"])) == round(200 * datagen.DEFAULT_MIX["parallel"])
    three = sum(len(next(m["tool_calls"] for m in r["messages"] if m.get("tool_calls"))) == 3
                for r in parallel(dataset["train"]))
    assert 0.15 < three / 90 < 0.45  # THREE_CALL_SHARE["train"] = 0.3
    users = [r["messages"][0 if r["messages"][0]["role"] == "user" else 1]["content"] for r in parallel(dataset["train"])]
    assert sum(any(j in u for j in datagen.TRAIN_JOINERS if j.strip()) for u in users) > len(users) / 3
    test_joiners = datagen.JOINERS[datagen.JOINERS_TRAIN:]
    assert not set(test_joiners) & set(datagen.TRAIN_JOINERS)  # the test's joiners stay unseen in training
    assert not any(j in u for j in test_joiners for u in users)
    # ... but their words are not: each test joiner shares its words with some training joiner
    words = {w for j in datagen.TRAIN_JOINERS for w in re.findall(r"[a-z]+", j.lower())}
    assert all(set(re.findall(r"[a-z]+", j.lower())) <= words for j in test_joiners)
