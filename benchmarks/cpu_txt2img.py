"""Whole txt2img on the CPU, in seconds per image: ComfyUI (this pack's loader) against diffusers.

    .venv/bin/python benchmarks/cpu_txt2img.py                  # full: BK-Base/Small/Tiny + SD-1.4 teacher, 512²
    .venv/bin/python benchmarks/cpu_txt2img.py --models sd1-tiny --dtypes fp32,bf16   # the bf16 row and picture
    .venv/bin/python benchmarks/cpu_txt2img.py --models sd1-tiny --frameworks comfyui --comfy-attention pack \
        --dtypes fp32,bf16 --compile                            # TorchCompileModel against eager
    .venv/bin/python benchmarks/cpu_txt2img.py --smoke          # BK-Tiny at 64², 2 steps: the code path

For each layout (random weights from the real configs, one pipeline folder each, written
once under --workdir), in a fresh process of its own: 512x512, 20 euler steps, CFG 7, one
image, then its VAE decode.

- ComfyUI: the pack's ``BKSDMPipelineLoader``, ``CLIPTextEncode``, ``EmptyLatentImage``,
  ``nodes.common_ksampler`` (the KSampler node's own function) and ``VAEDecode``, under
  ``torch.inference_mode``, once per attention setting: ``pack`` (the MODEL as the loader
  gives it on the CPU: PyTorch SDPA on that MODEL alone, nodes/cpu.py) and ``comfyui`` (the
  same MODEL without that choice: ComfyUI's CPU default, sub-quadratic attention).
- diffusers: ``StableDiffusionPipeline.from_pretrained`` on the same folder,
  ``EulerDiscreteScheduler``, prompt embeddings computed once, the latent decoded by its VAE.

s/image = (text encode + sampling call + decode) / images. Memory: the peak RSS growth of
the first timed sampling call over the RSS just before it (the kernel's high-water mark,
reset first), with the model loaded. bf16 rows compare their image with the same cell's
fp32 image (same seed and noise): max abs difference in 8-bit levels and PSNR; with fp32 and
bf16 of one layout, ``side-by-side-<layout>.png`` (fp32 | bf16 | difference x8) is written
beside the images. The ``default`` dtype is what the loader gives with ``weight_dtype =
default`` (on a CPU with native bf16: a bf16 U-Net and VAE); diffusers has no row of its own
for it, its default is fp32. With ``--compile``, the pack's MODEL also goes through ComfyUI's
``TorchCompileModel`` (inductor) in the process of its eager run, and a second table sets the
compiled calls, and the compile itself, against the eager ones. A bar chart of seconds per
image is drawn beside the raw results.
The shared sampling code is ``sampling.py``; ComfyUI and diffusers draw their noise
differently, so their images are not compared with each other.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from charts import bar_chart, save_chart
from options import (
    COMFYUI_HELP,
    WORKDIR,
    add_chart_flag,
    add_compile_flags,
    comfyui_path,
    compile_env,
    csv_list,
    fill_defaults,
    smoke_help,
)
from output import load_line, machine_line, progress, ratio, save_json, table, write_stdout
from pipelines import LAYOUTS, ensure_pipeline, layout_list, teacher_of
from sampling import ATTENTIONS, DIFFUSERS_DTYPE, Budget, measure
from workers import is_worker, run_worker, worker_main

FULL = {"models": "sd1-base,sd1-small,sd1-tiny,sd1-teacher", "size": 512, "steps": 20}
SMOKE = {"models": "sd1-tiny", "size": 64, "steps": 2}
DTYPES = ("fp32", "bf16", "default")  # default: what the loader gives (bf16 U-Net and VAE on a CPU with native bf16)
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=smoke_help(SMOKE, "run at a tiny size"))
    p.add_argument("--models", help=f"layouts, from {', '.join(LAYOUTS)} (default: {FULL['models']})")
    p.add_argument("--size", type=int, help=f"image width and height (default: {FULL['size']})")
    p.add_argument("--steps", type=int, help=f"sampling steps (default: {FULL['steps']})")
    p.add_argument("--dtypes", default="fp32", help="weight dtypes, from fp32, bf16, default (bf16 computes in bf16 "
                   "where the CPU has AVX512-BF16 or AMX, nodes/cpu.py; default is the loader's default, which there "
                   "also puts the VAE in bf16, and diffusers' fp32) (default: %(default)s)")
    p.add_argument("--force-bf16-compute", action="store_true", help="compute ComfyUI's bf16 MODEL in bf16 even "
                   "where the CPU has no native bf16 (the numbers of the pack's bf16 choice; its time means nothing "
                   "there)")
    p.add_argument("--batches", default="1", help="images per prompt; CFG doubles the U-Net batch "
                                                  "(default: %(default)s)")
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=1, help="steps of the untimed first call (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per cell, median (default: %(default)s)")
    p.add_argument("--comfy-attention", default=",".join(ATTENTIONS),
                   help="pack = the MODEL as the pack's loader gives it; comfyui = ComfyUI's CPU default "
                        "(default: %(default)s)")
    p.add_argument("--frameworks", default="comfyui,diffusers", help="(default: %(default)s)")
    add_compile_flags(p, "the pack's MODEL")
    p.add_argument("--workdir", type=Path, default=WORKDIR,
                   help="random pipeline folders, images, logs, results (default: %(default)s)")
    p.add_argument("--comfyui", help=COMFYUI_HELP)
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG", help="extra ComfyUI flag (repeatable)")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per worker process (default: %(default)s)")
    add_chart_flag(p)
    args = fill_defaults(p.parse_args(argv), FULL, SMOKE)
    # what the shared sampling worker reads besides (sampling.measure)
    args.device, args.decode, args.title = "cpu", True, "BK-SDM txt2img benchmark (CPU)"
    args.dynamic_vram, args.compile_models, args.compile_batches, args.budget_s = "n/a", "", "1", math.inf
    args.compile_dtype = "fp32"
    return args


log = progress("cpu_txt2img")


def worker(spec: dict) -> dict:
    args = parse_args([])
    vars(args).update(spec["args"])
    folders = {name: Path(path) for name, path in spec["folders"].items()}
    return measure(args, Path(spec["comfyui"]), folders, Budget(math.inf, time.monotonic()), log)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.chart:
        log(f"chart: {chart_from(args.chart)}")
        return 0
    comfy = comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.images = str(workdir / "images" / stamp)
    layouts = layout_list(args.models)
    frameworks = csv_list(args.frameworks, ("comfyui", "diffusers"))
    env = compile_env(args, workdir, stamp)
    cells = [("comfyui", a) for a in csv_list(args.comfy_attention, ATTENTIONS) if "comfyui" in frameworks]
    if "diffusers" in frameworks:
        cells.append(("diffusers", None))  # no attention setting: the sampling worker ignores it
    rows, header = [], ""
    for lay in layouts:
        folder = ensure_pipeline(workdir, lay, comfy, log)
        for dtype in csv_list(args.dtypes, DTYPES):
            for framework, attention in cells:  # a process per cell: its memory starts clean
                if framework == "diffusers" and dtype == "default":
                    continue  # diffusers' default is its fp32 row
                name = f"{lay.name}-{dtype}-{framework}{'-' + attention if attention else ''}"
                log(f"{name} (log: {workdir}/logs/cpu_txt2img-{stamp}-{name}.log)")
                child = {**vars(args), "workdir": str(workdir), "models": lay.name, "dtypes": dtype,
                         "frameworks": framework, "comfy_attention": attention or ATTENTIONS[0]}
                if args.compile and attention == "pack":  # compiled where the eager MODEL just ran
                    child.update(compile_models=lay.name, compile_dtype=dtype, compile_batches=args.batches)
                spec = {"action": "measure", "args": child, "comfyui": str(comfy), "folders": {lay.name: str(folder)}}
                result = run_worker(Path(__file__), spec, workdir / "logs" / f"cpu_txt2img-{stamp}-{name}.log",
                                    timeout=args.timeout, env=env)
                rows += result["rows"]
                header = header or result["header"]
    compare_images(rows, Path(args.images))
    header += load_line("at end") + "\n"
    path = workdir / "results" / f"cpu_txt2img-{stamp}.json"
    save_json(path, {"header": header, "rows": rows, "args": vars(args)})
    drawn = save_chart(chart(rows, header, args.size, args.steps), path.with_suffix(".png"))
    write_stdout(header + "\n" + report(rows, layouts, args.warmup_steps, args.inductor_cache)
                 + f"\nimages: {args.images}\nchart: {drawn}\nraw results: {path}\n")
    return 0


def chart_from(results: Path) -> Path:
    """Draw the chart of an earlier run again from its raw results (``--chart``)."""
    import json

    saved = json.loads(results.read_text())
    args = saved["args"]
    return save_chart(chart(saved["rows"], saved["header"], args["size"], args["steps"]), results.with_suffix(".png"))


def chart(rows: list[dict], header: str, size: int, steps: int):
    """Seconds per image by layout, one bar per framework, attention setting and dtype."""
    frameworks = {"ComfyUI": "pack in ComfyUI", "ComfyUI+compile": "pack in ComfyUI, compiled",
                  "diffusers": "diffusers"}

    def series(r):
        attention = ", ComfyUI's attention" if r.get("attention_setting") == "comfyui" else ""
        return f"{frameworks[r['framework']]}{attention} {r['dtype']}"

    def order(r):  # the pack's rows, then diffusers'; fp32, bf16, default within each
        return (list(frameworks).index(r["framework"]), r.get("attention_setting") == "comfyui",
                DTYPES.index(r["dtype"]))

    batch = min(r["batch"] for r in rows)
    shown = sorted((r for r in rows if r["batch"] == batch and "error" not in r), key=order)
    return bar_chart(f"Seconds per {size}x{size} image: text encode, {steps} steps, decode (lower is faster)", "s",
                     list(dict.fromkeys(r["model"] for r in rows)), list(dict.fromkeys(series(r) for r in shown)),
                     {(r["model"], series(r)): per_image(r) for r in shown}, note=machine_line(header))


# --------------------------------------------------------------------------- images

def compare_images(rows: list[dict], folder: Path) -> None:
    """bf16 rows: their image against the same cell's fp32 image; a side-by-side picture per layout."""
    import numpy as np
    from PIL import Image

    def pixels(row):
        return np.asarray(Image.open(row["image"]).convert("RGB"), dtype=np.float64)

    for row in rows:
        fp32 = next((r for r in rows if r.get("image") and r["dtype"] == "fp32" and all(
            r.get(k) == row.get(k) for k in ("model", "framework", "attention_setting", "batch"))), None)
        if row["dtype"] == "fp32" or not row.get("image") or fp32 is None:
            continue
        a, b = pixels(fp32), pixels(row)
        mse = float(((a - b) ** 2).mean())
        row["vs_fp32"] = {"max_abs": float(np.abs(a - b).max()),
                          "psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse)}
        if row["framework"] == "ComfyUI" and row.get("attention_setting") == "pack" and row["batch"] == 1:
            difference = np.clip(np.abs(a - b) * 8, 0, 255)
            side = np.concatenate([a, b, difference], axis=1).astype(np.uint8)
            path = folder / f"side-by-side-{row['model']}.png"
            Image.fromarray(side).save(path)
            log(f"fp32 | {row['dtype']} | difference x8: {path}")


# --------------------------------------------------------------------------- report

def per_image(r: dict | None) -> float | None:
    """Seconds per image: the prompt's encoding, the sampling call and the decode, over the images."""
    return r and (r["encode_s"] + r["seconds"] + r["decode_s"]) / r["batch"]


def report(rows: list[dict], layouts, warmup_steps: int, inductor_cache: str) -> str:
    def find(model, dtype, framework, attention, batch):
        return next((r for r in rows if (r["model"], r["dtype"], r["framework"], r.get("attention_setting"),
                                         r["batch"]) == (model, dtype, framework, attention, batch)), None)

    out = []
    for r in rows:
        if r["framework"] == "ComfyUI+compile":
            continue  # their own table, below
        setting = r.get("attention_setting")
        teacher = teacher_of(LAYOUTS[r["model"]], layouts)
        same_in_teacher = teacher and find(teacher.name, r["dtype"], r["framework"], setting, r["batch"])
        ours = r["framework"] != "diffusers"
        diffusers_dtype = DIFFUSERS_DTYPE.get(r["dtype"], r["dtype"])
        diffusers = ours and find(r["model"], diffusers_dtype, "diffusers", None, r["batch"])
        diffusers_fp32 = ours and find(r["model"], "fp32", "diffusers", None, r["batch"])
        default = find(r["model"], r["dtype"], r["framework"], "comfyui", r["batch"]) if setting == "pack" else None
        vs_fp32 = r.get("vs_fp32")
        out.append([r["model"], f"{r['dtype']} (computed in {r['compute_dtype']}; VAE {r['vae_dtype']})", r["batch"],
                    f"{r['framework']} ({setting}: {r['attention']})" if setting else f"diffusers ({r['attention']})",
                    r["encode_s"], r["seconds"], r["decode_s"], per_image(r), r["sampling_peak_rss"] / MIB,
                    ratio(per_image(r), per_image(diffusers)), ratio(per_image(r), per_image(diffusers_fp32)),
                    ratio(per_image(r), per_image(default)),
                    ratio(per_image(same_in_teacher), per_image(r)),
                    f"{vs_fp32['max_abs']:.0f} / {vs_fp32['psnr_db']:.1f} dB" if vs_fp32 else None])
    return "### txt2img (CPU)\n\n" + table(
        ["layout", "weights", "images", "framework (attention)", "text encode s", "sampling s", "decode s", "s/image",
         "sampling peak RSS growth MB", "x diffusers s/image", "x diffusers fp32 s/image", "x ComfyUI default s/image",
         "speed-up vs teacher",
         "image vs fp32: max abs / PSNR"], out) + (
        "\n- s/image: (text encode + sampling + VAE decode) / images; x diffusers (same dtype; diffusers' default, "
        "fp32, for a default row), x diffusers fp32 and x ComfyUI default < 1: this row is faster. "
        "Speed-up vs teacher: the same-family teacher's s/image over this row's, same framework and attention "
        "(needs the teacher in --models).\n- image vs fp32: this row's image against the fp32 row's of the same "
        "framework and seed, in 8-bit levels (0-255) and PSNR.\n"
    ) + compile_report(rows, find, per_image, warmup_steps, inductor_cache)


def compile_report(rows: list[dict], find, per_image, warmup_steps: int, inductor_cache: str) -> str:
    """The compiled MODEL against the same eager one: per image, and with the compile paid by the first image."""
    out = []
    for r in rows:
        if r["framework"] != "ComfyUI+compile":
            continue
        eager = find(r["model"], r["dtype"], "ComfyUI", "pack", r["batch"])
        if "error" in r or eager is None:
            out.append([r["model"], r["dtype"], r["batch"], r.get("error", "no eager row"), *[None] * 5])
            continue
        # the warm-up call compiles and runs warmup_steps steps, at the compiled speed
        compile_s = r["warmup_s"] - warmup_steps / r["its"]
        saved = per_image(eager) - per_image(r)
        out.append([r["model"], r["dtype"], r["batch"], per_image(eager), per_image(r),
                    ratio(per_image(r), per_image(eager)), compile_s,
                    ratio(compile_s / r["batch"] + per_image(r), per_image(eager)),
                    compile_s / (saved * r["batch"]) if saved > 0 else "never"])
    if not out:
        return ""
    return "\n### TorchCompileModel (CPU)\n\n" + table(
        ["layout", "weights", "images", "eager s/image", "compiled s/image", "x eager", "compile s",
         "first call with compile x eager", "calls to repay the compile"], out) + (
        "\n- compile s: the compiled warm-up call less its steps at the compiled speed (inductor cache: "
        f"{inductor_cache}). First call with "
        "compile: (compile + one call's sampling and decode) over the eager call's.\n")


if __name__ == "__main__":
    if is_worker():
        worker_main({"measure": worker})
    else:
        sys.exit(main())
