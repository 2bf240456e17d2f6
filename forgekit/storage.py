"""Paths on local disk or object storage: what every path field of a config (`train_path`, `output_dir`, checkpoints)
goes through, via fsspec.

A path is local (`runs/x`, `/data/x`, `file:///data/x`) or remote: `s3://bucket/key` (s3fs), `gs://bucket/key`
(gcsfs), `hf://datasets/org/name/file` (huggingface_hub), `http(s)://...` (read only). Remote backends are the
`s3` / `gcs` extras (`pip install 'forgekit[s3]'`); a missing one is a `StorageError` that says what to install.

Credentials come only from the environment or the provider's standard chain, never from the config:

- S3 and S3-compatible servers (MinIO, Ceph, moto): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (or `AWS_PROFILE`),
  `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` for a server that is not AWS
  (`export AWS_ENDPOINT_URL=http://minio.local:9000`); s3fs reads them through botocore.
- GCS: `GOOGLE_APPLICATION_CREDENTIALS` (a service-account JSON file) or the machine's default credentials; an
  emulator (fake-gcs-server) with `STORAGE_EMULATOR_HOST=http://host:port`, anonymously; off Google Cloud,
  `NO_GCE_CHECK=true` spares every credential lookup google-auth's metadata-server probe (seconds each).
- Hugging Face: `HF_TOKEN`.

Ray Train writes a remote run directory through the pyarrow filesystem `ray_storage` builds on the same fsspec
filesystem, so Ray and forgekit see the same credentials and endpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from forgekit.errors import ForgekitError

__all__ = [
    "BACKENDS",
    "StorageError",
    "check_reachable",
    "download_dir",
    "exists",
    "filesystem",
    "is_remote",
    "join",
    "listdir",
    "localize",
    "ray_storage",
    "read_text",
    "redact",
    "remove",
    "scheme",
    "upload_dir",
    "write_bytes",
    "write_text",
]

# scheme -> (fsspec backend package, the version tested with forgekit (requirements/lock-cpu.txt), forgekit extra)
BACKENDS = {
    "s3": ("s3fs", "2026.9.0", "s3"),
    "s3a": ("s3fs", "2026.9.0", "s3"),
    "gs": ("gcsfs", "2026.10.1", "gcs"),
    "gcs": ("gcsfs", "2026.10.1", "gcs"),
}


class StorageError(ForgekitError):
    """A path cannot be read or written: no backend for its scheme, no credentials, no such bucket, no answer."""


def redact(uri: str) -> str:
    """`uri` with the password of its user info replaced by `***` (`http://me:secret@host` -> `http://me:***@host`)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def scheme(path: str | os.PathLike) -> str:
    """The URL scheme of `path`, lower case ('' for a plain local path)."""
    text = str(path)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is on object storage or a server (anything but a local path or `file://`)."""
    return scheme(path) not in ("", "file")


def join(path: str | os.PathLike, *parts: str) -> str:
    """`path` / parts, for local paths and URLs alike (URLs keep their scheme and use `/`)."""
    if not is_remote(path):
        return str(Path(_local(path)).joinpath(*parts))
    return "/".join([str(path).rstrip("/"), *(p.strip("/") for p in parts)])


def _local(path: str | os.PathLike) -> str:
    return str(path).removeprefix("file://")


def _where(path: str, key: str | None) -> str:
    return f"{key}: {redact(path)}" if key else redact(path)


def _missing_backend(path: str, key: str | None, e: ImportError) -> StorageError:
    known = BACKENDS.get(scheme(path))
    if known:
        package, version, extra = known
        return StorageError([f"{_where(path, key)}: {scheme(path)}:// needs {package}, which is not installed: "
                             f"pip install '{package}=={version}' (or 'forgekit[{extra}]'), on every node"])
    return StorageError([f"{_where(path, key)}: the fsspec backend of {scheme(path)}:// is not installed ({e})"])


def filesystem(path: str | os.PathLike, key: str | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of `path` and the path inside it (`s3://b/k` -> (S3FileSystem, 'b/k')).

    Args:
        path: a local path or URL.
        key: the config key `path` came from, named in errors.

    Raises:
        StorageError: the scheme's backend is not installed, or fsspec knows no such scheme.
    """
    import fsspec

    text = str(path)
    if not is_remote(text):
        return fsspec.filesystem("file"), str(Path(_local(text)).expanduser().absolute())
    try:
        # no listings cache: a run directory is written by other processes (Ray's workers, a resumed driver), and a
        # cached listing would hide their files from exists() / listdir() here
        return fsspec.core.url_to_fs(text, use_listings_cache=False)
    except ImportError as e:
        raise _missing_backend(text, key, e) from None
    except ValueError as e:  # fsspec: "Protocol not known"
        raise StorageError([f"{_where(text, key)}: forgekit cannot read or write {scheme(text)}:// paths ({e}); "
                            "use a local path, s3://, gs:// or hf://"]) from None


