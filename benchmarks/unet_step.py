"""Per-step U-Net time on the CPU: ComfyUI's loaded MODEL against diffusers, same random weights.

    .venv/bin/python benchmarks/unet_step.py                     # full: sd1 base/small/tiny + SD-1.4 teacher
    .venv/bin/python benchmarks/unet_step.py --layouts sd1-tiny --size 64 --repeats 1 --warmup 1   # smallest

One step is what a sampler costs per iteration: ComfyUI's ``model.apply_model`` of the
MODEL the pack builds (``nodes.build.build_model``, the loader's own last step), called as
KSampler's CFG batching calls it (cond and uncond in one batch of 2), against diffusers'
``UNet2DConditionModel`` forward on the same weights (``tests/factories.random_unet``).
Both run fp32 under ``torch.inference_mode``; calls alternate (ComfyUI, diffusers, ...)
after a warm-up, and the medians are reported. The two outputs are compared first, so
the timings are of the same computation.

Each layout runs in its own process, once per ComfyUI attention setting: ComfyUI picks
its attention at import time, and on the CPU its default is the sub-quadratic kernel,
not PyTorch's SDPA that diffusers uses; ``--comfy-attention pytorch`` runs ComfyUI with
``--use-pytorch-cross-attention`` as well, to separate the framework from that choice.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

ATTENTION_FLAGS = {"default": [], "pytorch": ["--use-pytorch-cross-attention"], "split": [
    "--use-split-cross-attention"], "quad": ["--use-quad-cross-attention"]}
TIMESTEP = 500


# --------------------------------------------------------------------------- worker

def import_pack():
    """This repository imported as a package, as ComfyUI imports a node pack (tests/conftest.py does the same)."""
    if "bksdm_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bksdm_pack", C.REPO / "__init__.py",
                                                      submodule_search_locations=[str(C.REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["bksdm_pack"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("bksdm_pack.nodes.build")


def step_worker(spec: dict) -> dict:
    from cli import comfy_host

    comfy_host.configure(Path(spec["comfyui"]), ["--cpu", *ATTENTION_FLAGS[spec["attention"]]])
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management  # noqa: F401  (device setup, as ComfyUI starts)
    from factories import random_unet, unet_config

    from bksdm.components import UNetWeights
    from bksdm.unet_config import spec_from_diffusers_config
    from bksdm.unet_keys import convert_diffusers_unet

    build = import_pack()
    layout = C.LAYOUTS[spec["layout"]]
    config = unet_config(layout.config)
    start = time.perf_counter()
    reference = random_unet(config, seed=0)
    unet_spec = spec_from_diffusers_config(config, layout.config)
    state = convert_diffusers_unet(reference.state_dict(), unet_spec.unet_config, layout.config,
                                   unet_spec.describe())
    patcher = build.build_model(UNetWeights(unet_spec, state, layout.config), torch.float32, "epsilon")
    del state
    model = patcher.model
    build_seconds = time.perf_counter() - start

    g = torch.Generator().manual_seed(1)
    latent = spec["size"] // 8
    x = torch.randn(spec["batch"], 4, latent, latent, generator=g)
    context = torch.randn(spec["batch"], 77, unet_spec.family.context_dim, generator=g)
    sigma = model.model_sampling.sigma(torch.tensor(float(TIMESTEP))).repeat(spec["batch"])
    timesteps = torch.full((spec["batch"],), TIMESTEP)
    scaled = x / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()

    def comfy_step():
        return model.apply_model(x, sigma, c_crossattn=context)

    def diffusers_step():
        return reference(scaled, timesteps, encoder_hidden_states=context).sample

    with torch.inference_mode():
        denoised, expected = comfy_step(), diffusers_step()
        eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
        max_diff = (eps - expected).abs().max().item()
        scale = expected.abs().max().item()
        for _ in range(spec["warmup"]):
            comfy_step()
            diffusers_step()
        times = {"comfy": [], "diffusers": []}
        for _ in range(spec["repeats"]):
            for name, fn in (("comfy", comfy_step), ("diffusers", diffusers_step)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    processors = sorted({type(p).__name__ for p in reference.attn_processors.values()})
    return {
        "comfy_s": C.median(times["comfy"]), "diffusers_s": C.median(times["diffusers"]),
        "comfy_all": times["comfy"], "diffusers_all": times["diffusers"],
        "max_abs_diff": max_diff, "output_scale": scale, "build_seconds": build_seconds,
        "comfy_attention": comfy_attention.optimized_attention.__name__,
        "diffusers_attention": ",".join(processors), "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in reference.parameters()),
    }


# --------------------------------------------------------------------------- parent

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="sd1-base,sd1-small,sd1-tiny,sd1-teacher",
                   help=f"comma-separated, from {', '.join(C.LAYOUTS)} (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels; the latent is size/8 "
                                                         "(default: %(default)s)")
    p.add_argument("--batch", type=int, default=2, help="U-Net batch: 2 = one image with CFG (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each first (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of each; medians (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--comfy-attention", default="default,pytorch",
                   help=f"ComfyUI attention settings to run, from {', '.join(ATTENTION_FLAGS)}: default = what "
                        "ComfyUI picks on this machine (default: %(default)s)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bksdm-bench",
                   help="logs and JSON results (default: %(default)s)")
    p.add_argument("--comfyui", help=f"ComfyUI checkout (default: {C.DEFAULT_COMFYUI})")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker process (default: %(default)s)")
    return p.parse_args(argv)


log = C.progress("unet_step")


def main(argv=None) -> int:
    args = parse_args(argv)
    layouts = C.layout_list(args.layouts)
    attentions = C.csv_list(args.comfy_attention, list(ATTENTION_FLAGS))
    comfy = C.comfyui_path(args.comfyui)
    workdir = args.workdir.resolve()
    latent = args.size // 8
    header = C.machine_header("BK-SDM U-Net step benchmark (CPU, fp32)", comfy, {
        "settings": f"{args.size}x{args.size} ({latent}x{latent} latent), U-Net batch {args.batch}, 77 tokens, "
                    f"t={TIMESTEP}; {args.warmup} warm-up + {args.repeats} timed calls each, alternating; medians; "
                    f"torch threads {args.threads or 'default'}"})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[tuple[str, str], dict] = {}
    script = Path(__file__).resolve()
    for attention in attentions:
        for lay in layouts:
            log(f"{lay.name}, ComfyUI attention {attention}")
            spec = {"action": "step", "layout": lay.name, "attention": attention, "comfyui": str(comfy),
                    "size": args.size, "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats,
                    "threads": args.threads}
            r = C.run_worker(script, spec, workdir / "logs" / f"unet_step-{stamp}-{lay.name}-{attention}.log",
                             timeout=args.timeout)
            log(f"  ComfyUI {r['comfy_s'] * 1e3:.0f} ms ({r['comfy_attention']}), diffusers "
                f"{r['diffusers_s'] * 1e3:.0f} ms; outputs differ by {r['max_abs_diff']:.1e}")
            results[(lay.name, attention)] = r
    path = workdir / "results" / f"unet_step-{stamp}.json"
    C.save_json(path, {"header": header, "results": {" ".join(k): v for k, v in results.items()}})
    C.write_stdout(header + "\n" + report(results, layouts, attentions) + f"\nraw results: {path}\n")
    return 0


def report(results: dict, layouts, attentions) -> str:
    rows = []
    for attention in attentions:
        for lay in layouts:
            r = results.get((lay.name, attention))
            if r is None:
                continue
            teacher = next((t for t in layouts if t.is_teacher and t.family == lay.family), None)
            tr = results.get((teacher.name, attention)) if teacher and not lay.is_teacher else None
            rows.append([lay.name, f"{attention} ({r['comfy_attention']})", r["params"] / 1e6, r["comfy_s"] * 1e3,
                         r["diffusers_s"] * 1e3, C.ratio(r["comfy_s"], r["diffusers_s"]),
                         C.ratio(tr and tr["comfy_s"], r["comfy_s"]),
                         C.ratio(tr and tr["diffusers_s"], r["diffusers_s"]),
                         f"{r['max_abs_diff']:.1e} / {r['output_scale']:.1f}"])
    return ("### U-Net step (medians)\n\n" + C.table(
        ["layout", "ComfyUI attention", "U-Net M params", "ComfyUI ms", "diffusers ms", "ComfyUI/diffusers time",
         "speed-up vs teacher (ComfyUI)", "speed-up vs teacher (diffusers)", "max abs diff / max abs out"], rows)
        + "\n- ComfyUI/diffusers time < 1: ComfyUI's step is faster. Speed-up vs teacher: the same-family teacher's "
          "step time over this layout's, within one framework and attention setting (needs the teacher in "
          "--layouts).\n- max abs diff: largest difference between ComfyUI's noise prediction and diffusers' on the "
          "same input (they compute the same function: float rounding only).\n")


if __name__ == "__main__":
    if C.is_worker():
        C.worker_main({"step": step_worker})
    else:
        sys.exit(main())
