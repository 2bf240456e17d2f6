"""Profile a window of optimizer steps on rank 0 with the PyTorch profiler: where a step's time goes.

`profile_steps: [first, last]` in a config makes the rank-0 worker record steps `first..last` (1-based optimizer
steps) and write `<run dir>/profile/`:

* `summary.json`: the window's wall time per step and, on a GPU, the time the GPU ran kernels (the union of
  their intervals) and the share of the wall time it was **idle**: host work the GPU waited for (Python
  overhead, synchronisations, data loading, logging). It is what separates "the kernels are slow" from "the
  GPU is starved" when MFU is low;
* `ops.txt`: the operators that took the most device time (CPU time on a CPU worker);
* `trace.json.gz`: the Chrome / Perfetto trace (open it at https://ui.perfetto.dev).

The window runs from the start of step `first` to the start of step `last + 1`, so each profiled step includes
its logging and the fetch of the next batch; it ends with step `last` instead when an evaluation or checkpoint
follows it (or the run ends there), which stays outside. An evaluation or checkpoint due at an earlier step of
the window is in it (pick steps between them). A resumed run past `first` records the rest of the window.
Profiling slows the host side of the profiled steps; their metrics lines say so (`profiled: true`). A profiler
that fails to start or to write costs the profile (a warning), never the run.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Self

__all__ = ["busy_time_us", "step_profiler"]

log = logging.getLogger("forgekit")


def busy_time_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of `(start, end)` intervals: the time at least one of them was running."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _device_kernels(prof: Any) -> list[tuple[float, float]]:
    """`(start, end)` in microseconds of every GPU kernel and memory copy the profiler saw."""
    from torch.autograd import DeviceType

    out = []
    for evt in prof.events():
        if getattr(evt, "device_type", None) == DeviceType.CUDA:
            out.append((evt.time_range.start, evt.time_range.end))
    return out


def step_profiler(run_dir: Path, first: int, last: int, on_gpu: bool) -> Any:
    """A Trainer callback profiling optimizer steps `first..last` (1-based) into `run_dir/profile/`."""
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.prof: Any = None
            self.t0 = 0.0
            self.done = False
            self.steps: list[int] = []  # the steps recorded (a resumed run may start inside the window)

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1  # the step about to run
            if self.done:
                return
            if self.prof is None and first <= step <= last:
                try:
                    activities = [torch.profiler.ProfilerActivity.CPU]
                    if on_gpu:
                        activities.append(torch.profiler.ProfilerActivity.CUDA)
                        torch.cuda.synchronize()
                    self.prof = torch.profiler.profile(activities=activities)
                    self.prof.__enter__()
                except Exception as e:  # noqa: BLE001 - profiling is a diagnostic; the run goes on without it
                    log.warning("forgekit: profile_steps: the profiler did not start (%s); no profile", e)
                    self.prof, self.done = None, True
                    return
                self.t0 = time.perf_counter()
            elif self.prof is not None and step > last:
                self._stop()
                return
            if self.prof is not None:
                self.steps.append(step)

        def on_step_end(self, args, state, control, **kwargs):
            # an evaluation or checkpoint due after the last profiled step (or the run's end) stays outside
            if self.prof is not None and not self.done and state.global_step >= last and (
                    control.should_evaluate or control.should_save or state.global_step >= state.max_steps):
                self._stop()

        def on_train_end(self, args, state, control, **kwargs):
            if self.prof is not None and not self.done:
                self._stop()

        def _stop(self) -> None:
            self.done = True
            try:
                self._write()
            except Exception as e:  # noqa: BLE001 - as above: a failed export costs the profile, not the run
                log.warning("forgekit: profile_steps: writing the profile failed (%s)", e)
                (run_dir / "profile" / "trace.json").unlink(missing_ok=True)

        def _write(self) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            steps = len(self.steps)
            out = run_dir / "profile"
            out.mkdir(parents=True, exist_ok=True)
            summary: dict[str, Any] = {"steps": [self.steps[0], self.steps[-1]], "wall_seconds": round(wall, 4),
                                       "seconds_per_step": round(wall / max(steps, 1), 4)}
            sort = "self_cpu_time_total"
            if on_gpu:
                busy = busy_time_us(_device_kernels(self.prof)) / 1e6
                summary.update({
                    "gpu_busy_seconds": round(busy, 4),
                    "gpu_idle_fraction": round(max(0.0, 1 - busy / wall), 4) if wall else None,
                    "gpu_idle_seconds_per_step": round(max(0.0, wall - busy) / max(steps, 1), 4),
                })
                sort = "self_device_time_total"
            table = self.prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            (out / "ops.txt").write_text(table + "\n")
            trace = out / "trace.json"
            self.prof.export_chrome_trace(str(trace))
            with trace.open("rb") as src, gzip.open(out / "trace.json.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            trace.unlink()
            (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            print(f"forgekit: profile of steps {summary['steps'][0]}-{summary['steps'][1]}: {json.dumps(summary)}",
                  flush=True)

    return StepProfiler()


# --------------------------------------------------------------------------- memory of the Ray Train workers


class WorkerMemory:
    """Peak resident memory (RSS) of the Ray Train worker processes started under this process.

    Use through `track_worker_memory()`. A thread looks at this process's descendants every `interval`
    seconds; for each training worker (process title `ray::RayTrainWorker...`) it reads the kernel's
    high-water mark of resident memory (`VmHWM` in /proc/PID/status on Linux, so peaks between two samples
    are not missed; elsewhere the current RSS, sampled). Workers of a Ray cluster this process did not
    start (RAY_ADDRESS) are not its descendants and are not seen: `peak_gb` is then None.
    """

    TITLE = "ray::RayTrainWorker"

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak_bytes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def workers(self) -> int:
        """Number of training worker processes seen."""
        return len(self.peak_bytes)

    @property
    def peak_gb(self) -> float | None:
        """The largest worker's peak RSS in GiB (each worker holds a full copy of the model on CPU), or None."""
        return max(self.peak_bytes.values()) / 2**30 if self.peak_bytes else None

    @property
    def total_peak_gb(self) -> float | None:
        """Sum of the workers' peaks in GiB: an upper bound of what the machine needed for them, or None."""
        return sum(self.peak_bytes.values()) / 2**30 if self.peak_bytes else None

    def _sample(self) -> None:
        import psutil

        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for p in children:
            try:
                cmd = p.cmdline()
                if not cmd or not cmd[0].startswith(self.TITLE):
                    continue
                peak = _vm_hwm(p.pid)
                if peak is None:
                    peak = p.memory_info().rss
            except (psutil.Error, OSError):
                continue  # exited between listing and reading
            self.peak_bytes[p.pid] = max(self.peak_bytes.get(p.pid, 0), peak)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _vm_hwm(pid: int) -> int | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def track_worker_memory(interval: float = 0.25) -> WorkerMemory:
    """Context manager measuring the peak RSS of the training workers of the `finetune` calls inside it.

        with track_worker_memory() as mem:
            result = finetune(config)
        mem.peak_gb   # GiB, the largest worker (None if no worker was seen)
    """
    return WorkerMemory(interval)
