"""Memory probes for the benchmark workers: the process's RSS and its exact peak (the kernel's
high-water mark, reset before a call), a sampler of anonymous vs file-backed RSS and of the
weight files memory-mapped, a timed and measured call, and the bytes torch modules hold.

Linux only (/proc/self). torch is imported where a tensor is touched, not here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


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
