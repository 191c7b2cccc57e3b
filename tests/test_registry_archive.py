"""The registry archive is the product: built as ``comfy node pack`` builds it (comfy-cli's own
code: git-tracked files less ``.comfyignore``), it holds the nodes, the core, the commands, the web
files and the example workflows, none of the workshop, and the pack runs from it alone."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PRODUCT = {"__init__.py", "__main__.py", "pack_import.py", "bksdm", "nodes", "cli", "web", "example_workflows",
           "README.md", "LICENSE", "pyproject.toml", "requirements.txt"}
PACK = """
import sys
from comfy_cli.file_utils import zip_files
from comfy_cli.registry import extract_node_configuration

config = extract_node_configuration()
assert config is not None, "comfy-cli could not read pyproject.toml"
zip_files(sys.argv[1], includes=config.tool_comfy.includes)
"""


def _tracked(path: str) -> bool:
    return subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=REPO, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "node.zip"
    run = subprocess.run([sys.executable, "-c", PACK, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr  # metadata comfy-cli accepts as is
    return path


def test_archive_holds_the_product_and_none_of_the_workshop(archive):
    names = zipfile.ZipFile(archive).namelist()
    top = {name.split("/")[0] for name in names}
    assert top <= PRODUCT, sorted(top - PRODUCT)
    # What the product runs, whichever tracked files exist when this runs.
    for needed in ("__init__.py", "bksdm/layout/unet_spec.py", "nodes/extension.py", "cli/txt2img.py", "LICENSE"):
        assert needed in names or not _tracked(needed), needed
    assert any(name.startswith("example_workflows/") and name.endswith(".json") for name in names)
    assert any(name.startswith("web/docs/") for name in names)


def test_registry_metadata_is_complete():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy, urls = project["tool"]["comfy"], project["project"]["urls"]
    assert project["project"]["license"] == {"file": "LICENSE"}
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"]
    assert {"Homepage", "Documentation", "Repository", "Issues"} <= set(urls)
    # URLs into this repository's main branch name files it has (the network is out of reach here).
    raw = "https://raw.githubusercontent.com/bk-sdm-comfyui/ComfyUI-BK-SDM/main/"
    assert comfy["Icon"].startswith(raw)
    icon = REPO / comfy["Icon"].removeprefix(raw)
    assert Image.open(icon).size == (400, 400)


@pytest.mark.host
def test_the_pack_runs_from_the_archive_alone(archive, sd1_pipeline, host, tmp_path):
    """Unpacked as ComfyUI Manager unpacks it, the pack's main command samples an image there,
    with ComfyUI loading the pack from the unpacked folder (no checkout on the path)."""
    pack = tmp_path / "custom_nodes" / "ComfyUI-BK-SDM"
    zipfile.ZipFile(archive).extractall(pack)
    output = tmp_path / "out.png"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, str(pack), "txt2img", "a fox", "--model", str(sd1_pipeline.path),
                          "-o", str(output), "--steps", "1", "--width", "64", "--height", "64",
                          "--comfyui", str(host.path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert Image.open(output).size == (64, 64)
    assert str(REPO) not in log  # nothing came from the checkout: its folder is on no path here
