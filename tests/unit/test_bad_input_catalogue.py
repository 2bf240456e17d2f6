"""The catalogue of bad input forgekit promises to catch: config, data, model, paths, cluster.

Each case is one bad input (a config fragment, a data file, a model directory, a path) and the message fragment
`forgekit validate` prints for it on stderr with exit code 2 (never a traceback). Cluster cases go through the
same pre-flight check with a Ray cluster's resources (`prepare_run(cfg, cluster=...)`), which `validate` has
none of. Below the catalogue: the behaviour the fixes rely on (weights honoured, `~` expanded, the run
directory's lock, stale cache folders, Ctrl-C).

Placeholders in a case: `{d}` its own directory, `{model}` the tiny model, `{home}` the home directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forgekit.cli import main

USER, BOT = {"role": "user", "content": "Count to 3."}, {"role": "assistant", "content": "1 2 3"}
GOOD = [{"messages": [{"role": "user", "content": f"Count to {i}."},
                      {"role": "assistant", "content": " ".join(map(str, range(i)))}]} for i in range(1, 7)]


@dataclass
class Case:
    """One bad input: `yaml` lines added to a valid config, `data` replacing its training file (records, or raw
    text / bytes), `files` created in the case's directory ("DIR": a directory), `args` after the config."""

    fragment: str
    yaml: str = ""
    data: list | str | bytes | None = None
    files: dict = field(default_factory=dict)
    args: tuple = ()
    absent: str | None = None  # text that must not appear anywhere in the output (a secret)


def rec(*messages, **extra) -> dict:
    return {"messages": list(messages), **extra}


def bot(content="ok", **kw) -> dict:
    return {"role": "assistant", "content": content, **kw}


GPT2_CONFIG = json.dumps({"model_type": "gpt2", "n_positions": 1024, "n_embd": 64, "n_layer": 2, "n_head": 4,
                          "vocab_size": 49152})
REMOTE_CODE = json.dumps({"model_type": "my_custom_lm", "auto_map": {"AutoConfig": "configuration_my.MyConfig",
                                                                       "AutoModelForCausalLM": "modeling_my.MyModel"}})

