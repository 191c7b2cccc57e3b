"""The main job: a prompt in, a PNG out, through a ComfyUI workflow with a BK-SDM loader.

    python path/to/ComfyUI-BK-SDM txt2img "a red fox in the snow" --model bk-sdm-small -o fox.png

Runs the pack's example workflow for the model's family in ComfyUI, in this process by
default (``--comfyui`` or ``COMFYUI_PATH`` says where ComfyUI is), or on a running
server with ``--server http://127.0.0.1:8188``. ``--model`` is a folder name under
ComfyUI's ``models/diffusers`` (or extra_model_paths), a path to a model folder, or a
registry name (``bk-sdm-small``, ``nota-ai/bk-sdm-v2-tiny``) that is downloaded first
if missing.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..bksdm import download
from ..bksdm.errors import BKSDMError, ModelNotFoundError
from ..bksdm.files import components, pipeline
from ..bksdm.layout import variants
from . import comfy_host
from .workflow import WorkflowError, nodes_of_type, only_node_of_type, to_api_prompt

log = logging.getLogger("bksdm.txt2img")

WORKFLOWS = {"sd1": "bk-sdm-sd1-txt2img.json", "sd2": "bk-sdm-sd2-txt2img.json"}
LOADERS = ("BKSDMPipelineLoader",)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python ComfyUI-BK-SDM txt2img", description=__doc__.split("\n\n")[0])
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--model", required=True, help="model folder name or path, or a registry name to download")
    p.add_argument("-o", "--output", default="bksdm.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--negative", help="negative prompt (default: the workflow's)")
    p.add_argument("--seed", type=int, help="noise seed (default: the workflow's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the workflow's)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the workflow's)")
    p.add_argument("--sampler", help="ComfyUI sampler name, e.g. euler (default: the workflow's)")
    p.add_argument("--scheduler", help="ComfyUI scheduler name, e.g. normal (default: the workflow's)")
    p.add_argument("--width", type=int, help="image width (default: the workflow's)")
    p.add_argument("--height", type=int, help="image height (default: the workflow's)")
    p.add_argument("--weight-dtype", help="loader weight dtype: default, fp16, bf16, fp32, fp8_e4m3fn, ...")
    p.add_argument("--workflow", type=Path, help="a UI-format workflow with one BK-SDM pipeline loader "
                                                 "(default: the pack's example for the model's family)")
    p.add_argument("--server", help="URL of a running ComfyUI to queue the workflow on instead")
    p.add_argument("--comfyui", type=Path,
                   help=f"ComfyUI checkout to run in-process (default: {comfy_host.DEFAULT_COMFYUI})")
    p.add_argument("--comfy-arg", action="append", default=[], metavar="ARG",
                   help="a ComfyUI command-line flag for the in-process run, e.g. --comfy-arg=--lowvram (repeatable)")
    return p.parse_args(argv)


def _family_of_local_model(path: Path) -> str | None:
    try:
        spec = components.read_unet_spec(pipeline.open_model_folder(str(path)))
    except BKSDMError:
        return None
    return spec.family.name if spec else None


def choose_workflow(args, family: str | None) -> Path:
    if args.workflow:
        return args.workflow
    return comfy_host.PACK_DIR / "example_workflows" / WORKFLOWS[family or "sd1"]


def build_prompt(workflow: dict, node_info, args, model_name: str) -> dict:
    """The API prompt of ``workflow`` with the loader, text, sampler and size set from ``args``."""
    prompt = to_api_prompt(workflow, node_info)
    loader = prompt[only_node_of_type(prompt, LOADERS)]["inputs"]
    loader["model_name"] = model_name
    if args.weight_dtype:
        loader["weight_dtype"] = args.weight_dtype
    sampler_id = only_node_of_type(prompt, ("KSampler",))
    sampler = prompt[sampler_id]["inputs"]
    for key, value in (("seed", args.seed), ("steps", args.steps), ("cfg", args.cfg),
                       ("sampler_name", args.sampler), ("scheduler", args.scheduler)):
        if value is not None:
            sampler[key] = value
    for key, text in (("positive", args.prompt), ("negative", args.negative)):
        if text is not None:
            source_id = sampler[key][0]
            if prompt[source_id]["class_type"] != "CLIPTextEncode":
                raise WorkflowError(f"the KSampler's {key} input must come from a CLIPTextEncode node")
            prompt[source_id]["inputs"]["text"] = text
    latent = prompt[sampler["latent_image"][0]]["inputs"]
    for key, value in (("width", args.width), ("height", args.height)):
        if value is not None:
            latent[key] = value
    if len(nodes_of_type(prompt, "SaveImage")) != 1:
        raise WorkflowError("the workflow must have exactly one SaveImage node")
    return prompt


def _saved_image(outputs: dict) -> dict:
    images = [image for node in outputs.values() for image in node.get("images", []) if image.get("type") == "output"]
    if len(images) != 1:
        raise WorkflowError(f"expected one saved image, the workflow produced {len(images)}")
    return images[0]


def run_local(args) -> bytes:
    # ComfyUI's cache may answer a repeated prompt with an earlier file, so its output
    # folder lives as long as the process.
    output_dir = tempfile.mkdtemp(prefix="bksdm-txt2img-")
    atexit.register(shutil.rmtree, output_dir, ignore_errors=True)
    host = comfy_host.start_for_tools(args.comfyui, [*args.comfy_arg, "--output-directory", output_dir])
    import folder_paths

    model_name, family = resolve_local_model(args.model, folder_paths, args.weight_dtype)
    workflow = json.loads(choose_workflow(args, family).read_text(encoding="utf-8"))
    image = _saved_image(host.run(build_prompt(workflow, host.node_info, args, model_name)))
    return (Path(folder_paths.get_output_directory()) / image["subfolder"] / image["filename"]).read_bytes()


def resolve_local_model(model: str, folder_paths, weight_dtype: str | None = None) -> tuple[str, str | None]:
    """The loader's folder name for ``model`` and its family: a path is exposed as one more
    diffusers folder; a registry name that is not there yet is downloaded first."""
    path = Path(model).expanduser()
    if path.is_dir():
        folder_paths.add_model_folder_path("diffusers", str(path.resolve().parent))
        return path.resolve().name, _family_of_local_model(path)
    roots = folder_paths.get_folder_paths("diffusers")
    variant = variants.find_variant(model)
    name = variant.folder_name if variant else model
    try:
        folder = pipeline.resolve_model_folder(name, roots)
    except ModelNotFoundError:
        if variant is None:
            raise
        log.info("%s is not in %s: downloading it", variant.repo_id, roots[0])
        weights = "fp32" if weight_dtype in ("fp32", "bf16") else "fp16"
        folder = pipeline.open_model_folder(download.download_model(variant.repo_id, roots[0], weights=weights))
    return name, _family_of_local_model(Path(folder.path))


def run_remote(args) -> bytes:
    from .remote import RemoteComfy

    server = RemoteComfy(args.server)
    variant = variants.find_variant(args.model)
    name = variant.folder_name if variant else args.model
    workflow = json.loads(choose_workflow(args, variant.family if variant else None).read_text(encoding="utf-8"))
    outputs = server.run(build_prompt(workflow, server.node_info, args, name))
    return server.file_bytes(_saved_image(outputs))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        png = run_remote(args) if args.server else run_local(args)
    except (BKSDMError, comfy_host.HostError, WorkflowError, OSError) as e:
        log.error("txt2img failed: %s", e)
        return 1
    output = Path(args.output).expanduser().resolve()  # as typed, from the caller's folder
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=output.parent, suffix=".png", delete=False) as tmp:
        tmp.write(png)
    os.replace(tmp.name, output)  # atomic: never a half-written PNG under the user's name
    log.info("wrote %s (%d bytes)", output, len(png))
    return 0

