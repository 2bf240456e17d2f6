"""Every shipped config loads and is laid out as documented; every DeepSpeed preset is what its name says.

GPU configs are checked without the Hugging Face Hub: schema validation (`load_config`), their DeepSpeed file,
prompt format, data paths (placeholders, or the sample data `scripts/make_sample_data.py` writes) and
LLMForge's layout. Configs of the embedded model also run the data preparation `forgekit validate` does.
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from forgekit.config import PromptFormatConfig, load_config
from forgekit.formats import resolve_prompt_format

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIRS = ("training_configs", "end_to_end_examples", "cookbooks")
HEADER_KEYS = ("Purpose", "Hardware", "Expected time", "Run")
PLACEHOLDER = re.compile(r"^s3://your-bucket/")
# the models LLMForge's layout covers (issue: training_configs/ and deepspeed_configs/)
CUSTOM_MODELS = (
    "meta-llama/Meta-Llama-3.1-8B-Instruct",
    "meta-llama/Meta-Llama-3.1-70B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Qwen/Qwen2.5-7B-Instruct",
    "google/gemma-2-27b-it",
    "HuggingFaceTB/SmolLM2-135M-Instruct",  # the embedded model: CPU configs
)


def _yaml_files() -> list[Path]:
    out = []
    for d in CONFIG_DIRS:
        for p in sorted((REPO / d).rglob("*")):
            # a notebook run by hand leaves run directories (with their config.yaml) beside it
            if p.suffix not in (".yaml", ".yml") or {".ipynb_checkpoints", "runs"} & set(p.relative_to(REPO).parts):
                continue
            # notebooks' folders may hold other YAML (e.g. a job spec); forgekit configs name a model
            if d == "training_configs" or "model_id" in (yaml.safe_load(p.read_text()) or {}):
                out.append(p)
    return out


CONFIGS = _yaml_files()
DEEPSPEED = sorted((REPO / "deepspeed_configs").glob("*.json"))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def header(path: Path) -> dict[str, str]:
    """The leading comment block as {key: text}; `#   ...` lines continue the previous key."""
    fields: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        m = re.match(r"([A-Z][A-Za-z ]+):\s*(.*)", text)
        if m and not line.startswith("#   "):
            key = m[1]
            fields[key] = m[2]
        elif key and text:
            fields[key] += " " + text
    return fields


def is_default_mode(path: Path) -> bool:
    return "--default" in header(path).get("Run", "")


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    """What `python scripts/make_sample_data.py` writes, generated into a temp dir (it is not committed)."""
    out = tmp_path_factory.mktemp("generated")
    argv = sys.argv
    sys.argv = ["make_sample_data.py", "--out", str(out)]
    try:
        runpy.run_path(str(REPO / "scripts" / "make_sample_data.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return out


def test_configs_are_found():
    assert len(CONFIGS) >= 2 * len(CUSTOM_MODELS) * 2  # default simple+custom and custom lora+full per model
    assert DEEPSPEED


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_starts_with_purpose_hardware_time_and_command(path):
    fields = header(path)
    missing = [k for k in HEADER_KEYS if not fields.get(k)]
    assert not missing, f"{rel(path)}: the leading comment lacks {missing} (has {list(fields)})"
    run = fields["Run"]
    assert rel(path) in run, f"{rel(path)}: the Run command does not name the file itself: {run!r}"
    assert "forgekit" in run or "make " in run or "python" in run, run
    if "/default/" in rel(path):
        assert run.endswith("--default"), f"{rel(path)}: default-mode configs run with --default"


@pytest.mark.parametrize("path", CONFIGS, ids=rel)
def test_config_validates_without_the_hub(path, sample_data):
    cfg = load_config(path, default=is_default_mode(path))  # schema only: no model or data is read
    if cfg.deepspeed is not None:
        ds = REPO / cfg.deepspeed.config_path
        assert ds.is_file() and ds.parent == REPO / "deepspeed_configs", cfg.deepspeed.config_path
    fmt = cfg.generation_config.prompt_format
    if isinstance(fmt, str):
        assert isinstance(resolve_prompt_format(fmt, None), PromptFormatConfig)
    for key in ("train_path", "valid_path"):
        value = getattr(cfg, key)
        if value is None or PLACEHOLDER.match(value):
            continue
        if value.startswith("data/generated/"):
            produced = sample_data / value.removeprefix("data/generated/")
            assert produced.is_file(), (
                f"{rel(path)}: {key} {value} is not written by scripts/make_sample_data.py"
            )
        elif not ((REPO / value).is_file() or (path.parent / value).is_file()):
            # data a notebook or command writes first (e.g. under runs/): the header must say how
            note = header(path).get("Data", "")
            explained = str(Path(value).parent) in note or re.search(r"\bwrit(es|ten)\b", note)
            assert explained, (
                f"{rel(path)}: {key} {value} is missing and the Data comment does not say who writes it"
            )


CUSTOM = [p for p in CONFIGS if rel(p).startswith("training_configs/custom/")]
DEFAULT = [p for p in CONFIGS if rel(p).startswith("training_configs/default/")]


@pytest.mark.parametrize("path", CUSTOM, ids=rel)
def test_custom_layout_org_model_kind_gpus_context(path):
    """custom/<org>--<model>/{lora,full}/<N>x<GPU>-<context>.yaml, matching the values inside."""
    parts = path.relative_to(REPO / "training_configs" / "custom").parts
    assert len(parts) == 3, rel(path)
    model_dir, kind, name = parts
    cfg = load_config(path)
    assert cfg.model_id == model_dir.replace("--", "/", 1)
    assert kind == ("lora" if cfg.is_lora else "full")
    m = re.fullmatch(r"(\d+)x([A-Za-z0-9-]+)-(\d+)\.yaml", name)
    assert m, f"{name}: expected <N>x<GPU>-<context>.yaml"
    assert int(m[1]) == cfg.num_devices
    assert int(m[3]) == cfg.context_length
    accelerators = [k.split(":", 1)[1] for k in cfg.worker_resources if k.startswith("accelerator_type:")]
    assert accelerators in ([], [m[2]]), f"{name}: GPU {m[2]} but worker_resources ask for {accelerators}"
    assert m[2] in header(path)["Hardware"].replace(" ", "")


@pytest.mark.parametrize("path", DEFAULT, ids=rel)
def test_default_layout_org_model_simple_or_custom(path):
    """training_configs/default/<org>/<model>-{simple,custom}.yaml; 'simple' sets no training values."""
    org, name = path.relative_to(REPO / "training_configs" / "default").parts
    m = re.fullmatch(r"(.+)-(simple|custom)\.yaml", name)
    assert m, name
    cfg = load_config(path, default=True)
    assert cfg.model_id == f"{org}/{m[1]}"
    assert cfg.lora_config["r"] == 8 and cfg.lora_config["target_modules"] == "all-linear"
    if m[2] == "simple":
        raw = yaml.safe_load(path.read_text())
        hardware_only = {
            "num_devices",
            "deepspeed",
            "attn_implementation",
            "generation_config",
            "worker_resources",
        }
        assert set(raw) - {"model_id", "train_path"} <= hardware_only, sorted(raw)


def test_every_model_has_default_and_custom_lora_and_full_configs():
    for model in CUSTOM_MODELS:
        org, name = model.split("/")
        base = REPO / "training_configs"
        for variant in ("simple", "custom"):
            assert (base / "default" / org / f"{name}-{variant}.yaml").is_file(), (model, variant)
        for kind in ("lora", "full"):
            assert list((base / "custom" / f"{org}--{name}" / kind).glob("*.yaml")), (model, kind)


def _runs_here_on_shipped_data(path: Path) -> bool:
    raw = yaml.safe_load(path.read_text())
    embedded = raw["model_id"].lower() in ("smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct")
    return embedded and str(raw["train_path"]).startswith("data/generated/")


EMBEDDED = [p for p in CONFIGS if _runs_here_on_shipped_data(p)]


@pytest.mark.parametrize("path", EMBEDDED, ids=rel)
def test_embedded_model_configs_prepare_their_data(path, sample_data, embedded_model_dir, tmp_path):
    """What `forgekit validate` does for configs that run here: tokenize the shipped data with the model."""
    from forgekit.plan import plan_run

    raw = yaml.safe_load(path.read_text())
    overrides = [
        f"{k}={sample_data / raw[k].removeprefix('data/generated/')}"
        for k in ("train_path", "valid_path")
        if str(raw.get(k, "")).startswith("data/generated/")
    ]
    cfg = load_config(path, overrides, default=is_default_mode(path))
    plan = plan_run(cfg, use_gpu=False, root=tmp_path / "cache")
    m = plan.data.manifest
    assert m["train_rows"] > 0 and 0 < m["supervised_share"] < 1
    assert plan.resolved.context_length and plan.resolved.num_epochs


# the CPU configs of training_configs/ (the quickstart's own run is tests/integration/test_quickstart_script.py)
CPU_RUNS = [p for p in EMBEDDED if rel(p).startswith("training_configs/") and "quickstart" not in rel(p)]


@pytest.mark.parametrize("path", CPU_RUNS, ids=rel)
def test_cpu_config_trains_to_a_complete_run_directory(path, sample_data, tiny_model_dir, shared_ray_cluster,
                                                        tmp_path, monkeypatch):
    """`forgekit finetune` on the config as shipped (its workers, DeepSpeed preset, LoRA or full, mode), with the
    tiny model for two steps: the run directory holds everything forgekit promises."""
    from forgekit.runs import list_checkpoints, read_metrics
    from forgekit.train import finetune

    monkeypatch.chdir(REPO)  # the configs' relative paths (deepspeed_configs/...) are the repository's
    raw = yaml.safe_load(path.read_text())
    overrides = [
        f"{k}={sample_data / raw[k].removeprefix('data/generated/')}"
        for k in ("train_path", "valid_path")
        if str(raw.get(k, "")).startswith("data/generated/")
    ] + [f"model_id={tiny_model_dir}", "max_steps=2", f"output_dir={tmp_path / 'runs'}"]
    result = finetune(path, overrides, default=is_default_mode(path), progress=False)
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == tmp_path / "runs"
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "result.json"):
        assert (run_dir / name).is_file(), name
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.num_devices == raw.get("num_devices", resolved.num_devices)
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2]
    assert all(r["loss"] > 0 and r["tokens"] > 0 and r["tokens_per_second"] > 0 for r in read_metrics(run_dir, "train"))
    (checkpoint,) = list_checkpoints(run_dir)[-1:]
    assert checkpoint.name == "step-000002"
    weights = "adapter_model.safetensors" if resolved.lora_config else "model.safetensors"
    assert (checkpoint / weights).is_file() and (checkpoint / "tokenizer_config.json").is_file()
    assert result["steps"] == 2 and result["train_tokens"] > 0 and result["wall_seconds"] > 0
    assert result["tokens_per_second"] > 0
    if raw.get("valid_path"):  # evaluated before training and at the last step
        assert [r["step"] for r in read_metrics(run_dir, "eval")] == [0, 2]
        assert result["best_checkpoint"] == str(checkpoint) and result["best_eval_loss"] > 0
        assert result["first_eval_loss"] > 0


# --- DeepSpeed presets
@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_preset_matches_its_name(path):
    ds = json.loads(path.read_text())
    m = re.fullmatch(r"zero_(\d)(?:_offload_(optim(?:\+param)?))?\.json", path.name)
    assert m, f"{path.name}: expected zero_<stage>[_offload_optim[+param]].json"
    zero = ds["zero_optimization"]
    assert zero["stage"] == int(m[1])
    offload = m[2] or ""
    assert (zero.get("offload_optimizer", {}).get("device") == "cpu") == ("optim" in offload)
    assert (zero.get("offload_param", {}).get("device") == "cpu") == ("param" in offload)
    # batch sizes, clipping and precision come from the YAML (forgekit fills "auto"), never from the preset
    for key in (
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "train_batch_size",
        "gradient_clipping",
    ):
        assert ds[key] == "auto", f"{path.name}: {key} must be 'auto'"
    assert ds["bf16"]["enabled"] == "auto"


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_accepts_the_zero_section(path):
    """DeepSpeed's own (strict) schema: a misspelt key is an error, not silently ignored."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    zero = json.loads(path.read_text())["zero_optimization"]
    resolved = {k: (1_000_000 if v == "auto" else v) for k, v in zero.items()}  # transformers fills "auto"
    assert DeepSpeedZeroConfig(**resolved).stage == zero["stage"]


def test_every_referenced_deepspeed_file_is_shipped():
    sections = [load_config(p, default=is_default_mode(p)).deepspeed for p in CONFIGS]
    used = {REPO / d.config_path for d in sections if d is not None}
    assert used and used <= set(DEEPSPEED)


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "deepspeed" in yaml.safe_load(p.read_text())], ids=rel
)
def test_deepspeed_file_agrees_with_the_yaml(path, monkeypatch):
    """The check `forgekit finetune` runs before reserving GPUs: no preset value contradicts the YAML."""
    from forgekit.plan import deepspeed_config

    monkeypatch.chdir(REPO)  # config paths are relative to the repository root, where the Run command runs
    ds = deepspeed_config(load_config(path, default=is_default_mode(path)), bf16=True)
    assert ds["bf16"]["enabled"] is True and ds["zero_optimization"]["stage"] in (0, 1, 2, 3)