CONFIG = {
    # --- values the schema rejects
    "unknown-key": Case("learnig_rate: unknown key (did you mean 'learning_rate'?)", "learnig_rate: 1e-4"),
    "unknown-nested-key": Case("generation_config.prompt_fromat: unknown key", "generation_config: {prompt_fromat: x}"),
    "negative-lr": Case("learning_rate: Input should be greater than 0", "learning_rate: -1"),
    "inf-lr": Case("learning_rate: expected a finite number (got inf)", "learning_rate: .inf"),
    "nan-lr": Case("learning_rate: expected a finite number (got nan)", "learning_rate: .nan"),
    "inf-lr-override": Case("learning_rate: Input should be a finite number", args=("learning_rate=inf",)),
    "neg-inf-grad-norm": Case("max_grad_norm: expected a finite number (got -inf)", "max_grad_norm: -.inf"),
    "nan-weight-decay": Case("weight_decay: expected a finite number (got nan)", "weight_decay: .nan"),
    "nan-lora-dropout": Case("lora_config.lora_dropout: expected a finite number", "lora_config: {r: 8, lora_dropout: .nan}"),
    "inf-rope-factor": Case("rope_scaling.factor: expected a finite number", "rope_scaling: {rope_type: linear, factor: .inf}"),
    "inf-worker-resource": Case("worker_resources.CPU: expected a finite number", "worker_resources: {CPU: .inf}"),
    "nan-neftune": Case("neftune_noise_alpha: expected a finite number", "neftune_noise_alpha: .nan"),
    "nan-in-list": Case("profile_steps[1]: expected a finite number", "profile_steps: [1, .nan]"),
    "negative-seed": Case("seed: Input should be greater than or equal to 0", "seed: -1"),
    "huge-seed": Case("seed: Input should be less than or equal to 4294967295", "seed: 4294967296"),
    "text-seed": Case("seed: Input should be a valid integer", "seed: abc"),
    "zero-devices": Case("num_devices: Input should be greater than or equal to 1", "num_devices: 0"),
    "unknown-task": Case("task: Input should be", "task: summarization"),
    "preference-task-chat-data": Case("train.jsonl:1: not a preference record (keys found: messages)",
                                      "task: preference_tuning"),
    "classification-no-labels": Case("classifier_config.label_tokens is required", "task: classification"),
    "duplicate-labels": Case("label tokens must be unique", "classifier_config: {label_tokens: ['[a]', '[a]']}"),
    "labels-wrong-task": Case("classifier_config is only used with task: classification",
                              "task: causal_lm\nclassifier_config: {label_tokens: ['[a]', '[b]']}"),
    "packing-max-length": Case("packing: true has no padding", "packing: true\npadding: max_length"),
    "packing-classification": Case("packing is not supported for task: classification",
                                   "packing: true\nclassifier_config: {label_tokens: ['[a]', '[b]']}"),
    "total-and-per-device": Case("total_batch_size derives", "total_batch_size: 8\ntrain_batch_size_per_device: 3"),
    "max-batch-alone": Case("max_batch_size_per_device is only used together with total_batch_size",
                            "max_batch_size_per_device: 4"),
    "profile-steps-order": Case("profile_steps: expected [first, last]", "profile_steps: [5, 2]"),
    "lora-unknown-key": Case("lora_config.rank: not a peft LoraConfig field (did you mean 'r'?)", "lora_config: {rank: 8}"),
    "lora-zero-rank": Case("lora_config.r: expected a positive integer", "lora_config: {r: 0}"),
    "lora-dropout-range": Case("lora_config.lora_dropout: expected a probability", "lora_config: {lora_dropout: 1.5}"),
    "lora-rank-text": Case("lora_config.r: expected int", "lora_config: {r: abc}"),
    "adapter-without-lora": Case("initial_adapter_model_ckpt_path needs lora_config",
                                 "initial_adapter_model_ckpt_path: {d}"),
    "quant-without-lora": Case("quant_conf: a quantized base model cannot be fully fine-tuned",
                               "quant_conf: {quantization_type: bits-and-bytes, load_in_4bit: true}"),
    "unknown-prompt-format": Case("did you mean 'llama3'?", "generation_config: {prompt_format: llama33}"),
    "unknown-scheduler": Case("lr_scheduler_type: Input should be", "lr_scheduler_type: cosin"),
    "unknown-precision": Case("precision: Input should be", "precision: fp16"),
    "unknown-logger": Case("logger.provider: Input should be", "logger: {provider: neptune}"),
    "override-without-equals": Case("override 'learning_rate': expected key=value", args=("learning_rate",)),
    "flash-attention-text": Case("flash_attention_2: expected true or false", "flash_attention_2: maybe"),
    "checkpoint-every-zero": Case("checkpoint_every_n_epochs: expected a positive integer", "checkpoint_every_n_epochs: 0"),
    "scaling-technique": Case("embedding_scaling_technique: 'ntk' is not supported", "embedding_scaling_technique: ntk"),
    "anyscale-resource": Case("an Anyscale resource", "worker_resources: {'anyscale/accelerator_shape:4xA10G': 1}"),
    "frequency-unit": Case("checkpoint_and_evaluation_frequency.unit: Input should be",
                           "checkpoint_and_evaluation_frequency: {unit: hours}"),
    "tiny-context": Case("context_length: Input should be greater than or equal to 8", "context_length: 4"),
    "unknown-overlength": Case("overlength: Input should be", "overlength: cut"),
    "keep-zero-checkpoints": Case("num_checkpoints_to_keep: Input should be greater than or equal to 1",
                                  "num_checkpoints_to_keep: 0"),
    "zero-max-steps": Case("max_steps: Input should be greater than or equal to 1", "max_steps: 0"),
    "deepspeed-missing": Case("deepspeed.config_path: {d}/nope.json not found", "deepspeed: {config_path: {d}/nope.json}"),
    "deepspeed-not-json": Case("deepspeed.config_path", "deepspeed: {config_path: {d}/ds.json}", files={"ds.json": "{"}),
    "trust-remote-code-text": Case("trust_remote_code: Input should be a valid boolean", "trust_remote_code: perhaps"),
    # --- the YAML file itself
    "duplicate-key": Case("key 'learning_rate' is given twice, on lines 3 and 4",
                          "learning_rate: 1e-4\nlearning_rate: 2e-4"),
    "duplicate-nested-key": Case("key 'r' is given twice, on lines 4 and 5", "lora_config:\n  r: 8\n  r: 16"),
    "invalid-yaml": Case("invalid YAML", "learning_rate: [1, 2"),
    "config-not-utf8": Case(":3: not UTF-8 text (byte 0xe9", b"# caf\xe9"),
    # --- secrets: rejected, and never echoed
    "secret-api-key": Case("logger.provider_config.api_key: a secret; set it in the environment",
                           "logger: {provider: mlflow, provider_config: {api_key: s3cr3t-planted}}", absent="s3cr3t-planted"),
    "secret-token": Case("logger.provider_config.tracking_token: a secret",
                         "logger: {provider: mlflow, provider_config: {tracking_token: s3cr3t-planted}}",
                         absent="s3cr3t-planted"),
    "secret-in-uri": Case("logger.provider_config.tracking_uri: the URI holds a password",
                          "logger: {provider: mlflow, provider_config: {tracking_uri: 'http://me:s3cr3t-planted@host:5000'}}",
                          absent="s3cr3t-planted"),
    "secret-credentials": Case("logger.provider_config.credentials_json: a secret",
                               "logger: {provider: mlflow, provider_config: {credentials_json: s3cr3t-planted}}",
                               absent="s3cr3t-planted"),
    # --- run_name: a name, not a path (the run directory stays under output_dir)
    "run-name-dotdot": Case("run_name: expected a name, not a path", "run_name: ../escape"),
    "run-name-absolute": Case("run_name: expected a name, not a path", "run_name: /tmp/elsewhere"),
    "run-name-nested": Case("run_name: expected a name, not a path", "run_name: a/b"),
    "run-name-hidden": Case("run_name: expected a name, not a path", "run_name: .hidden"),
    "run-name-parent": Case("run_name: expected a name, not a path", "run_name: '..'"),
    "run-name-empty": Case("run_name: expected a name, not a path", "run_name: ''"),
    "run-name-backslash": Case("run_name: expected a name, not a path", "run_name: 'a\\\\b'"),
}

