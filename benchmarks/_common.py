"""Shared by the benchmark scripts: layouts, cached random pipelines, subprocess workers,
memory probes, the machine/versions header and markdown tables.

The scripts are run as files (``python benchmarks/load.py``); this module puts the
repository root (``bksdm``, ``cli``) and ``tests/`` (``factories``) on ``sys.path``.
Nothing here imports torch at module level, so the parent process that only
orchestrates workers stays small.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from cli.comfy_host import DEFAULT_COMFYUI  # noqa: E402, F401  (re-exported for the --comfyui help; the repository is on sys.path from here)

RESULT_PREFIX = "BENCH_RESULT "


# --------------------------------------------------------------------------- layouts

@dataclass(frozen=True)
class Layout:
    name: str  # what the command line takes
    family: str  # sd1 / sd2
    config: str  # tests/fixtures/unet_configs/<config>.json
    title: str

    @property
    def is_teacher(self) -> bool:
        return "teacher" in self.config


LAYOUTS = {layout.name: layout for layout in (
    Layout("sd1-base", "sd1", "v1_bk_base", "BK-Base (v1)"),
    Layout("sd1-small", "sd1", "v1_bk_small", "BK-Small (v1)"),
    Layout("sd1-tiny", "sd1", "v1_bk_tiny", "BK-Tiny (v1)"),
    Layout("sd1-teacher", "sd1", "sd-v1-4_teacher", "SD-1.4 teacher"),
    Layout("sd2-base", "sd2", "v2-base-512_bk_base", "BK-Base (v2)"),
    Layout("sd2-small", "sd2", "v2-base-512_bk_small", "BK-Small (v2)"),
    Layout("sd2-tiny", "sd2", "v2-base-512_bk_tiny", "BK-Tiny (v2)"),
    Layout("sd2-teacher", "sd2", "sd-v2-1-base_teacher", "SD-2.1-base teacher"),
)}


def progress(tag: str, since: float | None = None) -> Callable[[str], None]:
    """A writer of progress lines to stderr (stdout carries only the report), tagged with the
    script's name and, given ``since`` (a ``time.monotonic()``), the seconds elapsed."""

    def log(msg: str) -> None:
        elapsed = "" if since is None else f" {time.monotonic() - since:6.1f}s"
        sys.stderr.write(f"[{tag}{elapsed}] {msg}\n")
        sys.stderr.flush()

    return log


def layout_list(text: str) -> list[Layout]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    return [LAYOUTS[n] for n in names]


