"""Profile a window of optimizer steps on rank 0 with the PyTorch profiler: where a step's time goes.

`profile_steps: [first, last]` in a config makes the rank-0 worker record steps `first..last` (1-based optimizer
steps) and write `<run dir>/profile/`:

* `summary.json`: the window's wall time per step and, on a GPU, the time the GPU ran kernels (the union of
  their intervals) and the share of the wall time it was **idle**: host work the GPU waited for (Python
  overhead, synchronisations, data loading, logging). It is what separates "the kernels are slow" from "the
  GPU is starved" when MFU is low;
* `ops.txt`: the operators that took the most device time (CPU time on a CPU worker);
* `trace.json.gz`: the Chrome / Perfetto trace (open it at https://ui.perfetto.dev).

The window runs from the start of step `first` to the start of step `last + 1` (the end of the run if that is
the last step), so each profiled step includes its logging and the fetch of the next batch, and an evaluation
or checkpoint due inside the window is in it too (pick steps between them). Profiling slows the host side of the
profiled steps; their metrics lines say so (`profiled: true`).
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["busy_time_us", "step_profiler"]


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

        def active(self, step: int) -> bool:
            """True while `step` (1-based) is being profiled."""
            return self.prof is not None and not self.done and first <= step <= last

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1  # the step about to run
            if self.prof is None and step == first:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if on_gpu:
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.t0 = time.perf_counter()
            elif self.prof is not None and not self.done and step > last:
                self._stop(state.global_step - first + 1)

        def on_train_end(self, args, state, control, **kwargs):
            if self.prof is not None and not self.done:
                self._stop(state.global_step - first + 1)

        def _stop(self, steps: int) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            self.done = True
            out = run_dir / "profile"
            out.mkdir(parents=True, exist_ok=True)
            summary: dict[str, Any] = {"steps": [first, first + steps - 1], "wall_seconds": round(wall, 4),
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
