"""What the benchmark scripts print and keep: progress lines on stderr, the report on stdout
(the header naming the date, machine, versions and settings, then markdown tables of the
numbers and their ratios), and the raw results as JSON."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from repo import REPO

# --------------------------------------------------------------------------- streams


def progress(tag: str, since: float | None = None) -> Callable[[str], None]:
    """A writer of progress lines to stderr (stdout carries only the report), tagged with the
    script's name and, given ``since`` (a ``time.monotonic()``), the seconds elapsed."""

    def log(msg: str) -> None:
        elapsed = "" if since is None else f" {time.monotonic() - since:6.1f}s"
        sys.stderr.write(f"[{tag}{elapsed}] {msg}\n")
        sys.stderr.flush()

    return log


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- header: what ran, where

def versions(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The CPU features that decide bf16's speed (nodes/cpu.py reads the same through torch).
BF16_FEATURES = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_features() -> str:
    """Which of BF16_FEATURES the CPU reports (Linux's /proc/cpuinfo; elsewhere not known)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "not known on this system"
    return ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in BF16_FEATURES)


# A 1-minute load average above this share of the usable cores when a run starts means other
# work was running: the run's timings are marked as skewed.
QUIET_LOAD_PER_CORE = 0.5


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_line(when: str) -> str:
    """The load average; at the start, judged against the quiet bound (at the end it holds the
    run's own work)."""
    load1, load5, _ = os.getloadavg()
    line = f"- load average {when}: {load1:.2f} (1 min), {load5:.2f} (5 min)"
    if when != "at start":
        return line + " — the run's own work included"
    bound = QUIET_LOAD_PER_CORE * usable_cores()
    if load1 > bound:
        return line + f" — BUSY: above the quiet bound of {bound:.2f} (half the usable cores); timings are skewed"
    return line + f" — quiet (at most {bound:.2f}, half the usable cores)"


def comfyui_version(path: Path) -> str:
    from cli.provision_comfyui import comfyui_version as declared_version

    version = declared_version(path) or "?"
    commit = git_describe(path) or recorded_commit(path / ".bench-commit")
    return f"{version} ({commit})" if commit else version


def recorded_commit(path: Path) -> str | None:
    """A commit written down by benchmarks/device_bundle.sh for a copy that has no .git."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def git_describe(path: Path) -> str | None:
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_line(header: str) -> str:
    """The machine a header describes (its ``- machine:`` line, without the dash), for a chart's note."""
    return next((line[2:] for line in header.splitlines() if line.startswith("- machine:")), "")


def machine_header(title: str, comfy_path: Path | None, extra: dict[str, str] | None = None,
                   packages: Sequence[str] = ("torch", "diffusers", "transformers", "safetensors", "accelerate",
                                              "numpy")) -> str:
    import psutil

    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    cores = usable_cores()
    pack = git_describe(REPO) or recorded_commit(REPO / ".bench-device" / "pack-commit") or "not a git checkout"
    lines = [
        f"## {title}",
        "",
        f"- date: {now.isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {cpu_model()}, {cores} usable cores, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"- CPU features: {cpu_features()}",
        load_line("at start"),
        f"- python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in versions(packages).items()),
        f"- ComfyUI: {comfyui_version(comfy_path) if comfy_path else 'not used'}"
        + (f" at {comfy_path}" if comfy_path else ""),
        f"- this pack: {pack}",
    ]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- numbers and tables

def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])]) + "\n"


def fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None or value != value:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    return f"{'met' if ok else 'NOT met'} ({value:.2f}x {'>=' if higher_is_better else '<='} {target}x)"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return float("nan")
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or a != a or b != b:
        return None
    return a / b
