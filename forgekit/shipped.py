"""The configs and DeepSpeed presets forgekit ships: find them, list them, resolve paths against them, copy one.

One copy lives in git, at the repository's top level (`training_configs/`, `deepspeed_configs/`). A built wheel
holds the same files as package data under `forgekit/_shipped/` (setup.py's build step copies them there); a
checkout (an editable install) reads the top-level folders. `forgekit ls` lists them, grouped by folder, and
`forgekit cp NAME DEST` copies one to edit, as torchtune's `tune ls` / `tune cp` do.

`resolve_config_paths` is what `forgekit.config.load_config` calls for a YAML file: a relative
`deepspeed.config_path` resolves against the config file's directory, then the current directory, then the
shipped presets (`deepspeed_configs/zero_2.json` is the shipped zero_2.json wherever forgekit is installed); a
relative `train_path` / `valid_path` against the config file's directory where the file is there, else it stays
relative to the current directory.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
from pathlib import Path
from typing import Any

from forgekit.errors import ForgekitError

__all__ = ["SHIPPED_FOLDERS", "ShippedError", "copy_shipped", "list_shipped", "resolve_config_paths",
           "resolve_shipped", "shipped_root"]

SHIPPED_FOLDERS = ("training_configs", "deepspeed_configs")
SUFFIXES = (".yaml", ".yml", ".json")


class ShippedError(ForgekitError):
    """An unknown or ambiguous shipped name, or a copy that would overwrite a file (the CLI exits 2)."""


def shipped_root() -> Path:
    """The folder holding `training_configs/` and `deepspeed_configs/`: the wheel's package data, else the checkout.

    Raises:
        ShippedError: neither is there (a wheel built without its package data).
    """
    package = Path(__file__).resolve().parent
    for root in (package / "_shipped", package.parent):  # installed wheel, then the checkout the package is in
        if all((root / name).is_dir() for name in SHIPPED_FOLDERS):
            return root
    raise ShippedError(f"forgekit's shipped configs are missing: neither {package / '_shipped'} nor {package.parent} "
                       f"holds {' and '.join(SHIPPED_FOLDERS)}/ (reinstall forgekit from a wheel built by setup.py)")


def list_shipped() -> list[str]:
    """Every shipped file, as a path relative to `shipped_root()` (`training_configs/quickstart/x.yaml`), sorted."""
    root = shipped_root()
    return sorted(p.relative_to(root).as_posix() for name in SHIPPED_FOLDERS for p in (root / name).rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and ".ipynb_checkpoints" not in p.parts)


def resolve_shipped(name: str) -> Path:
    """The shipped file `name` names: its path under the shipped root (`training_configs/quickstart/x.yaml`), or
    under one of the shipped folders (`quickstart/x.yaml`, `zero_2.json`), the suffix optional; or a file name
    that only one shipped file has (`smollm2-135m-lora-cpu`).

    Raises:
        ShippedError: no shipped file, or several, match; with a did-you-mean.
    """
    names = list_shipped()
    wanted = name.strip().strip("/")
    candidates = [wanted, *(f"{folder}/{wanted}" for folder in SHIPPED_FOLDERS)]
    for candidate in candidates:
        for full in (candidate, *(candidate + s for s in SUFFIXES)):
            if full in names:
                return shipped_root() / full
    by_file = [n for n in names if Path(n).name == wanted or Path(n).stem == wanted]
    if len(by_file) == 1:
        return shipped_root() / by_file[0]
    if by_file:
        raise ShippedError(f"'{name}' names {len(by_file)} shipped files; give one of them: " + ", ".join(map(_short, by_file)))
    short = {_short(n): n for n in names}
    near = difflib.get_close_matches(wanted, list(short) + names, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(repr(_short(n)) for n in dict.fromkeys(short.get(m, m) for m in near))}?)"
    raise ShippedError(f"'{name}' is not a shipped config or DeepSpeed preset{hint if near else ''}; "
                       "`forgekit ls` lists them")


def _short(name: str) -> str:
    """The name `forgekit ls` shows: the path inside its shipped folder."""
    return name.split("/", 1)[1]


def copy_shipped(name: str, dest: str | Path, force: bool = False) -> Path:
    """Copy the shipped file `name` (see `resolve_shipped`) to `dest` (a file, or a directory to copy into).

    Returns:
        The path written.

    Raises:
        ShippedError: `name` is unknown, or the destination exists and `force` is false.
    """
    source = resolve_shipped(name)
    target = Path(dest).expanduser()
    if target.is_dir() or str(dest).endswith(("/", os.sep)):
        target = target / source.name
    if target.exists() and not force:
        raise ShippedError(f"{target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def _is_local_relative(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "://" not in value and not Path(value).expanduser().is_absolute()


def resolve_config_paths(data: dict, config_dir: Path) -> dict:
    """`data` (a config file's keys) with its relative paths resolved for a file in `config_dir` (see module doc).

    A path resolved against the config's directory or the shipped presets becomes absolute; one found only in
    the current directory, or nowhere, stays as written (the run makes it absolute when it starts, or reports it
    missing). Values that are not local relative paths (URLs, Hugging Face dataset names) are left alone.
    """
    out = dict(data)
    config_dir = Path(config_dir).resolve()
    for key in ("train_path", "valid_path"):
        value = out.get(key)
        if _is_local_relative(value) and (config_dir / value).is_file():
            out[key] = str(config_dir / value)
    ds = out.get("deepspeed")
    if isinstance(ds, dict) and _is_local_relative(ds.get("config_path")):
        path = ds["config_path"]
        beside = config_dir / path
        if beside.is_file():
            out["deepspeed"] = {**ds, "config_path": str(beside)}
        elif not Path(path).is_file():  # the current directory (today's behaviour), then the shipped presets
            preset = _shipped_preset(path)
            if preset is not None:
                out["deepspeed"] = {**ds, "config_path": str(preset)}
    return out


def _shipped_preset(path: str) -> Path | None:
    """The shipped DeepSpeed preset a relative path names (`deepspeed_configs/zero_2.json`, `zero_2.json`)."""
    try:
        root = shipped_root()
    except ShippedError:
        return None
    parts = Path(path).parts
    for candidate in (root / path, root / "deepspeed_configs" / path if len(parts) == 1 else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


# --- the `forgekit ls` and `forgekit cp` commands (registered by forgekit.cli)
def _hardware(path: Path) -> str:
    """The first line of a config's `# Hardware:` comment, shortened."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# Hardware:"):
            text = line.removeprefix("# Hardware:").strip()
            return text if len(text) <= 60 else text[:57] + "..."
    return ""


def _listing_order(name: str) -> tuple[int, str]:
    """training_configs/ before deepspeed_configs/, and in training_configs/ quickstart, default, custom."""
    folder, rest = name.split("/", 1)
    first = ("quickstart", "default", "custom")
    sub = rest.split("/", 1)[0]
    return (SHIPPED_FOLDERS.index(folder) * 10 + (first.index(sub) if sub in first else len(first)), name)


def format_listing() -> str:
    """`forgekit ls`'s text: the shipped configs grouped by `training_configs/`'s folders, then the presets."""
    root = shipped_root()
    lines: list[str] = []
    groups: dict[str, list[str]] = {}
    for name in sorted(list_shipped(), key=_listing_order):
        folder, rest = name.split("/", 1)
        group = f"{folder}/{rest.split('/', 1)[0]}/" if folder == "training_configs" and "/" in rest else f"{folder}/"
        groups.setdefault(group, []).append(name)
    width = max(len(_short(n)) for names in groups.values() for n in names)
    for group, names in groups.items():
        lines.append(group)
        for name in names:
            note = _hardware(root / name) if name.endswith((".yaml", ".yml")) else ""
            lines.append(f"  {_short(name):{width}s}  {note}".rstrip())
    lines.append(f"# copy one to edit: forgekit cp NAME DEST (e.g. forgekit cp {_short(groups[next(iter(groups))][0])} "
                 f"my.yaml); shipped in {root}")
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    print(format_listing())
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    target = copy_shipped(args.name, args.dest, force=args.force)
    print(f"wrote {target}")
    if target.suffix in (".yaml", ".yml"):
        print("# its relative deepspeed.config_path still finds the shipped preset; point train_path and valid_path "
              "at your data")
    return 0


def register(sub: Any) -> None:
    """Add `ls` and `cp` to forgekit's subcommands."""
    p = sub.add_parser("ls", help="list the shipped configs and DeepSpeed presets")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("cp", help="copy a shipped config or DeepSpeed preset to edit")
    p.add_argument("name", help="as `forgekit ls` shows it, e.g. quickstart/smollm2-135m-lora-cpu.yaml or zero_2.json")
    p.add_argument("dest", help="file to write, or a directory to copy into")
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    p.set_defaults(func=cmd_cp)
