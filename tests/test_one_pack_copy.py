"""One copy of the pack in a process: the commands and ComfyUI import each pack file once.

The commands are modules of the pack's package, imported (``pack_import``) under the name
ComfyUI's ``load_custom_node`` gives it, and reach the rest of the pack by relative imports, so
whichever loads second reuses the other's modules. Each order runs in a fresh process (this
file, run as a script), as a command or ComfyUI starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[1]
PACK_FILES = sorted([REPO / "__init__.py", *(REPO / "bksdm").rglob("*.py"), *(REPO / "nodes").glob("*.py"),
                     *(REPO / "cli").glob("*.py")])


@pytest.mark.parametrize("order", ["commands-first", "comfyui-first"])
def test_each_pack_file_is_one_module_and_errors_cross(order, tmp_path):
    from conftest import HOST_PATH

    result_file = tmp_path / "result.json"
    run = subprocess.run([sys.executable, __file__, order, str(HOST_PATH), str(tmp_path), str(result_file)],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(result_file.read_text())

    copies = {file: names for file, names in result["modules_by_file"].items() if len(names) > 1}
    assert not copies, f"pack files imported more than once: {copies}"
    imported = {file for file, names in result["modules_by_file"].items() if names}
    expected = {"__init__.py", "bksdm/__init__.py", "bksdm/errors.py", "bksdm/files/pipeline.py",
                "bksdm/download/__init__.py", "bksdm/download/request.py", "nodes/__init__.py", "nodes/loaders.py",
                "nodes/convert.py", "cli/__init__.py", "cli/txt2img.py", "cli/download.py", "cli/convert.py",
                "cli/comfy_host.py"}
    assert expected <= imported, f"not imported: {sorted(expected - imported)}"
    assert result["comfyui_node_module"] == f"{result['pack_package']}.nodes.loaders"  # ComfyUI's name is ours
    assert result["caught"] == "UnsupportedModelError"


# --------------------------------------------------------------------------- the child process

def import_as_the_commands_do() -> None:
    """The commands' modules, as ``python <pack folder> COMMAND`` imports them (with the pack modules
    they import), and the node layer ``convert`` imports once ComfyUI has started."""
    from pack_import import pack_module

    for name in ("convert", "download", "txt2img"):
        pack_module(f"cli.{name}")
    if pack_module("cli.comfy_host").running_host():
        pack_module("nodes.convert")


def child(order: str, comfy_path: str, scratch: str) -> dict:
    from pack_import import PACK_MODULE, pack_module

    comfy_host = pack_module("cli.comfy_host")
    if order == "commands-first":
        import_as_the_commands_do()
        command_errors = pack_module("bksdm.errors")
        host = comfy_host.start(Path(comfy_path), ["--cpu"])
        import_as_the_commands_do()
    else:
        host = comfy_host.start(Path(comfy_path), ["--cpu"])
        import_as_the_commands_do()
        command_errors = pack_module("bksdm.errors")

    # A transformer pipeline, which the pipeline loader node refuses with UnsupportedModelError.
    import folder_paths

    sd3 = Path(scratch) / "diffusers" / "sd3"
    sd3.mkdir(parents=True)
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                      "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    folder_paths.add_model_folder_path("diffusers", str(sd3.parent))
    loader = host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
    try:
        loader.execute(model_name="sd3", weight_dtype="default", prediction="auto")
        caught = None
    except command_errors.BKSDMError as e:
        caught = type(e).__name__

    modules_by_file = {str(file.relative_to(REPO)): [] for file in PACK_FILES}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() in PACK_FILES:
            modules_by_file[str(Path(file).resolve().relative_to(REPO))].append(name)
    return {"modules_by_file": modules_by_file, "caught": caught,
            "pack_package": PACK_MODULE, "comfyui_node_module": loader.__module__}


if __name__ == "__main__":
    order, comfy_path, scratch, result_file = sys.argv[1:]
    Path(result_file).write_text(json.dumps(child(order, comfy_path, scratch)))
