"""Run the pack's import and download tests against exactly the dependency floors it states.

    python3 tests/dependency_floors.py --venv .venv [--floor NAME==VERSION ...] [pytest args]

Every requirement in requirements.txt (the same list as pyproject.toml's ``dependencies``)
is ``name>=floor``. This script proves those floors: it makes an overlay virtual environment
(``<venv>-floors``, made afresh on each run) whose own site-packages holds exactly the floor
versions, and which sees the rest of the test environment ``--venv`` (torch, ComfyUI's
requirements, pytest...) through a ``.pth`` file. A ``.pth`` entry comes after the overlay's
own site-packages on ``sys.path``, so the floor versions shadow the newer ones of the test
environment; the script checks that they really do before it runs a test. Packages of the test
environment that refuse the floors (``pip check``: transformers and diffusers pin recent
huggingface_hub releases) are replaced in the overlay by the newest release that accepts them,
never one below the test stack's own floor (tests/requirements.txt).

Then, in the overlay: a file with a tensor of every dtype the pack's safetensors reader accepts
is read through the pack's loader, and pytest runs the tests that import the pack and use every
huggingface_hub and safetensors call site of it (``TESTS``; test paths given on the command
line replace them), less the tests of features that huggingface_hub releases newer than the
floor add and the pack takes when present (``NEWER_FEATURE_TESTS``; ``--strict`` keeps them).
The exit status is pytest's (1 if the dtype probe failed; 3 when the overlay could not be made).

tests/conftest.py needs a ComfyUI: pass ``COMFYUI_PATH`` in the environment, which reaches the
tests unchanged. ``--floor NAME==VERSION`` tests another version than requirements.txt states
(to find a floor: run it with the release below, and see it fail).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("dependency_floors")

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "requirements.txt"
TEST_REQUIREMENTS = REPO / "tests" / "requirements.txt"
PYPROJECT = REPO / "pyproject.toml"
# The pack's import (by its commands and by ComfyUI, in both orders), downloads through
# huggingface_hub (listing, resumed and forced transfers, errors, offline mode, progress bars,
# the command and the node), and safetensors: headers, memory-mapped and copied loads, damaged
# files, the loader nodes and the checkpoint export (ComfyUI's writer).
TESTS = ["tests/test_one_pack_copy.py", "tests/test_download.py", "tests/test_bad_input.py",
         "tests/test_loader_nodes.py"]
# Tests of what newer huggingface_hub releases add and the pack takes when it is there: below
# that release they are left out (``--strict`` runs them too), as what the pack does instead is
# tested by others. (distribution, release that brings it, test, what the pack does before it)
NEWER_FEATURE_TESTS = [
    ("huggingface_hub", "1.1.0", "tests/test_download.py::test_progress_follows_the_bytes_inside_a_file",
     "hf_hub_download(tqdm_class=...) arrives in 1.1.0; before, progress moves once per file"),
    ("huggingface_hub", "1.1.0", "tests/test_download.py::test_download_node",
     "its progress bar moves inside a file only with hf_hub_download(tqdm_class=...), from 1.1.0"),
    ("huggingface_hub", "1.20.0", "tests/test_download.py::test_a_dropped_transfer_resumes_with_a_range_request",
     "huggingface_hub resumes a transfer cut mid-file within the call from 1.20.0; before, the call fails "
     "and the next one resumes it (test_a_later_call_keeps_what_an_earlier_one_verified)"),
]
PTH_NAME = "_dependency_floors_base.pth"
SETUP_FAILED = 3
FLOOR = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*(?P<version>[0-9][0-9A-Za-z.+!-]*)")
# pip check: "transformers 5.2.0 has requirement huggingface-hub>=1.0, but you have huggingface-hub 0.25.0."
CONFLICT = re.compile(r"(?P<dist>\S+) (?P<version>\S+) has requirement (?P<requirement>.+), "
                      r"but you have (?P<dep>\S+) (?P<have>\S+)\.")

# Run by the overlay's interpreter: where each distribution is imported from, and its version.
PROBE_VERSIONS = """
import importlib, importlib.metadata as md, json, sys
out = {}
for dist, module in json.loads(sys.argv[1]).items():
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        out[dist] = {"error": f"{type(e).__name__}: {e}"}
        continue
    out[dist] = {"metadata": md.version(dist), "attribute": getattr(mod, "__version__", None),
                 "file": getattr(mod, "__file__", None)}
