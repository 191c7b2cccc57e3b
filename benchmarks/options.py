"""Command-line pieces the benchmark scripts share: the defaults of a full run or of a
``--smoke`` run, comma-separated lists, the default workdir, the ComfyUI checkout, and
the compile and chart flags."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import repo  # noqa: F401  (the repository root on sys.path, for cli)

from cli.comfy_host import DEFAULT_COMFYUI

WORKDIR = Path(tempfile.gettempdir()) / "bksdm-bench"
COMFYUI_HELP = f"ComfyUI checkout (default: {DEFAULT_COMFYUI})"


def smoke_help(smoke: dict, what: str) -> str:
    return f"{what} (defaults: " + ", ".join(f"{k}={v}" for k, v in smoke.items()) + ") to check the code path"


def fill_defaults(args: argparse.Namespace, full: dict, smoke: dict) -> argparse.Namespace:
    """Options left unset (None) take the full run's defaults, or the smoke run's with ``--smoke``."""
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def csv_list(text: str, allowed: Sequence[str] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise SystemExit(f"unknown value(s) {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def comfyui_path(given: str | None) -> Path:
    from cli import comfy_host

    try:
        return comfy_host.locate_comfyui(given, "pass --comfyui PATH or set COMFYUI_PATH")
    except comfy_host.HostError as e:
        raise SystemExit(str(e)) from None


def add_compile_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--compile", action="store_true", help=f"also run {what} through ComfyUI's TorchCompileModel "
                   "(inductor), in the same process after its eager run, at each dtype")
    p.add_argument("--inductor-cache", choices=("cold", "warm"), default="cold",
                   help="cold: compile into an empty inductor cache, as a first run does; warm: torch's on-disk "
                        "cache, which later ComfyUI sessions reuse (default: %(default)s)")


def compile_env(args: argparse.Namespace, workdir: Path, stamp: str) -> dict | None:
    """The workers' environment: this one, with an empty inductor cache for a cold compile (None: unchanged)."""
    if args.compile and args.inductor_cache == "cold":
        return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor-cache" / stamp)}
    return None


def add_chart_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chart", type=Path, metavar="RESULTS_JSON",
                   help="draw the chart of an earlier run from its raw results, beside them, and stop")
