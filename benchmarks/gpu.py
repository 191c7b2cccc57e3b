"""GPU sampling benchmark: it/s and peak VRAM of txt2img in ComfyUI (this pack's loader) and diffusers.

    python benchmarks/gpu.py --workdir /dev/shm/bksdm-bench          # CUDA: the full matrix, < 10 min on one H100
    .venv/bin/python benchmarks/gpu.py --smoke                       # CPU: the same code path at a tiny size

For BK-Base/Small/Tiny and the SD-1.4-shaped teacher (random weights from the real
configs, one pipeline folder each, written once under --workdir): 512x512, euler, CFG 7,
batch 1 and 4, fp16 and bf16.

- ComfyUI: the pack's ``BKSDMPipelineLoader`` loads the folder, ``CLIPTextEncode`` and
  ``EmptyLatentImage`` make the inputs, and ``nodes.common_ksampler`` samples: the very
  function the KSampler node runs (noise, CFG guider, cond/uncond batching, model
  management, preview callback), under ``torch.inference_mode`` as ComfyUI's executor
  runs nodes. Only the sampling call is timed.
- ComfyUI + TorchCompileModel: the same MODEL through ComfyUI's ``TorchCompileModel``
  node (inductor), fp16 only, batch 1 by default, as long as the time budget allows.
- diffusers: ``StableDiffusionPipeline.from_pretrained`` on the same folder (fp16 reads
  the fp16 files, as the pack does), ``EulerDiscreteScheduler``, prompt embeddings
  computed once, ``output_type="latent"``: the denoising loop alone, as for ComfyUI.

ComfyUI runs with DynamicVRAM on (its default on CUDA in 0.33) and off
(``--disable-dynamic-vram``), each in a process of its own, since ComfyUI picks its model
patcher once at start-up; every ComfyUI row says which patcher held the MODEL. Releases
without DynamicVRAM (0.3.64) run once. ComfyUI starts as ``python main.py`` does
(``comfy_host.start(comfyui_startup=True)``), so the MODEL is managed as in a real session.

it/s = steps / wall time of one sampling call (CUDA synchronised), median of --repeats
calls after a warm-up call. Peak VRAM: ``torch.cuda.max_memory_allocated`` during the
timed calls; "U-Net + sampling" subtracts what other models (text encoder, VAE) held on
the GPU at the start, so both frameworks are charged the same things.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here: imports included

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from options import COMFYUI_HELP, WORKDIR, comfyui_path, csv_list, fill_defaults, smoke_help  # noqa: E402
from output import load_line, progress, ratio, save_json, table, verdict, write_stdout  # noqa: E402
from pipelines import LAYOUTS, ensure_pipeline, layout_list  # noqa: E402
from sampling import DTYPES, Budget, measure  # noqa: E402
from workers import is_worker, run_worker, worker_main  # noqa: E402

TARGETS = {"sd1-small": 1.5, "sd1-tiny": 1.6}  # it/s over the teacher's, ComfyUI, fp16, batch 1
PACK_VS_DIFFUSERS = 1.0
FULL = {"models": "sd1-base,sd1-small,sd1-tiny,sd1-teacher", "dtypes": "fp16,bf16", "batches": "1,4", "size": 512,
        "steps": 20, "warmup_steps": 3, "repeats": 2, "compile_models": "sd1-teacher,sd1-tiny,sd1-small,sd1-base",
        "compile_batches": "1"}
SMOKE = {"models": "sd1-tiny", "dtypes": "fp16,bf16", "batches": "1", "size": 64, "steps": 2, "warmup_steps": 1,
         "repeats": 1, "compile_models": "", "compile_batches": "1"}
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=smoke_help(SMOKE, "run on the CPU at a tiny size"))
    p.add_argument("--models", help=f"layouts, from {', '.join(LAYOUTS)} (default: {FULL['models']})")
    p.add_argument("--dtypes", help=f"from {', '.join(DTYPES)} (default: {FULL['dtypes']})")
    p.add_argument("--batches", help=f"images per prompt; CFG doubles the U-Net batch (default: {FULL['batches']})")
    p.add_argument("--size", type=int, help=f"image width and height (default: {FULL['size']})")
    p.add_argument("--steps", type=int, help=f"sampling steps of each timed call (default: {FULL['steps']})")
    p.add_argument("--warmup-steps", type=int,
                   help=f"steps of the untimed first call (default: {FULL['warmup_steps']})")
    p.add_argument("--repeats", type=int, help=f"timed calls per cell, median (default: {FULL['repeats']})")
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale (default: %(default)s)")
    p.add_argument("--frameworks", default="comfyui,diffusers", help="(default: %(default)s)")
    p.add_argument("--compile-models", help="layouts also run through ComfyUI's TorchCompileModel (inductor, fp16), "
                   f"in this order while the budget lasts; '' for none (default: {FULL['compile_models']})")
    p.add_argument("--compile-batches", help=f"batches for the compiled runs (default: {FULL['compile_batches']})")
    p.add_argument("--budget-s", type=float, default=540, help="wall-clock budget for the whole run; work that "
                   "would not fit is skipped and marked so (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=WORKDIR,
                   help="random pipeline folders (~19 GB for the four full layouts), logs, results; on the GPU "
                        "machine /dev/shm/... is fastest (default: %(default)s)")
    p.add_argument("--write-jobs", type=int, default=0, help="pipelines written in parallel (default: 4 on CUDA, "
                                                             "1 with --smoke)")
    p.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="also copy the results (markdown + JSON) here (default: $OUT when set)")
    p.add_argument("--comfyui", help=COMFYUI_HELP)
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG", help="extra ComfyUI flag (repeatable)")
    p.add_argument("--dynamic-vram", default="on,off", help="ComfyUI's DynamicVRAM settings to measure, each in its "
                   "own process; ignored on releases without it (default: %(default)s)")
    args = fill_defaults(p.parse_args(argv), FULL, SMOKE)
    if args.write_jobs <= 0:
        args.write_jobs = 1 if args.smoke else 4
    # what the shared sampling worker needs besides: the MODEL as the pack's loader gives it, no VAE decode
    args.device = "cpu" if args.smoke else "cuda"
    args.title = "BK-SDM sampling benchmark (--smoke, CPU)" if args.smoke else "BK-SDM sampling benchmark (GPU)"
    args.comfy_attention, args.decode, args.images, args.force_bf16_compute = "pack", False, None, False
    args.compile_dtype = "fp16"
    return args


log = progress("gpu", since=T0)


# --------------------------------------------------------------------------- report

def report(rows: list[dict], skipped: list[str], args) -> str:
    def find(model, dtype, batch, framework, dynamic_vram=None):
        return next((r for r in rows if (r["model"], r["dtype"], r["batch"], r["framework"]) ==
                     (model, dtype, batch, framework) and r.get("dynamic_vram") == dynamic_vram and "its" in r), None)

    table_rows = []
    for r in rows:
        setting = r.get("dynamic_vram")
        teacher = find("sd1-teacher", r["dtype"], r["batch"], r["framework"], setting)
        diff = find(r["model"], r["dtype"], r["batch"], "diffusers")
        off = find(r["model"], r["dtype"], r["batch"], r["framework"], "off") if setting == "on" else None
        its = r.get("its")
        table_rows.append([
            r["model"], r["dtype"], r["batch"], r["framework"],
            f"{setting} ({r['patcher']})" if setting else None, its, r.get("seconds"),
            r.get("peak_vram") and r["peak_vram"] / MIB, r.get("sampling_peak_vram") and r["sampling_peak_vram"] / MIB,
            ratio(its, teacher and teacher["its"]) if r["model"] != "sd1-teacher" else None,
            ratio(its, diff and diff["its"]) if r["framework"] != "diffusers" else None,
            ratio(its, off and off["its"]), r.get("load_s"), r.get("warmup_s"), r.get("finite"),
            r.get("error") or r.get("attention")])
    out = table(["model", "dtype", "batch", "framework", "DynamicVRAM (patcher)", "it/s", "s/call", "peak VRAM MiB",
                 "U-Net+sampling peak MiB", "x teacher it/s", "x diffusers it/s", "x DynamicVRAM off it/s",
                 "load s", "warm-up s", "finite", "attention / note"], table_rows)
    settings = sorted({r["dynamic_vram"] for r in rows if r.get("dynamic_vram")}, reverse=True)
    targets = []
    for setting in settings:
        for model, target in TARGETS.items():
            r, t = (find(m, "fp16", 1, "ComfyUI", setting) for m in (model, "sd1-teacher"))
            value = ratio(r and r["its"], t and t["its"])
            targets.append([f"{model} it/s over the teacher's (ComfyUI, DynamicVRAM {setting}, fp16, batch 1, CFG)",
                            value, verdict(value, target, True)])
    for r in rows:
        if r["framework"] == "ComfyUI" and "its" in r:
            d = find(r["model"], r["dtype"], r["batch"], "diffusers")
            value = ratio(r["its"], d and d["its"])
            targets.append([f"pack in ComfyUI (DynamicVRAM {r['dynamic_vram']}) over diffusers, {r['model']} "
                            f"{r['dtype']} batch {r['batch']}", value, verdict(value, PACK_VS_DIFFUSERS, True)])
    out += "\n### Targets\n\n" + table(["target", "ratio", "verdict"], targets)
    if args.smoke:
        out += "\n(--smoke: CPU at a tiny size; these numbers check the code path and mean nothing for a GPU.)\n"
    if skipped:
        out += "\nskipped: " + "; ".join(skipped) + "\n"
    return out


def dynamic_vram_settings(args, comfy_path: Path) -> list[str]:
    """The settings to measure: those asked for, where this ComfyUI has DynamicVRAM at all."""
    has_it = "--disable-dynamic-vram" in (comfy_path / "comfy" / "cli_args.py").read_text()
    return csv_list(args.dynamic_vram, ("on", "off")) if has_it else ["n/a"]


def worker(spec: dict) -> dict:
    args = parse_args([])
    vars(args).update(spec["args"])
    return measure(args, Path(spec["comfyui"]), {name: Path(path) for name, path in spec["folders"].items()},
                   Budget(args.budget_s, T0), log)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        sys.stderr.write(f"benchmarks/gpu.py needs a CUDA GPU and torch {torch.__version__} sees none "
                         f"(CUDA build: {torch.version.cuda or 'no'}). Run it on a GPU machine, or with --smoke to "
                         "check the code path on the CPU at a tiny size.\n")
        return 2
    comfy = comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    layouts = layout_list(args.models) + (layout_list(args.compile_models) if args.compile_models else [])
    needed = {lay.name: lay for lay in layouts}
    log(f"pipelines: {', '.join(needed)} under {workdir}")
    with ThreadPoolExecutor(max_workers=args.write_jobs) as pool:
        folders = dict(zip(needed, pool.map(lambda lay: ensure_pipeline(workdir, lay, comfy, log), needed.values()),
                           strict=True))

    settings = dynamic_vram_settings(args, comfy)
    share = max(60.0, (args.budget_s - (time.monotonic() - T0)) / len(settings))
    rows, skipped, header = [], [], ""
    for n, setting in enumerate(settings):
        # diffusers knows no DynamicVRAM: measured once, beside the first setting.
        frameworks = args.frameworks if n == 0 else ",".join(f for f in csv_list(args.frameworks) if f != "diffusers")
        if not frameworks:
            continue
        child = {**vars(args), "workdir": str(workdir), "out": None, "dynamic_vram": setting,
                 "frameworks": frameworks, "budget_s": share,
                 "comfy_arg": [*args.comfy_arg, *(["--disable-dynamic-vram"] if setting == "off" else [])]}
        spec = {"action": "measure", "args": child, "comfyui": str(comfy),
                "folders": {name: str(path) for name, path in folders.items()}}
        log(f"DynamicVRAM {setting}: a ComfyUI process of its own (log: {workdir}/logs/gpu-{setting}.log)")
        result = run_worker(Path(__file__), spec, workdir / "logs" / f"gpu-{setting}.log", timeout=share + 300)
        rows += result["rows"]
        skipped += result["skipped"]
        header = header or result["header"]

    header = header and header + load_line("at end") + "\n"
    text = header + "\n" + report(rows, skipped, args) + f"\ntotal wall time {time.monotonic() - T0:.0f} s\n"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = workdir / "results" / f"gpu-{stamp}.json"
    save_json(results, {"header": header, "rows": rows, "skipped": skipped, "args": vars(args)})
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-results.md").write_text(text)
        save_json(args.out / "gpu-results.json", {"header": header, "rows": rows, "skipped": skipped})
    write_stdout(text + f"raw results: {results}\n")
    return 0


if __name__ == "__main__":
    if is_worker():
        worker_main({"measure": worker})
    else:
        sys.exit(main())