print(json.dumps(out))
"""

# Run by the overlay's interpreter in the checkout: a file with a tensor of every dtype that
# bksdm.files.weights accepts in a header, written byte by byte here (the pack only reads safetensors),
# is read back through the pack's loader (safetensors' safe_open), memory-mapped and copied.
PROBE_DTYPES = """
import json, os, struct, sys, tempfile
import torch
from bksdm.files.weights import DTYPE_BYTES, load_state_dict
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
         "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
         "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
missing = sorted(set(DTYPE_BYTES) - set(TORCH))
assert not missing, f"the probe lacks a torch dtype for {missing}"
tensors = {name: torch.arange(6).reshape(2, 3).to(TORCH[name]) for name in sorted(DTYPE_BYTES)}
header, data = {}, b""
for name, tensor in tensors.items():
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
    header[name] = {"dtype": name, "shape": list(tensor.shape), "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
failed = []
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "dtypes.safetensors")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    for mmap in (True, False):
        try:
            loaded, _ = load_state_dict(path, mmap=mmap)
        except Exception as e:
            failed.append(f"mmap={mmap}: {type(e).__name__}: {e}")
            continue
        for name, tensor in tensors.items():
            got = loaded.get(name)
            if got is None or got.dtype != tensor.dtype or not torch.equal(got.reshape(-1).view(torch.uint8),
                                                                           tensor.reshape(-1).view(torch.uint8)):
                failed.append(f"{name} (mmap={mmap})")
print("every dtype the pack accepts reads back: " + ", ".join(tensors) if not failed else
      "FAILED " + "; ".join(failed))
sys.exit(1 if failed else 0)
"""

# Run by the overlay's interpreter: what each distribution it imports requires (extras left out).
PROBE_REQUIRES = """
import importlib.metadata as md, json, re
def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()
graph = {}
for dist in md.distributions():
    name = canonical(dist.metadata["Name"] or "")
    if not name or name in graph:
        continue
    graph[name] = sorted({canonical(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in dist.requires or ()
                          if "extra" not in r.partition(";")[2]})
print(json.dumps(graph))
"""


class SetupError(Exception):
    """The overlay could not be made or does not hold what it must."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple[int, ...]:
    """The release numbers of a plain version, trailing zeros dropped ('0.25' and '0.25.0' -> (0, 25))."""
    release = [int(part) for part in re.findall(r"\d+", re.split(r"[+a-z]", version.lower())[0])]
    while release and release[-1] == 0:
        release.pop()
    return tuple(release)


def read_floors(path: Path = REQUIREMENTS) -> dict[str, str]:
    """{name: floor} of a requirements file whose every requirement is ``name>=floor``."""
    floors = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = FLOOR.fullmatch(text)
        if match is None:
            raise SetupError(f"{path.name}:{number}: {text!r} is not 'name>=floor'")
        floors[match.group("name")] = match.group("version")
    if not floors:
        raise SetupError(f"{path} states no requirement")
    return floors


def stack_bounds(path: Path = TEST_REQUIREMENTS) -> dict[str, str]:
    """{canonical name: requirement} of the test stack (diffusers>=0.30, transformers>=4.45...): the
    oldest releases the tests support, below which a package replaced in the overlay must not go."""
    bounds = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        text = line.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*[<>=!~]", text)
        if match:
            bounds[canonical(match.group(1))] = text
    return bounds


def pyproject_dependencies(path: Path = PYPROJECT) -> list[str] | None:
    try:
        import tomllib
    except ImportError:  # Python 3.10: not checked
        return None
    with open(path, "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def comfyui_requirements() -> dict[str, str]:
    """{canonical name: requirement line} of the ComfyUI in COMFYUI_PATH, if there is one."""
    path = Path(os.environ.get("COMFYUI_PATH", "")) / "requirements.txt"
    if not os.environ.get("COMFYUI_PATH") or not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", text)
        if match:
            found[canonical(match.group(0))] = text
    return found


def host_floor(requirement: str) -> str | None:
    match = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", requirement)
    return match.group(1) if match else None


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    log.debug("$ %s", " ".join(map(str, command)))
    return subprocess.run([str(c) for c in command], text=True, **kwargs)


def python_of(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        python = venv / "Scripts" / "python.exe"
    if not python.exists():
        raise SetupError(f"{venv} is not a virtual environment (no bin/python)")
    return python


def site_packages(python: Path) -> list[str]:
    code = "import json, sysconfig; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))"
    paths = json.loads(run([python, "-c", code], capture_output=True, check=True).stdout)
    return list(dict.fromkeys(paths))


def make_overlay(base: Path, overlay: Path) -> Path:
    """A fresh virtual environment that sees ``base``'s packages after its own."""
    if overlay.exists():
        if not (overlay / "pyvenv.cfg").is_file():
            raise SetupError(f"{overlay} exists and is no virtual environment: not replacing it")
        shutil.rmtree(overlay)
    base_python = python_of(base)
    # No pip of its own: the test environment's pip, seen through the .pth, installs into the overlay.
    run([base_python, "-m", "venv", "--without-pip", overlay], check=True)
    python = python_of(overlay)
    own = site_packages(python)
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site_packages(base_python)]
    Path(own[0], PTH_NAME).write_text("".join(lines))
    return python


def pip_install(python: Path, requirements: list[str]) -> None:
    result = run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--only-binary=:all:",
                  *requirements], capture_output=True)
    for line in result.stdout.splitlines():
        if line.startswith(("Successfully installed", "Collecting", "  Not uninstalling")):
            log.info("pip: %s", line.strip())
    if result.returncode != 0:
        raise SetupError(f"pip install {' '.join(requirements)} failed:\n"
                         f"{result.stdout[-3000:]}{result.stderr[-3000:]}")


