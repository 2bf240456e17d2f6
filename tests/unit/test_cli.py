"""Tests for the `forgekit` command: validate and preview-data, exit codes, overrides, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgekit.cli import main


@pytest.fixture
def workdir(tmp_path, tiny_model_dir, monkeypatch):
    """A config for the tiny model and 6 small conversations; forgekit's cache in a temp dir."""
    monkeypatch.setenv("FORGEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGEKIT_DEBUG", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Count to {i}."},
                        {"role": "assistant", "content": " ".join(map(str, range(i)))},
                    ]
                }
            )
            + "\n"
            for i in range(1, 7)
        )
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model_id": str(tiny_model_dir), "train_path": str(data)}))
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_prints_the_resolved_config_with_derived_values_marked(workdir, capsys):
    code, out, err = run(capsys, "validate", workdir / "cfg.yaml")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"# {workdir / 'cfg.yaml'}: valid (custom mode). Resolved config:"
    assert "context_length: 512  # derived" in lines
    assert "train_batch_size_per_device: 4  # derived" in lines
    # 6 rows / 4 per step -> 2 steps per epoch (the last one short, as the Trainer runs it) -> 50 epochs for
    # min_num_update_steps 100 (it used to say 100 epochs: a floor, while the workers ran 200 steps)
    assert "num_epochs: 50  # derived" in lines
    assert "# steps: 2 per epoch x 50 epoch(s) (derived) -> 100 optimizer steps (min_num_update_steps 100)" in lines
    assert "learning_rate: 0.0001" in lines  # a schema default: shown, not marked
    assert "lora_config: null" in lines  # custom mode without an adapter: full fine-tuning
    assert any(line.startswith("# data: 6 training examples -> 6 rows") for line in lines)
    assert any(line.startswith("# batch: 4 examples per optimizer step") for line in lines)
    [where] = [line for line in lines if line.startswith("# run directory: ")]  # what finetune would create
    assert where.startswith("# run directory: runs/") and "-full-" in where and where.endswith("(run_name derived from the config and data)")
    # the printed config is YAML that validates again
    body = yaml.safe_load("\n".join(line for line in lines if not line.startswith("#")))
    assert body["context_length"] == 512 and body["num_epochs"] == 50


