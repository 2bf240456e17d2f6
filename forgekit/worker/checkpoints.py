"""Checkpoints of a run: the Trainer writes them into a node-local staging dir, this publishes them whole.

`checkpoints/step-NNNNNN` appears by one atomic rename with every node's part in it, or not at all: on a local or
shared file system, the first worker of every node copies its node's part (each rank's ZeRO shards and RNG state
are written on the rank's own node) into one gathering dir; after a barrier, world rank 0 reports it to Ray,
whose upload function (`publish`) renames it into place. On remote storage (s3://, gs://) each node's part is
uploaded by Ray into the same prefix; once every node's upload returned, world rank 0 writes the `UPLOADED` marker
into it (an object store has no rename: a resume takes only checkpoints with the marker). Each node then deletes
its local copy. A disk without room for a checkpoint stops the run with `DiskFull`, which names the directory and
the bytes needed; a failed worker deletes its staging dir and what it had gathered, and the checkpoints published
before stay as they were.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from forgekit import faults

__all__ = ["CHECKPOINTS", "DIVERGED", "UPLOADED", "CheckpointPublisher", "DiskFull", "barrier",
           "has_optimizer_state", "node_dir"]

# names in the run directory: the published checkpoints, and the message of a run that diverged
CHECKPOINTS, DIVERGED = "checkpoints", "diverged.txt"
UPLOADED = ".forgekit-uploaded"  # in a remote checkpoint: every node's part is in


class DiskFull(RuntimeError):
    """A checkpoint does not fit on the disk it is written to; the message names the directory and the bytes."""


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _free(path: Path) -> int:
    """Bytes free for writing in `path` (or its nearest existing parent)."""
    return shutil.disk_usage(next(d for d in (path, *path.parents) if d.exists())).free


def _disk_full(e: BaseException | None) -> tuple[bool, Path | None]:
    """Whether `e` (or what caused it) is a write refused for want of space or quota, and the file it names (an
    OSError's filename), if any. torch's and safetensors' writers keep only the OS's text (`file write failed`,
    `StorageFull`), shutil.copytree only the errors' text: those count too, without a file."""
    said = False
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True, Path(e.filename) if e.filename else None
        said = said or any(text in str(e) for text in ("No space left on device", "Disk quota exceeded", "StorageFull"))
        e = e.__cause__ or e.__context__
    return said, None


def disk_full_message(step: int | None, directory: str | Path, needed: int | None, free: int) -> str:
    """What a user reads when checkpoint `step` does not fit in `directory` (`needed` bytes, None: unknown)."""
    what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
    size = f"it needs {needed:,} bytes ({needed / 1e6:,.1f} MB), {free:,} are free there" if needed else (
        f"it did not fit in the {free:,} bytes free there")
    return (f"no space left on device: {what} could not be written to {directory}: {size}. Nothing partial was "
            "published and the checkpoints before it are complete: free space there (each step's checkpoint is as "
            "large; num_checkpoints_to_keep keeps fewer), or point output_dir (TMPDIR for the node-local staging "
            "copy) at a larger disk, and run the same command again: it resumes from the last checkpoint.")


def node_dir(run_dir: str | Path) -> Path:
    """Where this node writes the run directory's files: the run directory itself, or for one on object storage a
    node-local mirror (metrics.jsonl, logs/, profiles) that is uploaded from."""
    from forgekit import storage

    if not storage.is_remote(run_dir):
        return Path(run_dir)
    where = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]
    name = str(run_dir).rstrip("/").rsplit("/", 1)[-1]
    return Path(tempfile.gettempdir()) / "forgekit-runs" / f"{name}-{where}-{os.getuid()}"