def conflicts(python: Path, moved: set[str]) -> dict[str, str]:
    """{distribution: what it refuses} for every distribution the overlay sees whose requirement
    on a package the overlay holds (``moved``: canonical names) that version does not meet."""
    result = run([python, "-m", "pip", "check", "--disable-pip-version-check"], capture_output=True)
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = CONFLICT.fullmatch(line.strip())
        if match and canonical(match.group("dep")) in moved:
            why = f"{match.group('requirement')}, not {match.group('dep')} {match.group('have')}"
            dist = canonical(match.group("dist"))
            found[dist] = f"{found[dist]}; {why}" if dist in found else \
                f"{match.group('dist')} {match.group('version')} needs {why}"
    return found


def requirements_graph(python: Path) -> dict[str, set[str]]:
    """{canonical name: the canonical names it requires} of each distribution the overlay imports
    (the first of a name on sys.path), extras left out."""
    result = run([python, "-c", PROBE_REQUIRES], capture_output=True, cwd="/")
    if result.returncode != 0:
        raise SetupError(f"could not read the overlay's distributions:\n{result.stderr[-3000:]}")
    return {name: set(requires) for name, requires in json.loads(result.stdout).items()}


def replace_refusing(python: Path, pins: list[str], moved: set[str]) -> dict[str, str]:
    """Replaces, in the overlay, the test environment's packages that refuse the floors by the
    newest release that accepts them; returns {name: why} of those replaced.

    Only the outermost of them are asked for (transformers, not the kernels package that only
    transformers' newest release needs): pip brings the dependencies their older releases need,
    and a refusing package that nothing the overlay imports requires any more is left alone.
    None goes below the test stack's own floor (tests/requirements.txt)."""
    replaced: dict[str, str] = {}
    deferred: set[str] = set()
    bounds = stack_bounds()
    for _ in range(5):  # each round may move a package that another one of the test environment needs newer
        refusing = {d: why for d, why in conflicts(python, moved).items() if d not in replaced}
        graph = requirements_graph(python)
        for dist in sorted(deferred & set(refusing)):
            if not any(dist in graph[d] for d in graph if d != dist):
                log.info("not replacing it, as nothing in the overlay requires it now: %s", refusing.pop(dist))
        if not refusing:
            return replaced
        roots = {d: why for d, why in refusing.items()
                 if not any(d in graph.get(other, ()) for other in refusing if other != d)}
        deferred |= set(refusing) - set(roots)
        for why in roots.values():
            log.info("the test environment's %s: replacing it in the overlay", why)
        pip_install(python, [*pins, *(bounds.get(d, d) for d in [*replaced, *roots])])
        replaced.update(roots)
        moved |= set(roots)
    raise SetupError("pip check still reports packages that refuse the floors: "
                     + "; ".join(conflicts(python, moved).values()))


