"""Loading benchmark (CPU): the pack's pipeline loader against diffusers' from_pretrained.

    .venv/bin/python benchmarks/load.py                      # full: sd1 base/small/tiny + sd2-tiny, 3 repeats
    .venv/bin/python benchmarks/load.py --layouts sd1-tiny --repeats 1 --dtypes fp16   # smallest
    .venv/bin/python benchmarks/load.py --smoke      # the smallest, in a temporary workdir (its pipeline removed)

For each layout a random-weight pipeline folder with fp32 and fp16 files is written once
under ``--workdir`` (reused by later runs). Every measurement then runs in a fresh
subprocess, so its RSS starts clean:

- pack: ComfyUI started in-process (``cli.comfy_host.start`` with ``--cpu``), then only
  the ``BKSDMPipelineLoader`` execute call is timed (MODEL + CLIP + VAE), with
  ``weight_dtype`` fp32 (reads the full files) or fp16 (reads the fp16 files);
- diffusers: ``StableDiffusionPipeline.from_pretrained`` on the same folder, with
  ``torch_dtype=float32``, or ``float16`` with ``variant="fp16"``.

Peak RSS is the kernel's high-water mark (VmHWM) reset just before the call through
/proc/self/clear_refs, so it is exact, not sampled; a thread also samples anonymous vs
file-backed RSS and which weight files get memory-mapped (the bytes read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from charts import bar_chart, save_chart, stacked
from memory import Measured, measure_call, proc_status, tensor_bytes, touch_weights
from options import COMFYUI_HELP, WORKDIR, add_chart_flag, comfyui_path, csv_list, fill_defaults, smoke_help
from output import (
    load_line,
    machine_header,
    machine_line,
    median,
    progress,
    ratio,
    save_json,
    table,
    verdict,
    write_stdout,
)
from pipelines import LAYOUTS, WEIGHT_FILES, diffusers_dtype, ensure_pipeline, layout_list, set_page_cache, weight_files
from workers import is_worker, run_worker, worker_main

import pack_import

DTYPES = ("fp32", "fp16")
LOADERS = ("pack", "diffusers")
TIME_TARGET = 1.0  # pack load time <= 1.0x diffusers'
MEMORY_TARGET = 1.3  # peak RSS increase <= 1.3x the bytes of the weights loaded
MB = 1e6
FULL = {"layouts": "sd1-base,sd1-small,sd1-tiny,sd2-tiny", "dtypes": "fp32,fp16", "repeats": 3}
SMOKE = {"layouts": "sd1-tiny", "dtypes": "fp16", "repeats": 1}


# --------------------------------------------------------------------------- workers (fresh processes)

def _file_bytes(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)


def _finish(load: Measured, expected: list[str], modules: list) -> dict:
    read = [p for p in load.mapped if os.path.basename(os.path.dirname(p)) in ("unet", "text_encoder", "vae")]
    result = load.as_dict()
    result.update(expected_files=expected, files_read=read or expected,
                  files_read_source="mapped" if read else "expected (no mapping seen)",
                  weight_bytes=_file_bytes(read or expected), model_bytes=tensor_bytes(*modules))
    # "Ready": every weight resident in the process, as the first forward pass (or the copy to
    # a GPU) makes it. A loader that only maps the files defers its reading to this point.
    ready = measure_call(lambda: touch_weights(*modules), reset=False, rss_before=load.rss_before)
    result.update(touch_seconds=ready.seconds, ready_seconds=load.seconds + ready.seconds,
                  ready_peak_increase=ready.peak_increase)
    result["rss_after"] = proc_status()["VmRSS"]
    result["retained_increase"] = result["rss_after"] - load.rss_before
    import torch

    result["torch_threads"] = torch.get_num_threads()
    return result


def pack_worker(spec: dict) -> dict:
    from cli import comfy_host

    host = comfy_host.start(Path(spec["comfyui"]), ["--cpu", *spec["comfy_args"]])
    import folder_paths

    folder_paths.add_model_folder_path("diffusers", str(Path(spec["folder"]).parent))
    name = Path(spec["folder"]).name
    loader = host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
    from bksdm.files import pipeline

    build = pack_import.pack_module("nodes.build")
    half = spec["dtype"] == "fp16"
    te_half = half or build.prefers_half_files(build.text_encoder_dtype())  # read as ComfyUI stores it
    folder = pipeline.open_model_folder(spec["folder"])
    expected = [pipeline.weights_file(folder, "unet", half),
                pipeline.weights_file(folder, "text_encoder", te_half),
                pipeline.weights_file(folder, "vae", half)]
    measured = measure_call(lambda: loader.execute(model_name=name, weight_dtype=spec["dtype"],
                                                   prediction="auto").args)
    model, clip, vae = measured.value
    return _finish(measured, expected, [model.model, clip.cond_stage_model, vae.first_stage_model])


def diffusers_worker(spec: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401  (imports first)
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    folder = Path(spec["folder"])
    if spec["dtype"] == "fp16":
        kwargs, files = {**diffusers_dtype(torch.float16), "variant": "fp16"}, 1
    else:
        kwargs, files = diffusers_dtype(torch.float32), 0
    expected = [str(folder / pair[files]) for pair in WEIGHT_FILES.values()]
    measured = measure_call(lambda: StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None, requires_safety_checker=False, **kwargs))
    pipe = measured.value
    return _finish(measured, expected, [pipe.unet, pipe.text_encoder, pipe.vae])


# --------------------------------------------------------------------------- parent

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=smoke_help(SMOKE, "load the smallest layout once")
                   + "; without --workdir, in a temporary workdir whose pipeline folder is removed at the end")
    p.add_argument("--layouts", help=f"comma-separated, from {', '.join(LAYOUTS)} (default: {FULL['layouts']})")
    p.add_argument("--dtypes", help=f"fp32 and/or fp16 (default: {FULL['dtypes']})")
    p.add_argument("--loaders", default="pack,diffusers", help="(default: %(default)s)")
    p.add_argument("--repeats", type=int, help=f"fresh processes per measurement; medians are reported (default: "
                                               f"{FULL['repeats']})")
    p.add_argument("--workdir", type=Path, help=f"cache of the random pipeline folders, logs and JSON results "
                                                f"(default: {WORKDIR})")
    p.add_argument("--cache", choices=("warm", "cold"), default="warm",
                   help="warm: weight files read once before each load, so both loaders read from the page cache; "
                        "cold: their cached pages dropped before each load (posix_fadvise), so the disk is "
                        "timed too (default: %(default)s)")
    p.add_argument("--comfyui", help=COMFYUI_HELP)
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG",
                   help="extra ComfyUI flag for the pack's process, e.g. --comfy-arg=--fp32-text-enc")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process (default: %(default)s)")
    add_chart_flag(p)
    return fill_defaults(p.parse_args(argv), FULL, SMOKE)


log = progress("load")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.chart:
        saved = json.loads(args.chart.read_text())
        summary = {tuple(key.split(" ")): value for key, value in saved["summary"].items()}
        log(f"chart: {save_chart(chart(summary, saved['header']), args.chart.with_suffix('.png'))}")
        return 0
    if args.workdir is not None or not args.smoke:
        return run(args, (args.workdir or WORKDIR).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="bksdm-load-smoke-")).resolve()  # its logs and results stay
    try:
        return run(args, workdir)
    finally:
        shutil.rmtree(workdir / "diffusers", ignore_errors=True)  # the random pipeline's gigabytes


def run(args: argparse.Namespace, workdir: Path) -> int:
    layouts = layout_list(args.layouts)
    dtypes = csv_list(args.dtypes, DTYPES)
    loaders = csv_list(args.loaders, LOADERS)
    comfy = comfyui_path(args.comfyui)
    header = machine_header("BK-SDM loading benchmark (CPU)", comfy, {
        "settings": f"layouts {','.join(lay.name for lay in layouts)}; dtypes {','.join(dtypes)}; "
                    f"{args.repeats} fresh process(es) per cell, medians; page cache {args.cache}; "
                    f"ComfyUI flags --cpu {' '.join(args.comfy_arg)}".rstrip(),
        "workdir": str(workdir)})
    folders = {lay.name: ensure_pipeline(workdir, lay, comfy, log) for lay in layouts}

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: dict[tuple, list[dict]] = {}
    script = Path(__file__).resolve()
    for repeat in range(args.repeats):
        for lay in layouts:
            for dtype in dtypes:
                for loader in loaders:
                    folder = folders[lay.name]
                    set_page_cache(weight_files(folder), warm=args.cache == "warm")
                    spec = {"action": loader, "folder": str(folder), "dtype": dtype, "comfyui": str(comfy),
                            "comfy_args": args.comfy_arg}
                    log(f"repeat {repeat + 1}/{args.repeats}: {lay.name} {dtype} {loader}")
                    result = run_worker(script, spec, workdir / "logs" / f"load-{stamp}-{lay.name}-{dtype}-{loader}"
                                        f"-{repeat}.log", timeout=args.timeout,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
                    log(f"  {result['seconds']:.2f} s, peak +{result['peak_increase'] / MB:.0f} MB "
                        f"for {result['weight_bytes'] / MB:.0f} MB of weights")
                    runs.setdefault((lay.name, dtype, loader), []).append(result)

    summary = summarize(runs)
    header += load_line("at end") + "\n"
    results = workdir / "results" / f"load-{stamp}.json"
    save_json(results, {"header": header, "runs": {
        " ".join(k): v for k, v in runs.items()}, "summary": {" ".join(k): v for k, v in summary.items()}})
    drawn = save_chart(chart(summary, header), results.with_suffix(".png"))
    write_stdout(header + "\n" + report(summary, layouts, dtypes, loaders)
                 + f"\nchart: {drawn}\nraw results: {results}\n")
    return 0


def chart(summary: dict[tuple, dict], header: str):
    """Load time and peak memory increase by layout and dtype, one bar per loader."""
    groups = list(dict.fromkeys(f"{layout} {dtype}" for layout, dtype, _ in summary))
    loaders = list(dict.fromkeys(loader for *_, loader in summary))

    def per_cell(measure):
        return {(f"{layout} {dtype}", loader): measure(s) for (layout, dtype, loader), s in summary.items()}

    return stacked(
        bar_chart("Loading a pipeline folder, seconds (lower is faster)", "s", groups, loaders,
                  per_cell(lambda s: s["seconds"])),
        bar_chart("Peak memory increase while loading, MB (lower is leaner)", "MB", groups, loaders,
                  per_cell(lambda s: s["peak_increase"] / MB), note=machine_line(header)))


def summarize(runs: dict[tuple, list[dict]]) -> dict[tuple, dict]:
    out = {}
    for key, results in runs.items():
        med = {k: median([r[k] for r in results]) for k in (
            "seconds", "cpu_seconds", "ready_seconds", "peak_increase", "ready_peak_increase", "anon_peak_increase",
            "file_peak_increase", "retained_increase")}
        out[key] = {
            **med,
            "seconds_all": [round(r["seconds"], 3) for r in results],
            "weight_bytes": results[0]["weight_bytes"],
            "model_bytes": results[0]["model_bytes"],
            "files_read": [os.path.relpath(p, Path(p).parents[1]) for p in results[0]["files_read"]],
            "peak_source": results[0]["peak_source"],
        }
    return out


def report(summary: dict, layouts, dtypes, loaders) -> str:
    rows = []
    for lay in layouts:
        for dtype in dtypes:
            for loader in loaders:
                s = summary.get((lay.name, dtype, loader))
                if s is None:
                    continue
                rows.append([lay.name, dtype, loader, s["seconds"], s["cpu_seconds"], s["ready_seconds"],
                             s["weight_bytes"] / MB,
                             s["peak_increase"] / MB, s["ready_peak_increase"] / MB, s["anon_peak_increase"] / MB,
                             s["file_peak_increase"] / MB, s["retained_increase"] / MB, s["model_bytes"] / MB,
                             ", ".join(s["files_read"])])
    detail = table(["layout", "dtype", "loader", "load s", "load cpu s", "ready s", "weights read MB", "peak dRSS MB",
                    "ready peak dRSS MB", "anon peak MB", "file peak MB", "retained dRSS MB", "model MB",
                    "files read"], rows)
    ratio_rows = []
    for lay in layouts:
        for dtype in dtypes:
            diff = summary.get((lay.name, dtype, "diffusers"))
            for loader in [name for name in loaders if name != "diffusers"]:
                pack = summary.get((lay.name, dtype, loader))
                if pack is None:
                    continue
                t = ratio(pack["seconds"], diff and diff["seconds"])
                tr = ratio(pack["ready_seconds"], diff and diff["ready_seconds"])
                pm = ratio(pack["peak_increase"], pack["weight_bytes"])
                pr = ratio(pack["ready_peak_increase"], pack["weight_bytes"])
                dr = ratio(diff and diff["ready_peak_increase"], diff and diff["weight_bytes"])
                ratio_rows.append([lay.name, dtype, loader, t, verdict(t, TIME_TARGET, False), tr,
                                   verdict(tr, TIME_TARGET, False), pm, verdict(pm, MEMORY_TARGET, False), pr,
                                   verdict(pr, MEMORY_TARGET, False), dr])
    ratios = table(["layout", "dtype", "loader", "load s vs diffusers", f"target <= {TIME_TARGET}x",
                    "ready s vs diffusers", f"target <= {TIME_TARGET}x", "peak dRSS/weights",
                    f"target <= {MEMORY_TARGET}x", "ready peak dRSS/weights", f"target <= {MEMORY_TARGET}x",
                    "diffusers ready peak/weights"], ratio_rows)
    source = "/".join({s["peak_source"] for s in summary.values()})
    return ("### Loads (medians)\n\n" + detail + "\n### Ratios and targets\n\n" + ratios + f"""
- load s: the loader call alone (wall clock); load cpu s: CPU time of all the process's threads during it (less
  sensitive to other work on the machine than the wall clock; the ratio targets use the wall clock).
- ready s: the call plus reading every weight page once (both map the safetensors files; diffusers reads them
  only when the weights are first used, the pack's U-Net too, while ComfyUI's CLIP and VAE loaders copy theirs).
- peak dRSS: the process's peak RSS during the call minus its RSS just before ({source}); ready peak dRSS: the
  same over the call and the read of every weight page. anon/file peak: sampled every 5 ms, anonymous memory vs
  memory-mapped file pages (file pages are the page cache's own, shared, and dropped under memory pressure).
- retained dRSS: RSS after both phases (result still referenced) minus RSS before; model MB: bytes of the
  parameters and buffers the loaded objects hold; weights read MB: sizes of the weight files the loader mapped.
""")


if __name__ == "__main__":
    if is_worker():
        worker_main({"pack": pack_worker, "diffusers": diffusers_worker})
    else:
        sys.exit(main())
