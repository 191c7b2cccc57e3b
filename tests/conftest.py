"""The ComfyUI the suite runs on, and the fixtures that start it.

The suite needs a real ComfyUI: ``COMFYUI_PATH``, the ComfyUI this pack is installed in,
or the pinned release ``scripts/test.sh`` fetched (``BKSDM_COMFYUI_VERSION``). Without
one the run stops before any test, saying how to get one; no test skips for want of it.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import pack_import

# The tests import the pack's modules as ``cli`` and ``bksdm``: those names are bound to the
# pack's one copy, the one ComfyUI's nodes use (imported under ComfyUI's name for the pack), so
# no test hands one copy's objects to another copy's code, as the commands never do either.
pack_import.bind_names("cli", "bksdm")

import thirdparty as thirdparty_packs  # noqa: E402  (imports cli)

from cli import comfy_host  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# CPU, an fp32 text encoder, U-Net and VAE, as a parity test against the fp32 reference needs
# (--fp32-unet and --fp32-vae also keep the pack's bf16 default off on CPUs that compute bf16;
# the tests of that default clear them); images go to (and inputs come from) temporary folders, not the
# checkout's output/ and input/.
OUTPUT_DIR = tempfile.mkdtemp(prefix="bksdm-tests-output-")
INPUT_DIR = tempfile.mkdtemp(prefix="bksdm-tests-input-")
for folder in (OUTPUT_DIR, INPUT_DIR):
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
PRECISION_ARGS = ["--fp32-text-enc", "--fp32-unet", "--fp32-vae"]
COMFY_ARGS = ["--cpu", *PRECISION_ARGS, "--output-directory", OUTPUT_DIR, "--input-directory", INPUT_DIR]

HOST_PATH = comfy_host.find_comfyui()
if HOST_PATH is not None:
    comfy_host.configure(HOST_PATH, COMFY_ARGS)


def pytest_configure(config):
    if HOST_PATH is None:
        raise pytest.UsageError(f"no ComfyUI to test on (searched {comfy_host.where_searched()}): run the suite "
                                "with scripts/test.sh, which fetches the pinned ComfyUI, or set COMFYUI_PATH to "
                                "a ComfyUI checkout")


def pytest_report_header(config):
    version = comfy_host.comfyui_version(HOST_PATH) if HOST_PATH else None
    return f"ComfyUI: {version or 'unknown version'} at {HOST_PATH}"


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's ``comfy`` package, from the checkout the suite runs on."""
    import comfy.model_management

    return comfy


@pytest.fixture(scope="session")
def host():
    """A real ComfyUI, started in this process with its built-in nodes and this pack."""
    return comfy_host.start(HOST_PATH, COMFY_ARGS)


# The third-party packs example_workflows/ use.
EXAMPLE_PACKS = ("ComfyUI_IPAdapter_plus", "ComfyUI-AnimateDiff-Evolved")


def _pinned_pack(name: str) -> Path:
    """Where the commit of a third-party pack pinned for the ComfyUI under test is unpacked."""
    return thirdparty_packs.pack_path(name, thirdparty_packs.commit_for(name, comfy_host.comfyui_version(HOST_PATH)))


@pytest.fixture(scope="session")
def thirdparty(host):
    """Loads a pinned third-party node pack (``thirdparty.PACKS``) beside this one, once."""
    loaded = set()

    def load(name: str) -> Path:
        path = _pinned_pack(name)
        if not thirdparty_packs.is_node_pack(path):
            pytest.fail(f"{name} is not set up at {path}: run the suite with scripts/test.sh, which fetches it")
        if name not in loaded:
            host.load_node_pack(path)
            loaded.add(name)
        return path

    return load


@pytest.fixture(scope="session")
def pack(comfy):
    """A module of this pack by name (``pack("nodes.build")``), under the name ComfyUI's custom-node
    loader gives the pack: the modules the host's nodes use, whichever of the two imports them first."""
    return pack_import.pack_module


@pytest.fixture
def scratch(tmp_path):
    """A temporary folder deleted as soon as the test ends (for multi-gigabyte files)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@contextlib.contextmanager
def _emptied_on_exit(folder: Path):
    try:
        yield folder
    finally:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """``with model_folder(name) as root:`` a temporary folder for model files, emptied when the
    block ends: tmp_path_factory's folders last until the session ends, and the suite's random
    models are gigabytes each (kept, they filled the disk). The folder itself stays: ComfyUI
    checks every folder it has listed again (its modification time) on each later listing."""
    return lambda name: _emptied_on_exit(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def tokenizer_dir(host) -> Path:
    """CLIP's BPE vocabulary, as ComfyUI ships it (the same files SD pipelines carry)."""
    return HOST_PATH / "comfy" / "sd1_tokenizer"


# One SD 1.x and one SD 2.x layout, written as nota-ai publishes them (random weights).
PIPELINE_LAYOUTS = {"sd1": "v1_bk_small", "sd2": "v2-base-512_bk_tiny"}


@pytest.fixture(scope="session")
def diffusers_root(tmp_path_factory, host) -> Path:
    """A models/diffusers folder registered with ComfyUI, as extra_model_paths.yaml would."""
    import folder_paths

    root = tmp_path_factory.mktemp("diffusers")
    folder_paths.add_model_folder_path("diffusers", str(root))
    return root


@pytest.fixture(scope="session")
def pipelines(diffusers_root, tokenizer_dir):
    """Writes each family's random pipeline once, on first use."""
    from factories import write_pipeline

    written = {}

    def get(family):
        if family not in written:
            written[family] = write_pipeline(diffusers_root / f"bk-{family}-random", family,
                                             PIPELINE_LAYOUTS[family], seed=100, fp16_variants=True,
                                             tokenizer_source=tokenizer_dir)
        return written[family]

    return get


@pytest.fixture(scope="session", params=sorted(PIPELINE_LAYOUTS))
def random_pipeline(request, pipelines):
    return pipelines(request.param)


@pytest.fixture(scope="session")
def sd1_pipeline(pipelines):
    return pipelines("sd1")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def comfy_server(host, diffusers_root, tmp_path_factory):
    """A real ComfyUI server (main.py) on loopback, with this pack, the third-party packs the
    examples use and the test model folders."""
    import subprocess
    import time
    import urllib.request

    base = tmp_path_factory.mktemp("comfy-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-BK-SDM").symlink_to(REPO, target_is_directory=True)
    for name in EXAMPLE_PACKS:
        (base / "custom_nodes" / name).symlink_to(_pinned_pack(name), target_is_directory=True)
    (base / "models").mkdir()
    (base / "models" / "diffusers").symlink_to(diffusers_root, target_is_directory=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(base / "server.log", "w")  # noqa: SIM115  (the server writes to it until teardown)
    server = subprocess.Popen(
        [sys.executable, str(HOST_PATH / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
         "--cpu", *PRECISION_ARGS], cwd=HOST_PATH, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/system_stats", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ComfyUI server did not start:\n"
                                       + (base / "server.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(autouse=True)
def release_comfy_models(request):
    """After each host test, drop what the in-process ComfyUI still holds (cached node outputs,
    loaded models): full-size models are gigabytes, and the machine has 24 GB."""
    yield
    host = comfy_host.running_host() if "host" in request.fixturenames else None
    if host is not None:
        from graphs import release_memory

        release_memory(host)
