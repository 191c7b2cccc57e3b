"""AnimateDiff on the CPU: seconds and frames per second of an animation on each BK-SDM layout
against its SD teacher, through AnimateDiff-Evolved's own nodes.

    .venv/bin/python benchmarks/animatediff.py --animatediff-evolved PATH          # BK-Base/Small/Tiny, SD-1.4
    .venv/bin/python benchmarks/animatediff.py --animatediff-evolved PATH --smoke  # BK-Tiny, 4 frames at 64²

PATH is an AnimateDiff-Evolved checkout (a user's ``custom_nodes/ComfyUI-AnimateDiff-Evolved``).
For each layout (random weights from the real configs, the pipeline folders the other
benchmarks write under --workdir), in a fresh process of its own: the pack's loader with its
default dtype, AnimateDiff-Evolved's Load AnimateDiff Model (a random v2-shaped SD-1.5 motion
module with the real names and shapes), Apply AnimateDiff Model and Use Evolved Sampling (one
context window over all frames, as AnimateDiff runs 16 frames), then KSampler's own function:
euler, CFG 7, one untimed call of one step, then one timed call of --steps steps; the VAE decode
of the frames is timed apart. frames/s = frames / (sampling + decode) seconds; the speed-up is
the teacher's seconds over the row's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from options import COMFYUI_HELP, WORKDIR, comfyui_path, fill_defaults, smoke_help
from output import load_line, machine_header, progress, ratio, save_json, table, write_stdout
from pipelines import LAYOUTS, ensure_pipeline, layout_list, teacher_of
from workers import is_worker, run_worker, worker_main

FULL = {"models": "sd1-base,sd1-small,sd1-tiny,sd1-teacher", "size": 256, "frames": 16, "steps": 4}
SMOKE = {"models": "sd1-tiny", "size": 64, "frames": 4, "steps": 1}
PROMPT, NEGATIVE, SEED = "a paper boat drifting on a river, cinematic", "blurry, low quality", 42
MOTION_MODULE = "random-v2.safetensors"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=smoke_help(SMOKE, "run at a tiny size"))
    p.add_argument("--animatediff-evolved", type=Path, required=True, metavar="PATH",
                   help="an AnimateDiff-Evolved checkout, loaded beside the pack")
    p.add_argument("--models", help=f"layouts, from {', '.join(LAYOUTS)} (default: {FULL['models']})")
    p.add_argument("--size", type=int, help=f"frame width and height (default: {FULL['size']})")
    p.add_argument("--frames", type=int, help=f"frames of the animation (default: {FULL['frames']})")
    p.add_argument("--steps", type=int, help=f"sampling steps of the timed call (default: {FULL['steps']})")
    p.add_argument("--workdir", type=Path, default=WORKDIR,
                   help="random pipeline folders, the motion module, logs, results (default: %(default)s)")
    p.add_argument("--comfyui", help=COMFYUI_HELP)
    p.add_argument("--timeout", type=float, default=7200, help="seconds per worker process (default: %(default)s)")
    return fill_defaults(p.parse_args(argv), FULL, SMOKE)


log = progress("animatediff")


def worker(spec: dict) -> dict:
    import torch

    from cli import comfy_host

    host = comfy_host.start(Path(spec["comfyui"]), ["--cpu"], comfyui_startup=True)
    host.load_node_pack(Path(spec["animatediff_evolved"]))
    import comfy.utils
    import folder_paths

    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    folder = Path(spec["folder"])
    folder_paths.add_model_folder_path("diffusers", str(folder.parent))
    folder_paths.add_model_folder_path("animatediff_models", spec["motion_dir"])
    header = machine_header("BK-SDM AnimateDiff benchmark (CPU)", Path(spec["comfyui"]),
                            {"AnimateDiff-Evolved": spec["animatediff_evolved"]})
    model, clip, vae = host.call("BKSDMPipelineLoader", model_name=folder.name, weight_dtype="default",
                                 prediction="auto")[:3]
    positive = host.call("CLIPTextEncode", clip=clip, text=PROMPT)[0]
    negative = host.call("CLIPTextEncode", clip=clip, text=NEGATIVE)[0]
    (motion,) = host.call("ADE_LoadAnimateDiffModel", model_name=MOTION_MODULE)
    (m_models,) = host.call("ADE_ApplyAnimateDiffModelSimple", motion_model=motion)
    (context,) = host.call("ADE_StandardUniformContextOptions", context_length=spec["frames"], context_stride=1,
                           context_overlap=0)
    (animated,) = host.call("ADE_UseEvolvedSampling", model=model, beta_schedule="autoselect", m_models=m_models,
                            context_options=context)
    size = spec["size"] // 8
    latent = {"samples": torch.zeros(spec["frames"], 4, size, size)}

    def sample(steps: int):
        return nodes.common_ksampler(animated, SEED, steps, 7.0, "euler", "normal", positive, negative, latent)[0]

    with torch.inference_mode():
        sample(1)  # loads and injects the MODEL and the motion model, warms the kernels
        start = time.perf_counter()
        frames = sample(spec["steps"])
        sampling_s = time.perf_counter() - start
        start = time.perf_counter()
        (images,) = host.call("VAEDecode", samples=frames, vae=vae)
        decode_s = time.perf_counter() - start
    return {"header": header, "model": spec["model"], "sampling_s": sampling_s, "decode_s": decode_s,
            "frames": int(images.shape[0]), "finite": bool(torch.isfinite(images).all()),
            "dtype": str(model.model.get_dtype()).replace("torch.", "")}


def main(argv=None) -> int:
    args = parse_args(argv)
    comfy = comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    motion_dir = workdir / "animatediff_models"
    if not (motion_dir / MOTION_MODULE).is_file():
        from random_models.motion_modules import write_motion_module

        motion_dir.mkdir(parents=True, exist_ok=True)
        partial = motion_dir / f"{MOTION_MODULE}.partial"
        write_motion_module(partial, "v2", seed=30)
        partial.replace(motion_dir / MOTION_MODULE)
    layouts = layout_list(args.models)
    rows, header = [], ""
    for lay in layouts:
        folder = ensure_pipeline(workdir, lay, comfy, log)
        log(f"{lay.name} (log: {workdir}/logs/animatediff-{stamp}-{lay.name}.log)")
        spec = {"action": "measure", "comfyui": str(comfy), "animatediff_evolved": str(args.animatediff_evolved),
                "folder": str(folder), "motion_dir": str(motion_dir), "model": lay.name, "size": args.size,
                "frames": args.frames, "steps": args.steps}
        result = run_worker(Path(__file__), spec, workdir / "logs" / f"animatediff-{stamp}-{lay.name}.log",
                            timeout=args.timeout)
        worker_header = result.pop("header")  # the machine and versions, the same from every worker
        header = header or worker_header
        rows.append(result)
    header += (f"- workload: {args.frames} frames at {args.size}x{args.size}, {args.steps} euler steps, CFG 7, "
               "one context window, the pack's default dtype\n") + load_line("at end") + "\n"
    path = workdir / "results" / f"animatediff-{stamp}.json"
    save_json(path, {"header": header, "rows": rows, "args": {k: str(v) for k, v in vars(args).items()}})
    write_stdout(header + "\n" + report(rows, layouts) + f"\nraw results: {path}\n")
    return 0 if all(r["finite"] for r in rows) else 1


def report(rows: list[dict], layouts) -> str:
    def seconds(r):
        return r and r["sampling_s"] + r["decode_s"]

    out = []
    for r in rows:
        teacher = teacher_of(LAYOUTS[r["model"]], layouts)
        same_in_teacher = teacher and next((t for t in rows if t["model"] == teacher.name), None)
        out.append([r["model"], r["dtype"], r["frames"], r["sampling_s"], r["decode_s"], seconds(r),
                    r["frames"] / seconds(r), ratio(seconds(same_in_teacher), seconds(r))])
    return "### AnimateDiff (CPU)\n\n" + table(
        ["layout", "U-Net dtype", "frames", "sampling s", "decode s", "s/animation", "frames/s",
         "speed-up vs teacher"], out) + (
        "\n- s/animation: the timed sampling call and the VAE decode of its frames; speed-up vs teacher: the "
        "same-family teacher's s/animation over this row's (needs the teacher in --models).\n")


if __name__ == "__main__":
    if is_worker():
        worker_main({"measure": worker})
    else:
        sys.exit(main())