def barrier() -> None:
    """All ranks wait here (no-op outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def has_optimizer_state(checkpoint: str | Path) -> bool:
    """Whether a Trainer checkpoint (a local directory or a URL) can resume a run (optimizer state: torch's file or
    DeepSpeed's shards)."""
    from forgekit import storage

    if storage.is_remote(checkpoint):
        return any(n == "optimizer.pt" or n.startswith("global_step") for n in storage.listdir(checkpoint))
    ckpt = Path(checkpoint)
    return (ckpt / "optimizer.pt").is_file() or any(ckpt.glob("global_step*"))


def cannot_resume(checkpoint: str | Path) -> str:
    """Why a run cannot resume from a weights-only checkpoint, and what to do instead (driver and worker)."""
    return (
        f"save_optimizer_state: checkpoint {checkpoint} holds no optimizer state (the run had "
        "save_optimizer_state: false), so the run cannot resume exactly. Start a new stage from it with "
        "initial_base_model_ckpt_path (full weights) or initial_adapter_model_ckpt_path (LoRA) and another "
        "run_name, or delete the run directory."
    )


def publish(checkpoint: Any, dir_name: str) -> Any:
    """Ray's upload function (world rank 0, storage on a local or shared file system): rename the gathered
    checkpoint into place, so that it appears whole, with every node's part, or not at all."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    target = Path(storage.experiment_fs_path) / dir_name
    gathered = Path(checkpoint.path)
    if target.exists():  # left by an interrupted attempt that got this far: replace it, never merge into it
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        os.replace(target, old)
        os.replace(gathered, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(gathered, target)
    return ray.train.Checkpoint(path=str(target))


def _local_storage() -> bool:
    import ray.train
    from pyarrow.fs import LocalFileSystem

    return isinstance(ray.train.get_context().get_storage().storage_filesystem, LocalFileSystem)


class CheckpointPublisher:
    """One worker's side of publishing: its staging dir, its node's part, the report to Ray.

    Args:
        run_dir: the run directory (`checkpoints/` is under it): a local path or a URL.
        rank, world: this worker's world rank and the world size.
        local_rank: this worker's rank among the workers of its node (Ray groups workers by node IP).
    """

    def __init__(self, run_dir: str | Path, rank: int, world: int, local_rank: int) -> None:
        from forgekit import storage

        self.remote = storage.is_remote(run_dir)
        self.run_dir, self.rank, self.world = run_dir if self.remote else Path(run_dir), rank, world
        self.local_dir = node_dir(run_dir)
        self.first_on_node = faults.node_per_worker() or local_rank == 0  # the worker that copies its node's part
        # one per run directory: two runs of the same name in different output_dirs must not share (and clear) it
        where = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:8]
        if faults.node_per_worker():
            where += f"-w{rank}"  # a node of its own
        name = str(run_dir).rstrip("/").rsplit("/", 1)[-1]
        self.staging = Path(tempfile.gettempdir()) / "forgekit-staging" / f"{name}-{where}-{os.getuid()}"
        self.generation_config = None  # saved into adapter checkpoints (they hold none of their own)
        self.checkpoint_bytes: int | None = None  # this node's part of a checkpoint, once one was gathered
        self.gathering: Path | None = None  # the gathering dir being written, until its checkpoint is published
        self.saving: int | None = None  # the step whose checkpoint is being saved, until it is published
        self.metadata: dict[str, Any] | None = None  # forgekit_checkpoint.json (forgekit.models.base_model_metadata)

    def start(self) -> None:
        """Clear what an interrupted attempt left: this node's staging dir, and parts gathered before a publish."""
        if self.first_on_node:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.rank == 0 and not self.remote:  # (an attempt dies before the first save's barrier: before any copy)
            for stale in (self.run_dir / CHECKPOINTS).glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def stage_for_resume(self, checkpoint_dir: str | Path, step: int) -> Path:
        """A copy of a published checkpoint in this node's staging dir, where the Trainer resumes from."""
        local = self.staging / f"checkpoint-{step}"
        if self.first_on_node and not local.exists():
            shutil.copytree(checkpoint_dir, local)
        barrier()
        return local

    def publish(self, step: int, metrics: dict[str, Any]) -> None:
        """Publish the Trainer's `checkpoint-<step>` (every rank calls this after the Trainer saved it)."""
        import ray.train

        barrier()  # every rank has written its shard of checkpoint-N
        local = self.staging / f"checkpoint-{step}"
        mine = self.first_on_node and local.exists()
        if mine and self.generation_config is not None and not (local / "generation_config.json").exists():
            self.generation_config.save_pretrained(local)
        if mine and self.metadata is not None:
            from forgekit.models import CHECKPOINT_META

            (local / CHECKPOINT_META).write_text(json.dumps(self.metadata, indent=2) + "\n")
        dir_name = f"{CHECKPOINTS}/step-{step:06d}"
        if _local_storage():
            gathered = self.run_dir / CHECKPOINTS / f".tmp-step-{step:06d}"
            if mine:
                faults.slow_node(self.rank)
                self._gather(local, gathered, step)
                faults.die_during_save(self.local_dir, step, self.rank)
            barrier()  # every node's part is in
            checkpoint = ray.train.Checkpoint.from_directory(str(gathered)) if self.rank == 0 and gathered.exists() else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name, checkpoint_upload_fn=publish)
            self.gathering = None
        else:
            from forgekit import storage

            checkpoint = ray.train.Checkpoint.from_directory(str(local)) if mine else None
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
            barrier()  # every node's part is uploaded (Ray's report returns after its upload)
            if self.rank == 0:
                storage.write_text(storage.join(self.run_dir, dir_name, UPLOADED), f"{step}\n")
        if mine:  # published: the Trainer rotates its output dir on world rank 0's node only
            shutil.rmtree(local, ignore_errors=True)
        self.saving = None
        faults.die_after_checkpoint(self.local_dir, step, self.rank, self.world)

    def _gather(self, local: Path, gathered: Path, step: int) -> None:
        """Copy this node's part of checkpoint `step` into the gathering dir, or raise DiskFull: before writing where
        the disk has not the room, else at the first write refused for want of it, with the partial copy deleted."""
        needed = self.checkpoint_bytes = _tree_bytes(local)
        self.check_space(step, [gathered.parent])
        copied = []

        def copy(src: str, dst: str) -> None:
            try:
                faults.disk_full(step, len(copied), dst)
                shutil.copy2(src, dst)
            except OSError as e:
                if _disk_full(e)[0]:  # stop at once: copytree would try every other file
                    raise DiskFull(str(e)) from e
                raise
            copied.append(dst)

        self.gathering = gathered
        try:
            shutil.copytree(local, gathered, dirs_exist_ok=True, copy_function=copy)
        except (DiskFull, OSError) as e:  # (copytree reports the files it could not copy as one shutil.Error)
            if not isinstance(e, DiskFull) and not _disk_full(e)[0]:
                raise
            shutil.rmtree(gathered, ignore_errors=True)
            raise DiskFull(disk_full_message(step, gathered.parent, needed, _free(gathered.parent))) from e

    def check_space(self, step: int, directories: list[Path] | None = None) -> None:
        """Before checkpoint `step` is saved: raise DiskFull where it would not fit (this node's part is as large as
        the last one gathered; unknown before the first) in `directories`, by default the staging dir and the run
        directory. Until it is published, a failure with less room than that left is taken for a full disk."""
        self.saving = step
        if self.checkpoint_bytes is None:
            return
        if directories is None:
            directories = [self.staging] + ([] if self.remote else [self.run_dir / CHECKPOINTS])
        for directory in directories:
            free = _free(directory)
            if free < self.checkpoint_bytes:
                raise DiskFull(disk_full_message(step, directory, self.checkpoint_bytes, free))

    def failed(self, error: BaseException) -> BaseException:
        """After `error` stopped this worker: delete its staging dir and the part it was gathering (a checkpoint is
        published whole or not at all; a retry or the next start stages again). Returns the error to raise: a
        DiskFull naming the directory where `error` was a full disk, as the error says, or (torch's writer says only
        "file write failed") as the disk says, when it had less room than a checkpoint while one was saved."""
        writing = self.gathering.parent if self.gathering is not None else self.staging
        free = _free(writing)  # before the clean-up frees what the failed write had taken
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.gathering is not None:
            shutil.rmtree(self.gathering, ignore_errors=True)
        if isinstance(error, DiskFull):
            return error
        said, named = _disk_full(error)
        if said and named and not any(named.is_relative_to(d) for d in (self.staging, writing)):
            return DiskFull(f"no space left on device: {named} could not be written ({_free(named.parent):,} bytes are "
                            "free there): free space there, and run the same command again: it resumes from the last "
                            "checkpoint.")  # (metrics.jsonl, a log: not a checkpoint)
        if not said and (self.saving is None or free >= (self.checkpoint_bytes or 2**20)):
            return error
        message = disk_full_message(self.saving, writing, self.checkpoint_bytes, _free(writing))
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return DiskFull(message if said else f"{message} (the error: {first_line})")

    def finish(self) -> None:
        barrier()
        if self.first_on_node:
            shutil.rmtree(self.staging, ignore_errors=True)
