"""Run a lab: every arm x seed of an ablation file (``recipe.ablation.plan_lab``), each as its own
``llavakit recipe run`` subprocess into ``OUT/<arm>/seed-<k>``, up to ``jobs`` at once with the
CPU threads divided among them; then the table and chart (``recipe.lab_report``).

Resumable: a run whose folder holds ``results.json`` is finished and not redone. A folder without
it is what an interrupted run left (a stage half trained, no evaluation): it is removed and the run
starts again; the world and the components it made are shared and cached, so only its stages are
trained again. Runs that share a world or components wait for one another's copy (locks in the
runner and the component cache) instead of making their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from llavakit.recipe.ablation import RESULTS_FILE, REUSED_FILE, LabPlan, Run, run_identity
from llavakit.recipe.schema import RecipeError

LOG_FILE = "lab.log"  # each run's output, in its folder


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_jobs(runs: int) -> int:
    return max(1, min(runs, usable_cores()))


def run_command(plan: LabPlan, run: Run) -> list[str]:
    command = [sys.executable, "-m", "llavakit", "recipe", "run", str(run.recipe_path), "--out", str(run.dir)]
    for flag in run.flags:
        command += ["--set", flag]
    return command


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a run: ``threads`` intra-op threads (torch reads OMP_NUM_THREADS)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def start(plan: LabPlan, run: Run, threads: int) -> subprocess.Popen:
    if run.dir.exists():  # an interrupted run: start it again from nothing
        shutil.rmtree(run.dir)
    run.dir.mkdir(parents=True)
    log = (run.dir / LOG_FILE).open("w", encoding="utf-8")
    try:
        return subprocess.Popen(run_command(plan, run), stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
    finally:
        log.close()  # the child holds its own descriptor


def reuse_runs(plan: LabPlan, sources: list[Path]) -> list[str]:
    """Copy into ``plan`` each unfinished run that a lab folder of ``sources`` finished as the same
    run (the same recipe as it ran, but for the shared folders' paths: `run_identity`); return
    the runs copied. The copy keeps its results and model and names its origin in
    ``reused_from.txt``; it is taken whole or not at all."""
    finished: dict[str, Path] = {}
    for source in sources:
        if not source.is_dir():
            raise RecipeError(f"--reuse {source}: not a folder")
        for results in sorted(source.glob(f"*/seed-*/{RESULTS_FILE}")):
            try:
                identity = run_identity(json.loads(results.read_text(encoding="utf-8"))["recipe"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a finished run of a lab (or of a recipe this code cannot read)
            finished.setdefault(identity, results.parent)
    reused = []
    for run in plan.runs:
        origin = finished.get(run.identity)
        if run.finished or origin is None or origin.resolve() == run.dir.resolve():
            continue
        staging = run.dir.with_name(run.dir.name + ".reusing")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(origin, staging, symlinks=True)
        (staging / REUSED_FILE).write_text(f"{origin.resolve()}\n", encoding="utf-8")
        shutil.rmtree(run.dir, ignore_errors=True)  # what an interrupted run left
        staging.rename(run.dir)
        reused.append(run.name)
        print(f"  reused {run.name}  (from {origin})", flush=True)
    return reused


def _stop_on_sigterm():
    """Turn SIGTERM into SystemExit so the runs started are stopped too; the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def run_lab(plan: LabPlan, jobs: int | None = None, poll_seconds: float = 0.5) -> dict:
    """Run every unfinished run of ``plan``; return {"ran": [...], "skipped": [...], "failed": [...]}
    (run names). A failed run does not stop the others; its log is named."""
    todo = [run for run in plan.runs if not run.finished]
    skipped = [run.name for run in plan.runs if run.finished]
    jobs = jobs or default_jobs(len(todo) or 1)
    if jobs < 1:
        raise RecipeError(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, usable_cores() // jobs)
    print(f"lab {plan.ablation.title}: {len(plan.runs)} runs, {len(skipped)} finished before, "
          f"{len(todo)} to run, {jobs} at a time with {threads} thread(s) each")
    running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    ran, failed = [], []
    previous = _stop_on_sigterm()
    try:
        while todo or running:
            while todo and len(running) < jobs:
                run = todo.pop(0)
                print(f"  start  {run.name}  (log: {run.dir / LOG_FILE})", flush=True)
                running[run.name] = (run, start(plan, run, threads), time.perf_counter())
            time.sleep(poll_seconds)
            for name, (run, process, started) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[name]
                seconds = time.perf_counter() - started
                if code == 0 and run.finished:
                    ran.append(name)
                    print(f"  done   {name}  ({seconds:.0f} s)", flush=True)
                else:
                    failed.append(name)
                    print(f"  FAILED {name}  (exit {code}; see {run.dir / LOG_FILE})", flush=True)
    finally:
        for run, process, _ in running.values():  # interrupted: stop what is running, by its id
            process.terminate()
        for run, process, _ in running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return {"ran": ran, "skipped": skipped, "failed": failed}
