"""Run ComfyUI inside this process, headless: find a checkout, start it with this pack, run prompts.

This is how the main job and the integration tests drive a real ComfyUI without its
web server: ComfyUI's own argument parser, node registry, prompt validation and
``PromptExecutor``, with a small sink in place of the websocket server.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from . import provision_comfyui
from .provision_comfyui import comfyui_version, is_comfyui

log = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]

# What the --comfyui options default to, for their help texts.
DEFAULT_COMFYUI = "COMFYUI_PATH, the ComfyUI this pack is installed in, else the release scripts/env.sh fetched"


class HostError(RuntimeError):
    """ComfyUI could not be found or started, or a prompt failed."""


def comfyui_candidates() -> list[Path]:
    """Where a ComfyUI checkout is looked for, in order (``scripts/env.sh`` fetches the last one)."""
    given = provision_comfyui.given_or_installed()
    if given is not None:
        return [given]
    try:
        return [provision_comfyui.provisioned_path(provision_comfyui.requested_version())]
    except provision_comfyui.ProvisionError:
        return []


def find_comfyui() -> Path | None:
    return next((p.resolve() for p in comfyui_candidates() if is_comfyui(p)), None)


def locate_comfyui(given: str | os.PathLike | None, hint: str) -> Path:
    """The ComfyUI checkout a command was pointed at, or else the one found; ``hint`` ends the error."""
    path = Path(given).expanduser() if given else find_comfyui()
    if path is None or not is_comfyui(path):
        raise HostError(f"no ComfyUI checkout found (searched {given or where_searched()}); {hint}, or run "
                        "scripts/txt2img.sh or scripts/test.sh once: they fetch ComfyUI themselves")
    return path.resolve()


def where_searched() -> str:
    return ", ".join(str(p) for p in comfyui_candidates()) or "nowhere: BKSDM_COMFYUI_VERSION is not supported"


def configure(comfy_path: Path | None, comfy_args: Sequence[str]) -> None:
    """Make ``comfy_path`` importable and parse ``comfy_args`` as ComfyUI's command line.

    With ``comfy_path`` None, the ``comfy`` package already on sys.path is used. Must run
    before anything imports ``comfy``; a second call changes nothing.
    """
    if "comfy.cli_args" in sys.modules:
        return
    if comfy_path is not None:
        sys.path.insert(0, str(comfy_path))
    import comfy.options

    comfy.options.enable_args_parsing()
    saved, sys.argv = sys.argv, ["comfyui", *comfy_args]
    try:
        import comfy.cli_args
    finally:
        sys.argv = saved


class HeadlessServer:
    """What ``PromptExecutor`` reports to: progress goes to the log, not to browsers."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}

    def send_sync(self, event, data, sid=None):
        if event == "execution_error":
            log.error("ComfyUI: %s in node %s: %s", data.get("exception_type"), data.get("node_id"),
                      data.get("exception_message"))
        else:
            log.debug("ComfyUI event %s", event)

    def queue_updated(self):
        pass

    def send_progress_text(self, text, node_id, sid=None):
        log.debug("ComfyUI node %s: %s", node_id, text)


def new_executor(execution, server):
    """ComfyUI's ``PromptExecutor`` with the classic node cache (outputs dropped when unused).

    Its constructor is not a versioned API: releases before the RAM-pressure cache (0.3.64)
    take ``cache_size``, later ones (0.33) ``cache_args``, read on every run. This is the
    one place the pack depends on it.
    """
    import inspect

    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0.0, "ram_inactive": 0.0})
    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_size=0)


class Host:
    """A started, in-process ComfyUI with this pack loaded."""

    def __init__(self, comfy_path: Path, nodes):
        import execution

        self.path = comfy_path
        self.version = comfyui_version(comfy_path)
        self.nodes = nodes
        self.server = HeadlessServer()
        self.executor = new_executor(execution, self.server)

    def load_node_pack(self, path: Path) -> None:
        """Load another custom node pack beside this one, as ComfyUI loads each folder of custom_nodes."""
        # ComfyUI puts its comfy/ folder on sys.path before it loads custom_nodes, and packs rely on
        # it (``import model_management``); at the end here, so that it shadows nothing.
        comfy_folder = str(self.path / "comfy")
        if comfy_folder not in sys.path:
            sys.path.append(comfy_folder)
        if not asyncio.run(self.nodes.load_custom_node(str(path))):
            raise HostError(f"ComfyUI could not load the node pack {path}; see the log above")

    def node_info(self, class_type: str) -> dict:
        """The node's input definition, as the server's /object_info reports it."""
        cls = self.nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if cls is None:
            raise HostError(f"the workflow uses node '{class_type}', which this ComfyUI does not have")
        if hasattr(cls, "GET_NODE_INFO_V1"):
            return cls.GET_NODE_INFO_V1()
        inputs = cls.INPUT_TYPES()
        return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}}

    def call(self, class_type: str, **inputs) -> tuple:
        """A node's outputs, called as ComfyUI's executor calls it (V1 and V3 node APIs alike)."""
        cls = self.nodes.NODE_CLASS_MAPPINGS[class_type]
        if hasattr(cls, "define_schema"):
            return tuple(cls.execute(**inputs).args)
        return tuple(getattr(cls(), cls.FUNCTION)(**inputs))

    def run(self, prompt: dict) -> dict:
        """Validate and execute an API-format prompt; return its outputs by node id."""
        import execution

        prompt = copy.deepcopy(prompt)  # ComfyUI writes into the prompt (e.g. fingerprints); keep the caller's
        prompt_id = uuid.uuid4().hex
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid:
            raise HostError(f"ComfyUI refused the workflow: {error}\n{node_errors}")
        self.executor.execute(prompt, prompt_id, {}, outputs)
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            message = errors[0]["exception_message"] if errors else "see the log"
            raise HostError(f"ComfyUI failed to run the workflow: {message}")
        return self.executor.history_result["outputs"]