def ray_storage(path: str | os.PathLike, key: str = "output_dir") -> tuple[str, Any]:
    """`(storage_path, storage_filesystem)` for Ray Train's `RunConfig`: a local directory and None, or the path
    inside the bucket and a `pyarrow.fs` filesystem wrapping the fsspec one (the same credentials and endpoint)."""
    if not is_remote(path):
        return str(Path(_local(path)).expanduser().resolve()), None
    import pyarrow.fs

    fs, inner = filesystem(path, key)
    return inner, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _problem(e: BaseException) -> str:
    """What went wrong with a storage call, for a user (the backends' own exception types are not imported: only
    the one in use is installed)."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"NoCredentialsError", "PartialCredentialsError"}:
        return ("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
                "environment of every node")
    if "DefaultCredentialsError" in names:
        return "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionError"}:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        where = f" at {redact(endpoint)} (AWS_ENDPOINT_URL)" if endpoint else ""
        return f"the storage server does not answer{where}"
    if isinstance(e, FileNotFoundError):
        return "not found (no such bucket or object)"
    if isinstance(e, PermissionError):
        return "access denied: check the credentials in the environment and the bucket's permissions"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _call(path: str, key: str | None, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - every backend's failure becomes one message naming the key
        raise StorageError([f"{_where(path, key)}: {_problem(e)}"]) from None


def check_reachable(path: str | os.PathLike, key: str, write: bool = False) -> None:
    """On the driver, before any worker starts: the bucket of a remote `path` answers (and takes a write).

    Args:
        path: a remote URL (local paths are not checked).
        key: the config key, named in the error.
        write: also write and delete a small object under `path` (for `output_dir`).

    Raises:
        StorageError: no backend, no credentials, no such bucket, access denied, or no answer.
    """
    text = str(path)
    if not is_remote(text):
        return
    fs, inner = filesystem(text, key)
    if scheme(text) in ("http", "https"):  # a web server: the file itself, read-only
        if write:
            raise StorageError([f"{_where(text, key)}: http(s) is read-only; write to a local path, s3:// or gs://"])
        if not _exists(text, key, fs, inner):
            raise StorageError([f"{_where(text, key)}: not found on the server"])
        return
    bucket = inner.split("/", 1)[0]
    if not _exists(text, key, fs, bucket):  # (s3fs's own exists() is False also when no server answers)
        raise StorageError([f"{_where(text, key)}: the bucket {bucket} does not exist (or these credentials may not "
                            "see it)"])
    if write:
        probe = f"{inner.rstrip('/')}/.forgekit-write-check-{os.getpid()}"
        _call(text, key, fs.pipe_file, probe, b"ok")
        _call(text, key, fs.rm_file, probe)


def exists(path: str | os.PathLike, key: str | None = None) -> bool:
    """Whether a file or directory (a prefix holding objects) exists at `path`."""
    fs, inner = filesystem(path, key)
    return _exists(str(path), key, fs, inner)


def _exists(path: str, key: str | None, fs: Any, inner: str) -> bool:
    try:
        fs.info(inner)
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001
        raise StorageError([f"{_where(path, key)}: {_problem(e)}"]) from None
    return True


def read_text(path: str | os.PathLike, key: str | None = None) -> str:
    """The UTF-8 text of a file.

    Raises:
        StorageError: `<path>: file not found`, or why it cannot be read.
    """
    text = str(path)
    fs, inner = filesystem(text, key)
    try:
        return fs.cat_file(inner).decode("utf-8")
    except FileNotFoundError:
        raise StorageError([f"{_where(text, key)}: file not found"]) from None
    except IsADirectoryError:
        raise StorageError([f"{_where(text, key)}: a directory, not a file"]) from None
    except Exception as e:  # noqa: BLE001
        raise StorageError([f"{_where(text, key)}: cannot read: {_problem(e)}"]) from None


def write_text(path: str | os.PathLike, text: str, key: str | None = None) -> None:
    """Write a whole file at once: readers see the old or the new content, never a part (a local file is renamed
    into place; an object store's PUT is atomic)."""
    write_bytes(path, text.encode("utf-8"), key)


def write_bytes(path: str | os.PathLike, data: bytes, key: str | None = None) -> None:
    """`write_text` for bytes (a figure, say): the old or the new content, never a part."""
    target = str(path)
    if not is_remote(target):
        local = Path(_local(target)).expanduser()
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        return
    fs, inner = filesystem(target, key)
    _call(target, key, fs.pipe_file, inner, data)


def listdir(path: str | os.PathLike, key: str | None = None) -> list[str]:
    """Names of the entries directly under `path`, sorted ([] when there is nothing there)."""
    fs, inner = filesystem(path, key)
    try:
        entries = fs.ls(inner, detail=False)
    except FileNotFoundError:
        return []
    except Exception as e:  # noqa: BLE001
        raise StorageError([f"{_where(str(path), key)}: cannot list: {_problem(e)}"]) from None
    here = inner.rstrip("/")
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != here})


