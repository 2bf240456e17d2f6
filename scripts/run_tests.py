"""The CPU test suite (`make test`), its files spread over parallel lanes: one pytest process per job, longest first.

Why processes, and why lanes:
- every integration file runs in a pytest process of its own (a Ray Train run in one process after another module's
  local cluster was shut down was seen to die: "TrainController ... cancelled before it started running");
- a run of a tiny model is mostly fixed cost (Ray starting actors, workers importing torch, checkpoints written to
  disk), during which a 2-core machine's cores are about a third idle: two jobs side by side fill them.

Jobs: `tests/unit`; the notebooks that share one Ray cluster (`tests/conftest.py: shared_ray_cluster`) as one
job, and the ones that start their own as a job each; each `tests/integration/test_*.py`. A test file this script
does not know still runs (as a job of its own, scheduled first). A job's output goes to `LOGS/<job>.log`; a
failed job's tail is printed, and the exit status is 1 when any job failed (pytest's 5, "no tests collected",
counts as passed: a file of GPU-only tests).

    python scripts/run_tests.py                  # lanes = CPU cores, at most 4 (FORGEKIT_TEST_LANES to choose)
    python scripts/run_tests.py --lanes 1        # one job at a time, as before
    python scripts/run_tests.py -- -x -k resume  # arguments after -- go to every pytest
    python scripts/run_tests.py --record         # and write the jobs' seconds to tests/job_seconds.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# seconds each job took in the last recorded run (`--record`, two lanes on the project's 2-core machine): only the
# order uses them, longest first, so that no long job starts last
SECONDS_FILE = REPO / "tests" / "job_seconds.json"
# notebook tests whose notebook starts Ray clusters of its own (tests/conftest.py: _notebooks_share_one_ray_cluster)
OWN_CLUSTER = {"test_nb_launch_as_job.py", "test_nb_lora_vs_full.py", "test_nb_optimize_cost.py"}


@dataclass
class Job:
    name: str
    paths: list[str]
    seconds: float = 0.0
    proc: subprocess.Popen | None = None
    started: float = 0.0
    rc: int | None = None
    log: Path = field(default_factory=Path)


def jobs() -> list[Job]:
    nb = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tests/notebooks").glob("test_*.py"))
    shared = [p for p in nb if Path(p).name not in OWN_CLUSTER]
    out = [Job("tests/unit", ["tests/unit"]), Job("notebooks (shared cluster)", shared)]
    out += [Job(p, [p]) for p in nb if Path(p).name in OWN_CLUSTER]
    out += [Job(p.relative_to(REPO).as_posix(), [p.relative_to(REPO).as_posix()])
            for p in sorted((REPO / "tests/integration").glob("test_*.py"))]
    known = json.loads(SECONDS_FILE.read_text()) if SECONDS_FILE.exists() else {}
    for j in out:  # an unknown (new) file: first, so that a long one does not end the suite alone
        j.seconds = known.get(j.name, 10_000)
    return sorted(out, key=lambda j: -j.seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # at most 4 by default: every lane runs a local Ray cluster and its training workers (about 2-3 GB each)
    ap.add_argument("--lanes", type=int, default=int(os.environ.get("FORGEKIT_TEST_LANES") or min(os.cpu_count() or 1, 4)))
    ap.add_argument("--logs", type=Path, default=REPO / ".test-logs")
    ap.add_argument("--record", action="store_true", help=f"write each job's seconds to {SECONDS_FILE.name} (the order)")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to every pytest")
    a = ap.parse_args()
    a.logs.mkdir(parents=True, exist_ok=True)
    queue, running, done = jobs(), [], []
    t0 = time.time()
    print(f"{len(queue)} jobs on {a.lanes} lane(s); logs in {a.logs}", flush=True)

    def start(j: Job) -> None:
        slug = j.name.replace("/", "_").replace(" ", "_").strip("()")
        j.log = a.logs / f"{slug}.log"
        j.started = time.time()
        # its own session: the whole process tree (Ray clusters a test started) can be stopped on Ctrl-C
        j.proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *j.paths,
                                   *a.pytest_args], cwd=REPO, stdout=j.log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        running.append(j)

    try:
        while queue or running:
            while queue and len(running) < a.lanes:
                start(queue.pop(0))
            time.sleep(0.5)
            for j in [j for j in running if j.proc.poll() is not None]:
                running.remove(j)
                j.rc = j.proc.returncode
                ok = j.rc in (0, 5)
                took = time.time() - j.started
                summary = _last_line(j.log)
                print(f"[{time.time() - t0:6.0f} s] {'ok  ' if ok else 'FAIL'} {j.name} ({took:.0f} s): {summary}",
                      flush=True)
                if not ok:
                    print("".join(j.log.read_text(errors="replace").splitlines(True)[-150:]), flush=True)
                j.seconds = took
                done.append(j)
    except KeyboardInterrupt:
        for j in running:
            os.killpg(j.proc.pid, signal.SIGKILL)
        raise
    failed = [j.name for j in done if j.rc not in (0, 5)]
    if a.record and not failed:
        SECONDS_FILE.write_text(json.dumps({j.name: round(j.seconds) for j in sorted(done, key=lambda j: -j.seconds)},
                                           indent=1) + "\n")
    print(f"\n{len(done)} jobs in {time.time() - t0:.0f} s wall ({sum(j.seconds for j in done):.0f} s of job time) "
          f"on {a.lanes} lane(s): " + (f"FAILED: {', '.join(failed)}" if failed else "all passed"), flush=True)
    return 1 if failed else 0


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


if __name__ == "__main__":
    sys.exit(main())