_HOST: Host | None = None
_PATHS_APPLIED = False


def running_host() -> Host | None:
    """The ComfyUI started in this process, if any."""
    return _HOST


def import_folder_paths(comfy_path: Path, comfy_args: Sequence[str] = ()):
    """ComfyUI's ``folder_paths`` with its model folders set up as main.py sets them up
    (extra_model_paths.yaml beside ComfyUI, --extra-model-paths-config, --output-directory,
    --input-directory)."""
    configure(comfy_path, comfy_args)
    import folder_paths
    import utils.extra_config  # ComfyUI imports it before nodes; else 'utils' is not a package
    from comfy.cli_args import args

    global _PATHS_APPLIED
    if not _PATHS_APPLIED:
        given = [Path(p) for group in args.extra_model_paths_config or [] for p in group]  # nargs="+", append
        for config in [comfy_path / "extra_model_paths.yaml", *given]:
            if config.is_file():
                utils.extra_config.load_extra_path_config(str(config))
        if args.output_directory:
            folder_paths.set_output_directory(os.path.abspath(args.output_directory))
        if args.input_directory:
            folder_paths.set_input_directory(os.path.abspath(args.input_directory))
        _PATHS_APPLIED = True
    return folder_paths


def run_comfyui_startup(comfy_path: Path, comfy_args: Sequence[str]) -> None:
    """ComfyUI's own start-up, as ``python main.py`` runs it up to the server: its logging,
    model paths, custom nodes' prestartup scripts and, on CUDA, DynamicVRAM (the patcher
    ``CoreModelPatcher`` names). main.py keeps all of it at module level for this."""
    global _PATHS_APPLIED
    configure(comfy_path, comfy_args)
    root = logging.getLogger()
    before = list(root.handlers)
    import_comfyui_module(comfy_path, "main")
    if root.handlers != before:  # ComfyUI's logging took over, as in main.py: one line per message
        for handler in before:
            root.removeHandler(handler)
    _PATHS_APPLIED = True


def import_comfyui_module(comfy_path: Path, name: str):
    """ComfyUI's top-level module ``name`` (main.py, nodes.py), not a namesake elsewhere on sys.path.

    The pack's ``nodes/`` package shares its name with ComfyUI's ``nodes``, and pytest puts a
    checkout named like ComfyUI-BK-SDM ahead of ComfyUI on sys.path after :func:`configure`
    put ComfyUI first; ComfyUI goes first again here, and a namesake already imported is refused.
    """
    folder = str(comfy_path)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    module = importlib.import_module(name)
    expected = comfy_path / f"{name}.py"
    if Path(module.__file__).resolve() != expected.resolve():
        raise HostError(f"imported {module.__file__} as ComfyUI's {name}.py; expected {expected}")
    return module


def start(comfy_path: Path, comfy_args: Sequence[str] = (), comfyui_startup: bool = False) -> Host:
    """Start ComfyUI in this process (once) with its built-in nodes and this pack.

    ``comfyui_startup`` runs ComfyUI's whole start-up first (:func:`run_comfyui_startup`),
    as the commands do; the test suite sets up only the model paths, since ComfyUI's
    logging would take over the output that pytest captures.
    """
    global _HOST
    if _HOST is not None:
        return _HOST
    if comfyui_startup:
        run_comfyui_startup(comfy_path, comfy_args)
    else:
        import_folder_paths(comfy_path, comfy_args)
    nodes = import_comfyui_module(comfy_path, "nodes")
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(PACK_DIR))):
        raise HostError(f"ComfyUI could not load this pack from {PACK_DIR}; see the log above")
    _HOST = Host(comfy_path, nodes)
    return _HOST


# ComfyUI's flags that choose a device; with one of them the user has chosen.
DEVICE_FLAGS = ("--cpu", "--directml", "--cuda-device", "--oneapi-device-selector")


def accelerators() -> list[str]:
    """The accelerators ComfyUI looks for that this machine has: CUDA (and ROCm), Apple MPS and Intel
    XPU as torch reports them, Ascend and Cambricon where their torch plug-in is installed."""
    import torch

    found = ["cuda"] if torch.cuda.is_available() else []
    if torch.backends.mps.is_available():
        found.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.append("xpu")
    found += [plugin for plugin in ("torch_npu", "torch_mlu") if importlib.util.find_spec(plugin)]
    return found


def device_args(comfy_args: Sequence[str], found: Sequence[str]) -> list[str]:
    """``comfy_args`` as given, with ``--cpu`` added only where torch reports no GPU ComfyUI runs on
    and the user named no device: ComfyUI picks among the GPUs, but with none it stops instead of
    falling back to the CPU."""
    if found or any(arg.split("=")[0] in DEVICE_FLAGS for arg in comfy_args):
        return list(comfy_args)
    log.info("no GPU found (CUDA, ROCm, Apple MPS, Intel XPU, Ascend, Cambricon): running ComfyUI on the CPU (--cpu)")
    return [*comfy_args, "--cpu"]


def start_for_tools(comfy_path: Path | None, comfy_args: Sequence[str] = ()) -> Host:
    """Start the ComfyUI a command was pointed at (or the one found), on the device ComfyUI picks."""
    comfy_path = locate_comfyui(comfy_path, "set COMFYUI_PATH or pass --comfyui")
    return start(comfy_path, device_args(comfy_args, accelerators()), comfyui_startup=True)