PATHS = {
    "config-missing": Case("cannot read config: No such file or directory", args=("--config", "{d}/missing.yaml")),
    "output-dir-file": Case("output_dir: {d}/out: {d}/out is a file, not a directory", "output_dir: {d}/out",
                            files={"out": "x"}),
    "output-dir-under-file": Case("{d}/out is a file, not a directory", "output_dir: {d}/out/runs", files={"out": "x"}),
    "base-ckpt-missing": Case("initial_base_model_ckpt_path: {d}/ckpt not found", "initial_base_model_ckpt_path: {d}/ckpt"),
    "base-ckpt-file": Case("initial_base_model_ckpt_path: {d}/ckpt is not a directory",
                           "initial_base_model_ckpt_path: {d}/ckpt", files={"ckpt": "x"}),
    "adapter-ckpt-missing": Case("initial_adapter_model_ckpt_path: {d}/adapter not found",
                                 "lora_config: {r: 4}\ninitial_adapter_model_ckpt_path: {d}/adapter"),
    "adapter-ckpt-home": Case("initial_adapter_model_ckpt_path: {home}/forgekit-no-such-adapter not found",
                              "lora_config: {r: 4}\ninitial_adapter_model_ckpt_path: ~/forgekit-no-such-adapter"),
    "train-path-missing": Case("{d}/nope.jsonl: file not found", args=("train_path={d}/nope.jsonl",)),
    "train-path-home": Case("{home}/forgekit-no-such-file.jsonl: file not found",
                            args=("train_path=~/forgekit-no-such-file.jsonl",)),
    "valid-path-missing": Case("{d}/valid.jsonl: file not found", "valid_path: {d}/valid.jsonl"),
    "train-path-directory": Case("a directory, not a data file", args=("train_path={d}/folder",), files={"folder": "DIR"}),
    "sample-data-missing": Case("run `make data`", args=("train_path={d}/data/generated/x/train.jsonl",)),
    "hf-dataset-no-split": Case("names a Hugging Face dataset without a split", "valid_path: someorg/somedata"),
    "hf-dataset-unknown": Case("someorg/no-such-dataset-xyz: not a local file, and the Hugging Face dataset cannot be "
                               "loaded", args=("train_path=someorg/no-such-dataset-xyz",)),
}