def csv_list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise SystemExit(f"unknown value(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


# --------------------------------------------------------------------------- ComfyUI

def comfyui_path(given: str | None) -> Path:
    from cli import comfy_host

    try:
        return comfy_host.locate_comfyui(given, "pass --comfyui PATH or set COMFYUI_PATH")
    except comfy_host.HostError as e:
        raise SystemExit(str(e)) from None


def model_attention(patcher) -> str:
    """The attention kernel a MODEL runs: its own override (the pack's CPU choice), else ComfyUI's global one."""
    import comfy.ldm.modules.attention

    if "optimized_attention_override" in patcher.model_options.get("transformer_options", {}):
        return "attention_pytorch (per model)"
    return comfy.ldm.modules.attention.optimized_attention.__name__


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


# --------------------------------------------------------------------------- cached pipelines

def pipeline_dir(workdir: Path, layout: Layout) -> Path:
    return workdir / "diffusers" / f"bench-{layout.name}"


def ensure_pipeline(workdir: Path, layout: Layout, comfy_path: Path, log: Callable[[str], None]) -> Path:
    """A random-weight pipeline folder (fp32 + fp16 files, tokenizer) for ``layout``, written
    once in a subprocess and reused by later runs."""
    target = pipeline_dir(workdir, layout)
    if (target / ".complete").is_file():
        return target
    log(f"writing random-weight pipeline {target} (once; reused by later runs)")
    start = time.perf_counter()
    run_worker(Path(__file__), {"action": "write_pipeline", "layout": layout.name, "target": str(target),
                                "tokenizer": str(comfy_path / "comfy" / "sd1_tokenizer")},
               log_path=workdir / "logs" / f"write-{layout.name}.log", timeout=3600)
    log(f"  written in {time.perf_counter() - start:.0f} s")
    return target


def _write_pipeline(spec: dict) -> dict:
    import shutil

    from factories import write_pipeline

    layout, target = LAYOUTS[spec["layout"]], Path(spec["target"])
    partial = target.parent / f".{target.name}.partial"  # hidden: never listed as a model folder
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    write_pipeline(partial, layout.family, layout.config, seed=0, fp16_variants=True,
                   tokenizer_source=Path(spec["tokenizer"]))
    for root, _, names in os.walk(partial):  # on disk before the folder is declared complete
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    (partial / ".complete").write_text(layout.config)
    partial.rename(target)
    return {"path": str(target)}


WEIGHT_FILES = {  # component -> (fp32 file, fp16 variant file), as nota-ai names them
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"),
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"),
}


def weight_files(folder: Path) -> list[Path]:
    return [folder / f for pair in WEIGHT_FILES.values() for f in pair]


def set_page_cache(paths: Sequence[Path], warm: bool) -> None:
    """Warm: read the files once so they sit in the page cache. Cold: ask the kernel to
    drop their cached pages (POSIX_FADV_DONTNEED; needs no root and touches no other file)."""
    for path in paths:
        with open(path, "rb") as f:
            if warm:
                while f.read(64 << 20):
                    pass
            else:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def diffusers_dtype(torch_dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` from diffusers 0.42 on (``torch_dtype`` is
    deprecated there and warns), ``torch_dtype`` before."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype": torch_dtype}


# --------------------------------------------------------------------------- workers

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


# --------------------------------------------------------------------------- memory

def proc_status() -> dict[str, int]:
    """Fields of /proc/self/status in bytes (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS: writing 5 to
    /proc/self/clear_refs (Linux >= 4.0). False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = proc_status()
    return status.get("VmHWM", 0) <= status.get("VmRSS", 0) + (64 << 20)  # reset took (allow for a little growth)


class MemorySampler:
    """Samples /proc/self/status (and, less often, /proc/self/maps) in a thread while a
    load runs: peaks of anonymous and file-backed RSS separately, and which weight files
    were memory-mapped. The total peak comes from VmHWM, which the kernel keeps exactly;
    this thread only adds the breakdown (it can miss spikes shorter than its interval)."""

    def __init__(self, interval: float = 0.005, maps_every: int = 10, suffixes=(".safetensors", ".bin")):
        self.interval, self.maps_every, self.suffixes = interval, maps_every, suffixes
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.mapped: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, with_maps: bool) -> None:
        status = proc_status()
        for key in self.peak:
            self.peak[key] = max(self.peak[key], status.get(key, 0))
        if with_maps:
            with open("/proc/self/maps") as f:
                for line in f:
                    path = line.rstrip("\n").split(None, 5)[-1]
                    if path.endswith(self.suffixes):
                        self.mapped.add(path)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self._sample(n % self.maps_every == 0)
            n += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample(True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample(True)


@dataclass
class Measured:
    value: object
    seconds: float
    cpu_seconds: float  # user + system time of all the process's threads: less sensitive to a busy machine
    rss_before: int
    peak_rss: int  # absolute, bytes
    peak_increase: int  # bytes over rss_before, from VmHWM (or the sampler where it cannot be reset)
    peak_source: str
    anon_peak_increase: int  # sampled
    file_peak_increase: int  # sampled
    mapped: list[str]  # weight files memory-mapped during the call

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "value"}


def measure_call(fn: Callable[[], object], reset: bool = True, rss_before: int | None = None) -> Measured:
    """Time ``fn()`` and take the process's peak RSS during it, over its RSS just before.

    ``reset=False`` keeps the high-water mark of what ran before (a follow-up phase whose
    peak is to count together with the previous one's, from that one's ``rss_before``)."""
    import gc

    gc.collect()
    before = proc_status()
    base = before["VmRSS"] if rss_before is None else rss_before
    hwm_ok = reset_peak_rss() if reset else True
    with MemorySampler() as sampler:
        start, cpu_start = time.perf_counter(), time.process_time()
        value = fn()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    after = proc_status()
    if hwm_ok:
        peak, source = after["VmHWM"], "VmHWM"
    else:
        peak, source = max(sampler.peak["VmRSS"], after["VmRSS"]), "sampled"
    return Measured(value, seconds, cpu_seconds, base, peak, peak - base, source,
                    sampler.peak["RssAnon"] - before.get("RssAnon", 0),
                    sampler.peak["RssFile"] - before.get("RssFile", 0), sorted(sampler.mapped))


def touch_weights(*modules) -> None:
    """Read one element of every 4 KiB page of every CPU parameter and buffer, so that
    lazily memory-mapped weights become resident (what the first forward pass, or the copy
    to a GPU, would do anyway)."""
    import torch

    with torch.no_grad():
        for module in modules:
            if module is None:
                continue
            for t in [*module.parameters(), *module.buffers()]:
                if t.device.type != "cpu" or t.numel() == 0:
                    continue
                flat = t.detach().reshape(-1) if t.is_contiguous() else t.detach().flatten()
                flat[:: max(1, 4096 // t.element_size())].sum()


def tensor_bytes(*modules) -> int:
    """Bytes of the distinct parameters and buffers of torch modules."""
    seen, total = set(), 0
    for module in modules:
        if module is None:
            continue
        for t in [*module.parameters(), *module.buffers()]:
            key = (t.data_ptr(), t.device.type, t.nbytes)
            if key not in seen:
                seen.add(key)
                total += t.nbytes
    return total


# --------------------------------------------------------------------------- header and tables

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


def machine_header(title: str, comfy_path: Path | None, extra: dict[str, str] | None = None,
                   packages: Sequence[str] = ("torch", "diffusers", "transformers", "safetensors", "accelerate",
                                              "numpy")) -> str:
    import psutil

    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    load1, load5, _ = os.getloadavg()
    pack = git_describe(REPO) or recorded_commit(REPO / ".bench-device" / "pack-commit") or "not a git checkout"
    lines = [
        f"## {title}",
        "",
        f"- date: {now.isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {cpu_model()}, {cores} usable cores, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.system()} {platform.release()}",
        f"- load average at start: {load1:.2f} (1 min), {load5:.2f} (5 min) — other work on the machine skews timings",
        f"- python {platform.python_version()}; "
        + ", ".join(f"{k} {v}" for k, v in versions(packages).items()),
        f"- ComfyUI: {comfyui_version(comfy_path) if comfy_path else 'not used'}"
        + (f" at {comfy_path}" if comfy_path else ""),
        f"- this pack: {pack}",
    ]
    lines += [f"- {k}: {v}" for k, v in (extra or {}).items()]
    return "\n".join(lines) + "\n"


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


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def save_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


if __name__ == "__main__" and is_worker():  # the pipeline writer runs here, in its own process
    worker_main({"write_pipeline": _write_pipeline})
