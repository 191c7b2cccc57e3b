"""Convert a BK-SDM model folder into one single-file checkpoint (ComfyUI's own format)."""

from __future__ import annotations

import logging
import os
import re

import comfy.sd
import folder_paths
import torch
from comfy_api.latest import io

from ..bksdm.errors import ExportError, ModelNotFoundError
from ..bksdm.files import pipeline
from ..bksdm.layout.variants import classify_layout
from .assemble import load_folder
from .build import spec_of
from .inputs import choice, diffusers_roots, folder_input, model_folder, verdict

log = logging.getLogger(__name__)

PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
SAFE_NAME = re.compile(r"[\w][\w .+-]*\.safetensors")


def write_checkpoint(folder: pipeline.ModelFolder, output: str, precision: str) -> str:
    """Load ``folder`` and save it as one contiguous-key .safetensors at ``output``.

    The file is written beside its destination and renamed into place, so a failure (a
    full disk included) never leaves a partial checkpoint under that name.
    """
    if os.path.exists(output):  # a user's file: never overwritten, never deleted for them
        raise _taken(output)
    dtype = PRECISIONS[precision]
    model, clip, vae = load_folder(folder, precision, "auto", clip_options={"dtype": dtype}, vae_dtype=dtype)
    spec = spec_of(model)
    layout = classify_layout(spec)
    metadata = {"modelspec.sai_model_spec": "1.0.0", "modelspec.title": os.path.basename(folder.path),
                "bksdm.layout": layout, "bksdm.family": spec.family.name,
                "modelspec.predict_key": "v" if model.model.model_type.name == "V_PREDICTION" else "epsilon"}
    partial = f"{output}.partial-{os.getpid()}"
    try:
        comfy.sd.save_checkpoint(partial, model, clip, vae, metadata=metadata)
        _move_into_place(partial, output)
    except FileExistsError:  # a file of that name appeared while this one was written
        raise _taken(output) from None
    except Exception as e:  # safetensors reports a full disk as its own error type, not OSError
        raise ExportError(path=output, expected="room and permission to write the checkpoint",
                          found=f"{type(e).__name__}: {e}",
                          fix="free disk space or choose a writable checkpoints folder; nothing was written") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    log.info("BK-SDM: wrote %s (%s, %s)", output, layout, precision)
    return output


def _taken(output: str) -> ExportError:
    return ExportError(path=output, expected="a file name not taken yet", found="a file of that name already there",
                       fix="type another file name, or delete or move the old file yourself first; nothing was written")


def _move_into_place(partial: str, output: str) -> None:
    """Give ``partial`` the name ``output`` unless that name is taken by then: a hard link never
    replaces a file, where a rename would on POSIX. Without hard links (FAT, some network
    shares), the name is checked once more just before the rename."""
    try:
        os.link(partial, output)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(output):
            raise FileExistsError(output) from None
        os.replace(partial, output)
    else:
        os.remove(partial)


def _filename_problem(filename: str) -> str | None:
    if SAFE_NAME.fullmatch(filename) and ".." not in filename:
        return None
    return f"filename must be a plain file name ending in .safetensors, not {filename!r}"


class ConvertToCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMConvertToCheckpoint",
            display_name="Convert BK-SDM Folder to Checkpoint",
            category="loaders/BK-SDM",
            description="Writes a BK-SDM model folder as one .safetensors checkpoint (U-Net, text encoder and VAE "
                        "in the standard single-file key layout, contiguous block numbering) into models/checkpoints. "
                        "Load it back with Load BK-SDM Checkpoint.",
            inputs=[
                folder_input("The BK-SDM model folder to convert."),
                io.String.Input("filename", default="bk-sdm.safetensors",
                                tooltip="The checkpoint's file name in models/checkpoints (a plain name ending in "
                                        ".safetensors; an existing file is never overwritten)."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp16",
                               tooltip="fp16 halves the file; fp32 keeps full precision."),
            ],
            outputs=[io.String.Output(tooltip="The written checkpoint's path.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, model_name, filename, precision):
        return verdict(model_folder(model_name), _filename_problem(filename),
                       choice("precision", precision, PRECISIONS))

    @classmethod
    def execute(cls, model_name, filename, precision) -> io.NodeOutput:
        if _filename_problem(filename):  # validate_inputs covers prompts; this, direct calls
            raise ExportError(path=None, expected="a plain file name ending in .safetensors (letters, digits, "
                              "' ', '.', '+', '-', '_')", found=repr(filename),
                              fix="type only a file name, without folders, such as bk-sdm-small.safetensors; it is "
                              "written into models/checkpoints")
        roots = folder_paths.get_folder_paths("checkpoints")
        if not roots:
            raise ModelNotFoundError(path=None, expected="a models/checkpoints folder", found="none configured",
                                     fix="add a checkpoints folder in extra_model_paths.yaml")
        folder = pipeline.resolve_model_folder(model_name, diffusers_roots())
        os.makedirs(roots[0], exist_ok=True)
        path = write_checkpoint(folder, os.path.join(roots[0], filename), precision)
        return io.NodeOutput(path, ui={"text": [path]})


NODES = [ConvertToCheckpoint]