MODEL = {
    "model-path-missing": Case("model_id: {d}/no-model: directory not found", args=("model_id={d}/no-model",)),
    "model-path-relative": Case("model_id: ./no-such-model-dir: directory not found", args=("model_id=./no-such-model-dir",)),
    "model-path-home": Case("model_id: {home}/no-such-model: directory not found", args=("model_id=~/no-such-model",)),
    "model-path-file": Case("model_id: {d}/model.bin: a file, not a model directory", args=("model_id={d}/model.bin",),
                            files={"model.bin": "x"}),
    "model-dir-empty": Case("model_id: {d}/m: a directory without config.json", args=("model_id={d}/m",),
                            files={"m": "DIR"}),
    "model-config-broken": Case("not a readable JSON model config", args=("model_id={d}/m",),
                                files={"m/config.json": "{"}),
    "model-remote-code": Case("set trust_remote_code: true to run it", args=("model_id={d}/m",),
                              files={"m/config.json": REMOTE_CODE}),
    "model-unknown-type": Case("model_type 'not_a_model' is unknown to transformers", args=("model_id={d}/m",),
                               files={"m/config.json": json.dumps({"model_type": "not_a_model"})}),
    "embedded-typo": Case("did you mean the embedded model 'smollm2-135m-instruct'?",
                          args=("model_id=smollm2-135m-instrct",)),
    "hub-id-unknown": Case("model_id: someorg/no-such-model-xyz: ", args=("model_id=someorg/no-such-model-xyz",)),
    "base-ckpt-not-model": Case("initial_base_model_ckpt_path: {d}/ckpt: a directory without config.json",
                                "initial_base_model_ckpt_path: {d}/ckpt", files={"ckpt": "DIR"}),
    "lora-target-typo": Case("'v_prj' matches no module of llama (as peft matches names) (did you mean 'v_proj'?)",
                             "lora_config: {r: 4, target_modules: [q_proj, v_prj]}"),
    "lora-target-none-match": Case("lora_config.target_modules: 'attn' matches no module",
                                   "lora_config: {r: 4, target_modules: [attn]}"),
    "lora-target-regex": Case("'.*\\\\.nothing$' matches no module", "lora_config: {r: 4, target_modules: '.*\\.nothing$'}"),
    "lora-target-not-a-layer": Case("which LoRA cannot adapt", "lora_config: {r: 4, target_modules: [model]}"),
    "lora-layers-missing": Case("'q_proj' matches no module",
                                "lora_config: {r: 4, target_modules: [q_proj], layers_to_transform: [7]}"),
    "context-rope-factor-short": Case("rope_scaling.factor: 1.5 x max_position_embeddings 8192 = 12288 positions",
                                      "context_length: 16384\nrope_scaling: {rope_type: linear, factor: 1.5}"),
    "context-no-rope": Case("are not RoPE (nothing to scale)", "context_length: 2048", args=("model_id={d}/gpt2",),
                            files={"gpt2/config.json": GPT2_CONFIG}),
    "logger-package-missing": Case("logger.provider: wandb needs the wandb package", "logger: {provider: wandb}"),
}