def test_validate_default_mode_and_dotted_overrides(workdir, capsys):
    code, out, err = run(
        capsys,
        "validate",
        "--default",
        workdir / "cfg.yaml",
        "learning_rate=2e-4",
        "lora_config.r=4",
        "min_num_update_steps=3",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "(default mode)" in lines[0]
    assert "learning_rate: 0.0002" in lines
    assert "lora_config:" in lines  # the user's r merged over the default adapter, so not marked derived
    assert "  r: 4" in lines and "  target_modules: all-linear" in lines
    assert "num_epochs: 2  # derived" in lines  # 6 rows / 4 per step: 2 steps per epoch; 3 steps need 2 epochs
    # the cache built by the first call is reused
    code, out, _ = run(capsys, "validate", "--default", workdir / "cfg.yaml")
    assert code == 0 and "lora_config:  # derived" in out.splitlines()
    assert "# cache: reused" in out


@pytest.mark.parametrize(
    ("content", "overrides", "fragments"),
    [
        ("learnig_rate: 1e-4\n", [], ["learnig_rate: unknown key (did you mean 'learning_rate'?)"]),
        ("", ["num_epochs=0"], ["num_epochs: Input should be greater than or equal to 1"]),
        ("", ["learning_rate"], ["override 'learning_rate': expected key=value"]),
        (
            "generation_config:\n  prompt_format: chatmll\n",
            [],
            ["unknown built-in format 'chatmll'", "did you mean 'chatml'?"],
        ),
        ("", ["model_id=/no/such/model"], ["model_id: /no/such/model: directory not found"]),
        ("", ["train_path=mydata/train.jsonl"], ["mydata/train.jsonl: file not found"]),  # not a HF dataset name
        ("", ["deepspeed.config_path=/no/such/ds.json"], ["deepspeed.config_path: /no/such/ds.json not found"]),
    ],
    ids=["unknown-key", "bad-override-value", "bad-override-syntax", "unknown-format", "unloadable-model",
         "missing-data-file", "missing-deepspeed-file"],
)
def test_config_problems_exit_2_without_traceback(workdir, capsys, content, overrides, fragments):
    cfg = workdir / "cfg.yaml"
    cfg.write_text(cfg.read_text() + content)
    code, out, err = run(capsys, "validate", cfg, *overrides)
    assert code == 2
    assert err.startswith("error: ")
    for f in fragments:
        assert f in err
    assert "Traceback" not in err + out


def test_data_problems_exit_2_with_file_and_line(workdir, capsys):
    data = workdir / "train.jsonl"
    data.write_text(data.read_text() + '{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    code, _, err = run(capsys, "preview-data", workdir / "cfg.yaml")
    assert code == 2
    assert f"{data}:7: no assistant message" in err
    assert f"{data}:8: invalid JSON" in err
    assert "Traceback" not in err


def test_validate_reports_the_model_the_data_and_the_deepspeed_file_at_once(workdir, capsys):
    """Problems found after the schema (the model's tokenizer, both data files, the DeepSpeed file) are reported
    in one go, not one stage per attempt."""
    data = workdir / "train.jsonl"
    data.write_text(data.read_text() + "not json\n")
    (workdir / "no-model").mkdir()  # a directory without a tokenizer
    cfg = workdir / "broken.yaml"
    cfg.write_text(yaml.safe_dump({"model_id": str(workdir / "no-model"), "train_path": str(data),
                                   "valid_path": str(workdir / "missing.jsonl"),
                                   "deepspeed": {"config_path": str(workdir / "nope.json")}}))
    code, _, err = run(capsys, "validate", cfg)
    assert code == 2 and "Traceback" not in err
    for fragment in (f"deepspeed.config_path: {workdir / 'nope.json'} not found",
                     f"model_id: {workdir / 'no-model'}: a directory without config.json",
                     f"{data}:7: invalid JSON", f"{workdir / 'missing.jsonl'}: file not found"):
        assert fragment in err, (fragment, err)
    assert "4 problem(s)" in err
    # with the model fixed: the data's and the DeepSpeed file's problems, still together
    code, _, err = run(capsys, "validate", cfg, f"model_id={yaml.safe_load((workdir / 'cfg.yaml').read_text())['model_id']}")
    assert code == 2 and "nope.json not found" in err and f"{data}:7: invalid JSON" in err and "missing.jsonl" in err


def test_command_line_exit_codes_in_a_real_process(workdir, tmp_path):
    """The installed entry point: a bad config is one report and exit 2; the missing file too."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_id: m\ntrain_path: t.jsonl\npadding: left\nnum_epoch: 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "forgekit.cli", "validate", str(bad)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "2 problem(s)" in proc.stderr
    assert "padding: Input should be 'longest' or 'max_length' (got 'left')" in proc.stderr
    assert "num_epoch: unknown key (did you mean 'num_epochs'?)" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "forgekit.cli", "validate", str(tmp_path / "missing.yaml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "cannot read config" in proc.stderr and "Traceback" not in proc.stderr


def test_preview_data_marks_trained_spans_and_the_supervised_share(workdir, capsys):
    code, out, err = run(capsys, "preview-data", "-n", "2", "--plain", workdir / "cfg.yaml")
    assert code == 0, err
    header = out.splitlines()[0]
    assert header.startswith("6 training rows from 6 examples; context_length 512; ")
    assert "% of tokens are trained (marked ⟦like this⟧)" in header
    assert out.count("--- row ") == 2
    # the marked text of row 0 is the reply with its end-of-turn token, and nothing else
    row0 = out.split("--- row 0:")[1].split("--- row 1:")[0]
    assert row0.count("⟦") == 1
    assert row0.split("⟦")[1].split("⟧")[0] == "0<|im_end|>\n"
    assert "Count to 1." in row0.split("⟦")[0]  # the prompt is shown, unmarked
    # the share printed is the manifest's
    share = float(header.split("; ")[2].split("%")[0])
    manifest = json.loads(next((workdir / "cache" / "prepared").glob("*/manifest.json")).read_text())
    assert share == pytest.approx(100 * manifest["supervised_share"], abs=0.05)


def test_preview_data_with_overrides_after_the_config(workdir, capsys):
    code, out, err = run(
        capsys, "preview-data", "-n", "1", "--plain", workdir / "cfg.yaml", "context_length=39"
    )
    assert code == 0, err
    assert out.startswith(
        "1 training rows from 6 examples; context_length 39;"
    )  # only "Count to 1." (38 tokens) fits
    assert out.count("--- row ") == 1


def test_overrides_may_follow_options(workdir, capsys):
    code, out, err = run(capsys, "preview-data", workdir / "cfg.yaml", "-n", "1", "context_length=39")
    assert code == 0, err
    assert "context_length 39" in out


def test_debug_env_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.setenv("FORGEKIT_DEBUG", "1")
    from forgekit.config import ConfigError

    with pytest.raises(ConfigError):
        main(["validate", str(workdir / "cfg.yaml"), "num_epochs=0"])


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("validate", "preview-data", "finetune", "models"):
        assert cmd in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "x.yaml"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_models_list_prints_json_lines(capsys, embedded_model_dir):
    code, out, _ = run(capsys, "models", "list")
    assert code == 0
    entries = [json.loads(line) for line in out.splitlines()]
    assert any("smollm2-135m-instruct" in json.dumps(e) for e in entries)


def test_validate_accepts_a_path_relative_to_the_working_dir(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    code, out, _ = run(capsys, "validate", Path("cfg.yaml"))
    assert code == 0 and out.startswith("# cfg.yaml: valid")


def test_validate_config_only_checks_a_gpu_config_without_the_model_or_the_data(capsys, monkeypatch, tmp_path):
    """A shipped 70B config on a machine without Hub access: the config and its DeepSpeed file are checked."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the config's deepspeed_configs/ path is the repository's
    path = "training_configs/custom/meta-llama--Meta-Llama-3.1-70B-Instruct/full/16xH100-4096.yaml"
    code, out, err = run(capsys, "validate", path, "--config-only")
    assert code == 0, err
    assert "the model and the data were not loaded" in out
    assert "model_id: meta-llama/Meta-Llama-3.1-70B-Instruct" in out and "num_devices: 16" in out
    # its DeepSpeed file is still read: a missing one, or one contradicting the YAML, fails
    code, _, err = run(capsys, "validate", path, "--config-only", f"deepspeed.config_path={tmp_path / 'no.json'}")
    assert code == 2 and "no.json not found" in err
    (tmp_path / "ds.json").write_text('{"gradient_accumulation_steps": 7}')
    code, _, err = run(capsys, "validate", path, "--config-only", f"deepspeed.config_path={tmp_path / 'ds.json'}")
    assert code == 2 and "gradient_accumulation_steps=7 contradicts gradient_accumulation_steps=" in err


def test_unknown_embedded_model_exits_2(capsys):
    code, out, err = run(capsys, "models", "fetch", "no-such-model")
    assert code == 2 and "'no-such-model' is not an embedded model" in err and "Traceback" not in err + out


def test_validate_finds_a_bf16_deepspeed_file_for_a_cpu_run(workdir, capsys):
    """CPU workers train in fp32: a DeepSpeed file that enables bf16 is a config error before any worker starts."""
    ds = workdir / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    code, _, err = run(capsys, "validate", workdir / "cfg.yaml", "use_gpu=false", f"deepspeed.config_path={ds}")
    assert code == 2 and f"{ds}: bf16.enabled=True, but this run trains in fp32" in err, err
    # precision: fp32 decides it on any device; on GPUs, precision: bf16 contradicts a file that enables fp16
    code, _, err = run(capsys, "validate", workdir / "cfg.yaml", "precision=fp32", f"deepspeed.config_path={ds}")
    assert code == 2 and f"{ds}: bf16.enabled=True, but this run trains in fp32" in err, err
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}))
    code, _, err = run(capsys, "validate", workdir / "cfg.yaml", "use_gpu=true", "precision=bf16",
                       f"deepspeed.config_path={ds}")
    assert code == 2 and f"{ds}: fp16.enabled=True, but this run trains in bf16" in err, err
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}}))
    assert run(capsys, "validate", workdir / "cfg.yaml", "use_gpu=false", f"deepspeed.config_path={ds}")[0] == 0


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_finetune_names_an_address_where_no_cluster_answers(workdir, capsys, monkeypatch, how):
    """An address with nothing listening fails in seconds, naming where it came from (Ray would retry for minutes)."""
    import socket

    import ray

    with socket.socket() as s:  # a free port, closed again: connections to it are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever the suite started
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init called: {kw}"))
    address = f"127.0.0.1:{port}"
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
        argv = ["finetune", workdir / "cfg.yaml"]
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        argv = ["finetune", workdir / "cfg.yaml", "--address", address]
    code, out, err = run(capsys, *argv)
    assert code == 2 and f"{how}={address}: no Ray cluster answers there" in err, err
    assert "Traceback" not in out + err


def test_unreachable_tries_only_host_port_addresses():
    import socket

    from forgekit.train import unreachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert unreachable(f"127.0.0.1:{port}") is None
        assert unreachable(f"ray://127.0.0.1:{port}") is None
    assert unreachable(f"127.0.0.1:{port}")  # closed now: refused
    assert unreachable("auto") is None and unreachable("local") is None and unreachable("head-node") is None
    assert unreachable(f"http://127.0.0.1:{port}") is None  # a dashboard address: ray.init says what to set