def remove(path: str | os.PathLike, key: str | None = None) -> None:
    """Delete a file or a whole directory (prefix); nothing there is not an error."""
    fs, inner = filesystem(path, key)
    try:
        fs.rm(inner, recursive=True)
    except FileNotFoundError:
        return
    except Exception as e:  # noqa: BLE001
        raise StorageError([f"{_where(str(path), key)}: cannot delete: {_problem(e)}"]) from None


def _files(fs: Any, inner: str) -> dict[str, dict]:
    """Every file under `inner`, by its path relative to `inner`, with its listing details."""
    found = fs.find(inner, detail=True)
    root = inner.rstrip("/") + "/"
    return {name[len(root):]: info for name, info in found.items()
            if info.get("type") != "directory" and name.startswith(root)}


def upload_dir(local_dir: str | os.PathLike, path: str | os.PathLike, key: str | None = None) -> None:
    """Copy every file under `local_dir` to the directory `path` (local or remote), keeping the layout."""
    source = Path(local_dir)
    fs, inner = filesystem(path, key)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        target = f"{inner.rstrip('/')}/{file.relative_to(source).as_posix()}"
        if not is_remote(path):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        _call(str(path), key, fs.put_file, str(file), target)


def download_dir(path: str | os.PathLike, local_dir: str | os.PathLike, key: str | None = None) -> Path:
    """Copy every file under the directory `path` into `local_dir` (created), keeping the layout."""
    fs, inner = filesystem(path, key)
    files = _call(str(path), key, _files, fs, inner)
    if not files:
        raise StorageError([f"{_where(str(path), key)}: no files there"])
    _get(str(path), key, fs, inner, files, Path(local_dir))
    return Path(local_dir)


def _get(path: str, key: str | None, fs: Any, inner: str, files: dict[str, dict], out: Path) -> None:
    for rel in sorted(files):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _call(path, key, fs.get_file, f"{inner.rstrip('/')}/{rel}", str(out / rel))


def _version(info: dict) -> str:
    """What changes when an object is rewritten: its ETag (S3), md5/generation (GCS), else mtime and size."""
    for field in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "updated"):
        if info.get(field) is not None:
            return f"{info[field]}:{info.get('size')}"
    return str(info.get("size"))


def localize(path: str | os.PathLike, cache_dir: str | os.PathLike, key: str | None = None) -> Path:
    """A local directory holding what `path` holds: `path` itself when it is local; for a remote checkpoint or model
    directory, a copy downloaded once into `cache_dir`, for `from_pretrained` to load.

    The copy is keyed by the URL and every file's version (ETag / mtime, size), so a rewritten checkpoint is
    downloaded again and an unchanged one never is; it is renamed into place whole, so a concurrent or interrupted
    download never leaves a partial copy behind.

    Raises:
        StorageError: no backend or credentials, or nothing at `path`.
    """
    text = str(path)
    if not is_remote(text):
        return Path(_local(text)).expanduser()
    fs, inner = filesystem(text, key)
    files = _call(text, key, _files, fs, inner)
    if not files:
        raise StorageError([f"{_where(text, key)}: no files there (a checkpoint directory was expected)"])
    listing = json.dumps({"url": text.rstrip("/"), "files": {rel: _version(info) for rel, info in sorted(files.items())}})
    digest = hashlib.sha256(listing.encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / f"{inner.rstrip('/').rsplit('/', 1)[-1]}-{digest}"
    if target.is_dir():
        return target
    partial = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    _get(text, key, fs, inner, files, partial)
    try:
        os.replace(partial, target)
    except OSError:  # another process put the same copy in place first
        shutil.rmtree(partial, ignore_errors=True)
    return target