DATA = {
    "invalid-json": Case("train.jsonl:2: invalid JSON", data=json.dumps(GOOD[0]) + "\n{not json\n"),
    "not-an-object": Case("train.jsonl:1: expected a JSON object with 'messages', got list", data="[1, 2]\n"),
    "no-messages": Case("train.jsonl:1: missing 'messages' (keys found: text)", data=[{"text": "hi"}]),
    "empty-messages": Case("'messages' must be a non-empty list", data=[{"messages": []}]),
    "unknown-role": Case("messages[0]: unknown role 'bot'", data=[rec({"role": "bot", "content": "x"}, BOT)]),
    "content-not-text": Case("messages[1] (assistant): content must be a string, got int", data=[rec(USER, bot(3))]),
    "empty-content": Case("messages[1] (assistant): empty content", data=[rec(USER, bot("  "))]),
    "missing-content": Case("messages[0] (user): missing content", data=[rec({"role": "user"}, BOT)]),
    "message-not-object": Case("messages[0]: expected an object with role and content", data=[rec("hi", BOT)]),
    "system-not-first": Case("messages[1]: a system message must come first",
                             data=[rec(USER, {"role": "system", "content": "s"}, BOT)]),
    "assistant-first": Case("messages[0]: assistant message before any user message", data=[rec(BOT, USER, BOT)]),
    "no-assistant": Case("no assistant message (nothing to train on for this task)", data=[rec(USER)]),
    "no-user": Case("no user message", data=[rec({"role": "system", "content": "s"}, BOT)]),
    "orphan-tool": Case("messages[2]: tool message without a preceding assistant tool_calls",
                        data=[rec(USER, BOT, {"role": "tool", "content": "42"})]),
    "tool-args-not-json": Case("messages[1].tool_calls[0].function.arguments: not valid JSON",
                               data=[rec(USER, bot(None, tool_calls=[{"function": {"name": "f", "arguments": "{"}}]))]),
    "tool-call-no-name": Case("messages[1].tool_calls[0]: expected {'function'",
                              data=[rec(USER, bot(None, tool_calls=[{"function": {}}]))]),
    "tools-not-list": Case("'tools' must be a list of function specs", data=[rec(USER, BOT, tools={"a": 1})]),
    "weight-on-user": Case("messages[0].weight: only assistant messages take a weight",
                           data=[rec({**USER, "weight": 0}, BOT)]),
    "weight-two": Case("messages[1].weight: expected 0 (not trained) or 1 (trained), got 2", data=[rec(USER, bot(weight=2))]),
    "weight-text": Case("messages[1].weight: expected 0 (not trained) or 1 (trained), got 'no'",
                        data=[rec(USER, bot(weight="no"))]),
    "all-weights-zero": Case("every assistant message has weight 0", data=[rec(USER, bot(weight=0))]),
    "weight-causal-lm": Case("weights need task: instruction_tuning", "task: causal_lm",
                             data=[rec(USER, bot(weight=0))]),
    "weight-zero-label": Case("weight 0 would leave nothing to train", "classifier_config: {label_tokens: ['[a]', '[b]']}",
                              data=[rec(USER, bot("[a]", weight=0))]),
    "data-not-utf8": Case("train.jsonl:3: not UTF-8 text (byte 0xff at column 14", data=(
        json.dumps(GOOD[0]) + "\n" + json.dumps(GOOD[1]) + "\n").encode() + b'{"messages": \xff}\n'),
    "data-empty": Case("train.jsonl: no records", data="\n\n"),
    "label-not-in-tokens": Case("must be one of classifier_config.label_tokens", "classifier_config: {label_tokens: ['[a]', '[b]']}",
                                data=[rec(USER, bot("[c]"))]),
    "nothing-fits": Case("no example fits context_length=8", "context_length: 8"),
    "valid-file-bad": Case("valid.jsonl:1: missing 'messages'", "valid_path: {d}/valid.jsonl",
                           files={"valid.jsonl": '{"text": "x"}\n'}),
    "many-problems": Case("... and 10 more", data="".join("{bad\n" for _ in range(60))),
    "causal-lm-no-user-ok-but-empty": Case("messages[0] (user): empty content", "task: causal_lm",
                                           data=[rec({"role": "user", "content": ""})]),
    "small-set-more-workers": Case("num_devices: 8 workers, but the training set has 6 row(s)", "num_devices: 8"),
}