def installed_versions(python: Path, modules: dict[str, str]) -> dict[str, dict]:
    result = run([python, "-c", PROBE_VERSIONS, json.dumps(modules)], capture_output=True, cwd="/")
    if result.returncode != 0:
        raise SetupError(f"could not import in the overlay:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def module_of(dist: str) -> str:
    return canonical(dist).replace("-", "_")


def build(args) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The overlay: its python, the floors it holds and the test environment's packages it replaces."""
    floors = read_floors()
    dependencies = pyproject_dependencies()
    if dependencies is not None and sorted(dependencies) != sorted(f"{n}>={v}" for n, v in floors.items()):
        raise SetupError(f"pyproject.toml's dependencies {dependencies} are not requirements.txt's "
                         f"{[f'{n}>={v}' for n, v in floors.items()]}")
    for override in args.floor:
        name, _, version = override.partition("==")
        match = [n for n in floors if canonical(n) == canonical(name)]
        if not version or not match:
            raise SetupError(f"--floor {override}: expected NAME==VERSION of one of {', '.join(floors)}")
        log.warning("testing %s %s instead of the stated floor %s", match[0], version, floors[match[0]])
        floors[match[0]] = version
    base = Path(args.venv).absolute()
    overlay = Path(args.overlay).absolute() if args.overlay else base.with_name(base.name + "-floors")
    log.info("overlay %s over the test environment %s", overlay, base)
    python = make_overlay(base, overlay)
    pins = [f"{name}=={version}" for name, version in floors.items()]
    pip_install(python, pins)
    replaced = replace_refusing(python, pins, {canonical(n) for n in floors})
    modules = {name: module_of(name) for name in [*floors, *replaced]}
    found = installed_versions(python, modules)
    own = site_packages(python)
    for name, version in floors.items():
        info = found[name]
        if "error" in info:
            raise SetupError(f"{name} {version} does not import in the overlay: {info['error']}")
        where = info["file"] or ""
        same = {version_key(v) for v in (info["metadata"], info["attribute"] or info["metadata"])} == {
            version_key(version)}
        if not same or not where.startswith(own[0]):
            raise SetupError(f"the overlay imports {name} {info['attribute'] or info['metadata']} from {where}, "
                             f"not {version} from its own {own[0]}: the floor does not shadow the test environment")
        log.info("the overlay imports %s %s from %s", name, info["attribute"] or info["metadata"], where)
    versions = {name: found[name].get("metadata", found[name].get("error")) for name in replaced}
    report_host(floors, versions)
    return python, floors, versions


def report_host(floors: dict[str, str], replaced: dict[str, str]) -> None:
    """Says where the ComfyUI in COMFYUI_PATH asks for more than the floors allow."""
    host = comfyui_requirements()
    for name, version in [*floors.items(), *replaced.items()]:
        requirement = host.get(canonical(name))
        wanted = host_floor(requirement) if requirement else None
        if wanted and version_key(wanted) > version_key(version):
            log.warning("ComfyUI at %s requires %s; %s %s here is older: with that ComfyUI the effective floor "
                        "is higher than the pack's", os.environ["COMFYUI_PATH"], requirement, name, version)


def summary(floors: dict[str, str], replaced: dict[str, str]) -> str:
    text = "floors tested: " + ", ".join(f"{n}=={v}" for n, v in floors.items())
    if replaced:
        text += " (with " + ", ".join(f"{n} {v}" for n, v in replaced.items()) + " in place of the test environment's)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--venv", required=True, help="the test environment (torch, ComfyUI's requirements, pytest)")
    parser.add_argument("--overlay", help="where to make the overlay environment (default: <venv>-floors)")
    parser.add_argument("--floor", action="append", default=[], metavar="NAME==VERSION",
                        help="test this version instead of requirements.txt's floor (repeatable)")
    parser.add_argument("--strict", action="store_true",
                        help="also run the tests of features newer huggingface_hub releases add (NEWER_FEATURE_TESTS)")
    args, pytest_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="dependency_floors: %(message)s")
    try:
        python, floors, replaced = build(args)
    except (SetupError, subprocess.CalledProcessError, OSError) as e:
        log.error("%s", e)
        return SETUP_FAILED
    log.info("%s", summary(floors, replaced))
    env = {**os.environ, "VIRTUAL_ENV": str(python.parent.parent),
           "PATH": os.pathsep.join([str(python.parent), os.environ.get("PATH", "")])}
    env.pop("PYTHONHOME", None)
    probe = run([python, "-c", PROBE_DTYPES], cwd=REPO, env=env, capture_output=True)
    log.info("safetensors probe: %s", (probe.stdout.strip() or probe.stderr.strip()[-2000:]))
    tests = [a for a in pytest_args if not a.startswith("-") and (a.startswith("tests") or a.endswith(".py"))]
    command = [python, "-m", "pytest", *([] if tests else TESTS), *pytest_args]
    for dist, release, test, reason in NEWER_FEATURE_TESTS:
        if not args.strict and dist in floors and version_key(floors[dist]) < version_key(release):
            log.info("leaving out %s: %s", test, reason)
            command += ["--deselect", test]
    log.info("$ %s", " ".join(map(str, command)))
    code = run(command, cwd=REPO, env=env).returncode
    if probe.returncode != 0 and code == 0:
        code = 1
    log.info("%s: %s (pytest exit code %d%s)", summary(floors, replaced), "PASSED" if code == 0 else "FAILED",
             code, "; safetensors probe failed" if probe.returncode else "")
    return code


if __name__ == "__main__":
    sys.exit(main())
