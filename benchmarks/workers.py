"""The benchmarks' subprocess workers: each measurement runs in a fresh interpreter, so its
memory starts clean and nothing it imports leaks into the next one.

The parent runs ``python SCRIPT --worker SPEC`` (SPEC: a JSON object whose ``action`` names
the handler); the worker's logs go to a file, and its result is the last stdout line that
starts with ``RESULT_PREFIX``, as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from repo import REPO

RESULT_PREFIX = "BENCH_RESULT "


class WorkerError(RuntimeError):
    pass


def run_worker(script: Path, spec: dict, log_path: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``script --worker SPEC`` in a fresh interpreter; return the dict it reports.

    The worker's stderr (logs, progress) goes to ``log_path``; its result is the last
    stdout line starting with RESULT_PREFIX.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as err:
        try:
            proc = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                                  stderr=err, text=True, timeout=timeout, cwd=REPO, env=env)
        except subprocess.TimeoutExpired:
            raise WorkerError(f"worker timed out after {timeout:.0f} s; log: {log_path}") from None
    results = [line[len(RESULT_PREFIX):] for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise WorkerError(f"worker exited with {proc.returncode}; log {log_path}:\n{tail}")
    return json.loads(results[-1])


def worker_main(handlers: dict[str, Callable[[dict], dict]]) -> None:
    """Entry point of a worker process: ``--worker SPEC`` on the command line."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    result = handlers[spec["action"]](spec)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def is_worker() -> bool:
    return "--worker" in sys.argv