CATALOGUE = {f"{group}/{name}": case for group, cases in (("config", CONFIG), ("paths", PATHS), ("model", MODEL),
                                                          ("data", DATA)) for name, case in cases.items()}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir):
    """Forgekit's cache in a temp dir (the tokenizer is cached across cases), the Hub offline state restored."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("catalogue")
        mp.setenv("FORGEKIT_CACHE", str(root / "cache"))
        for name in ("FORGEKIT_DEBUG", "ANYSCALE_CLUSTER_ID", "HF_HUB_OFFLINE"):
            mp.delenv(name, raising=False)
        # the checks turn this process's Hub clients offline when the Hub is unreachable: not beyond this file
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
        yield root


def _fill(text: str, d: Path, model: Path) -> str:
    return text.replace("{d}", str(d)).replace("{model}", str(model)).replace("{home}", os.path.expanduser("~"))


def _write_case(case: Case, d: Path, model: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    data = case.data if case.data is not None else GOOD
    train = d / "train.jsonl"
    if isinstance(data, bytes):
        train.write_bytes(data)
    else:
        train.write_text(data if isinstance(data, str) else "".join(json.dumps(r) + "\n" for r in data))
    for rel, content in case.files.items():
        target = d / rel
        if content == "DIR":
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_fill(content, d, model))
    head = f"model_id: {model}\ntrain_path: {train}\n"
    cfg = d / "cfg.yaml"
    if isinstance(case.yaml, bytes):
        cfg.write_bytes(head.encode() + case.yaml + b"\n")
    else:
        cfg.write_text(head + _fill(case.yaml, d, model) + "\n")
    return cfg


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_is_one_message_and_exit_2(name, base, tiny_model_dir, capsys):
    case = CATALOGUE[name]
    if name == "model/logger-package-missing":
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    d = base / name.replace("/", "-")
    cfg = _write_case(case, d, tiny_model_dir)
    args = [_fill(a, d, tiny_model_dir) for a in case.args]
    if args[:1] == ["--config"]:  # the config file itself is the bad input
        cfg, args = Path(args[1]), args[2:]
    code = main(["validate", str(cfg), *args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    assert _fill(case.fragment, d, tiny_model_dir) in err, err
    if case.absent:
        assert case.absent not in out + err


def test_the_catalogue_has_at_least_100_cases():
    assert len(CATALOGUE) + len(CLUSTER) >= 100, len(CATALOGUE) + len(CLUSTER)


# ------------------------------------------------------------------------------------------------ cluster

CLUSTER = {
    "too-many-cpu-workers": ({"num_devices": 4, "use_gpu": False}, {"CPU": 2.0}, "lower num_devices to at most 2"),
    "gpu-on-cpu-cluster": ({"use_gpu": True}, {"CPU": 8.0}, "run on a machine with a GPU, or set use_gpu: false"),
    "too-many-gpu-workers": ({"num_devices": 4, "use_gpu": True}, {"CPU": 16.0, "GPU": 2.0},
                             "num_devices: 4 GPU workers need 4 GPU, the Ray cluster has 2"),
    "accelerator-type-missing": ({"use_gpu": True, "worker_resources": {"accelerator_type:A100-80G": 0.001}},
                                 {"CPU": 8.0, "GPU": 1.0, "accelerator_type:H100": 1.0}, "its accelerator types: H100"),
    "custom-resource-missing": ({"worker_resources": {"special": 1}}, {"CPU": 8.0}, "worker_resources.special: 1 worker(s)"),
}


@pytest.mark.parametrize("name", list(CLUSTER))
def test_cluster_that_cannot_host_the_workers(name, base, tiny_model_dir):
    """The pre-flight check with the resources of a local cluster forgekit started (not attached: an error)."""
    from forgekit.config import ConfigError, load_config
    from forgekit.train import prepare_run

    values, cluster, fragment = CLUSTER[name]
    d = base / f"cluster-{name}"
    cfg_file = _write_case(Case(""), d, tiny_model_dir)
    cfg = load_config(cfg_file, {k: v for k, v in values.items()})
    with pytest.raises(ConfigError) as e:
        prepare_run(cfg, cluster=cluster, attached=False, local=False)
    assert fragment in str(e.value)


# ------------------------------------------------------------------------------------ what the fixes do


def test_validate_says_the_cluster_was_not_checked_and_prints_the_rope_scaling(base, tiny_model_dir, capsys):
    d = base / "ok-rope"
    cfg = _write_case(Case("", "context_length: 16384"), d, tiny_model_dir)
    code = main(["validate", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "# cluster: not checked: no cluster" in out
    assert "# context: 16384 tokens > the model's 8192 positions: RoPE scaling {rope_type: linear, factor: 2}" in out


def test_home_is_expanded_in_every_path(base, tiny_model_dir, capsys, monkeypatch):
    d = base / "ok-home"
    cfg = _write_case(Case(""), d, tiny_model_dir)
    monkeypatch.setenv("HOME", str(d))
    code = main(["validate", str(cfg), "train_path=~/train.jsonl", "output_dir=~/runs"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"train_path: {d}/train.jsonl" in out and f"# run directory: {d}/runs/" in out


def test_unknown_hub_id_fails_fast_when_the_hub_is_unreachable(base, tiny_model_dir, capsys):
    from forgekit.checks import hub_unreachable

    if hub_unreachable() is None:
        pytest.skip("the Hugging Face Hub is reachable from here")
    cfg = _write_case(Case(""), base / "hub-fast", tiny_model_dir)
    started = time.monotonic()
    code = main(["validate", str(cfg), "model_id=someorg/no-such-model-xyz"])
    _, err = capsys.readouterr()
    assert code == 2 and "the Hugging Face Hub is unreachable from here" in err
    assert time.monotonic() - started < 15  # not ~50 s of retries


def test_weight_zero_turns_are_not_trained(tokenizer):
    from forgekit.formats import render, resolve_prompt_format, tokenize_rendered

    messages = [USER, bot("first answer", weight=0), {"role": "user", "content": "again"}, bot("second answer")]
    for fmt in (None, resolve_prompt_format("chatml", tokenizer)):
        ids, labels = tokenize_rendered(render(messages, tokenizer, fmt), tokenizer)
        trained = tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100])
        assert "second answer" in trained and "first answer" not in trained, trained
        weighted = [dict(m, weight=1) if m["role"] == "assistant" else m for m in messages]
        ids, labels = tokenize_rendered(render(weighted, tokenizer, fmt), tokenizer)
        assert "first answer" in tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100])


def test_secrets_are_masked_when_shown():
    from forgekit.config import mask_secrets

    shown = mask_secrets({"tracking_uri": "http://me:pw123@host:5000", "nested": {"api_key": "k1", "project": "p"},
                          "key": "k2", "tags": ["http://a:pw456@h"]})
    assert "pw123" not in json.dumps(shown) and "pw456" not in json.dumps(shown) and "k1" not in json.dumps(shown)
    assert shown["nested"]["project"] == "p" and shown["key"] == "***"


def test_a_second_writer_on_the_run_directory_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    from forgekit.config import ConfigError
    from forgekit.train import LOCK_FILE, _claim_run_dir, _release_run_dir

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(run_dir / LOCK_FILE)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write('pid x on y'); f.flush()\n"
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="is in use by another forgekit finetune"):
            _claim_run_dir(run_dir)
    finally:
        holder.kill()
        holder.wait()
    _claim_run_dir(run_dir)  # the kernel dropped the killed holder's lock
    _claim_run_dir(run_dir)  # a later run of the same process takes its own lock over
    _release_run_dir(run_dir)


def test_the_run_directory_cannot_traceback_or_escape(tmp_path):
    from forgekit.config import ConfigError
    from forgekit.train import _claim_run_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="output_dir: cannot create the run directory"):
        _claim_run_dir(tmp_path / "file" / "r")
    with pytest.raises(ConfigError, match="would put the run outside output_dir"):
        _claim_run_dir(tmp_path / "runs" / "..")


def test_stale_staging_folders_are_removed_on_the_next_start(tmp_path):
    import socket

    from forgekit.models import remove_stale_temp, temp_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    stale = tmp_path / f".tmp-{socket.gethostname()}-{int(dead.stdout)}-abc"
    stale.mkdir()
    live = temp_dir(tmp_path, ".tmp-")
    other_host = tmp_path / ".tmp-elsewhere-1-abc"
    other_host.mkdir()
    assert remove_stale_temp(tmp_path, ".tmp-") == [stale]
    assert live.exists() and other_host.exists() and not stale.exists()


def test_ctrl_c_exits_130_with_the_command_that_resumes(monkeypatch, capsys):
    import forgekit.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(forgekit.train, "finetune", interrupted)
    code = main(["finetune", "cfg.yaml", "learning_rate=2e-4"])
    _, err = capsys.readouterr()
    assert code == 130 and "forgekit finetune cfg.yaml learning_rate=2e-4" in err


def test_ctrl_c_during_fit_is_a_keyboard_interrupt_after_ray_trains_handler():
    """Ray Train installs its own SIGINT handler inside fit() and returns a result after aborting: `_fit` still
    raises KeyboardInterrupt, and puts the previous handler back."""
    import signal

    from forgekit.train import _fit

    calls = []

    class FakeTrainer:
        def _register_sigint_handler(self, controller):
            signal.signal(signal.SIGINT, lambda *a: calls.append("ray aborts the run"))

        def fit(self):
            self._register_sigint_handler(None)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            return "result"

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _fit(FakeTrainer())
    assert calls == ["ray aborts the run"] and signal.getsignal(signal.SIGINT) is before


def test_resume_says_the_step_and_ignores_a_partial_checkpoint(tmp_path, caplog):
    import logging

    from forgekit.train import _last_checkpoint

    done, partial = tmp_path / "checkpoints" / "step-000004", tmp_path / "checkpoints" / "step-000006"
    done.mkdir(parents=True)
    partial.mkdir()
    (done / "trainer_state.json").write_text("{}")
    (done / "optimizer.pt").write_text("x")
    with caplog.at_level(logging.INFO, logger="forgekit"):
        assert _last_checkpoint(tmp_path) == str(done)
    assert "resuming from step 4" in caplog.text and f"ignoring {partial}" in caplog.text
