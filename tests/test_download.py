"""Downloading BK-SDM models: real huggingface_hub over real HTTP, against a fake hub on 127.0.0.1.

Nothing of ``bksdm.download`` or huggingface_hub is replaced; faults (dropped connections,
wrong bytes, outages) come from the server (tests/fake_hub.py). The only thing changed is
huggingface_hub's wait between retries (``time.sleep``), so that the outage tests take
milliseconds.
"""

from __future__ import annotations

import ast
import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, bk_sdm_repo
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url

import pack_import
from bksdm.download import MARKER, STAGING_PREFIX, download_model, is_downloaded, manual_steps, parse_repo_id
from bksdm.errors import DownloadError, ModelNotFoundError
from bksdm.files import pipeline
from cli import comfy_host

REPO = Path(__file__).resolve().parents[1]
NOTA = "nota-ai/bk-sdm-small"
NAME = "bk-sdm-small"
UNET_FULL, UNET_HALF = "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"
VAE_FULL, VAE_HALF = "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"
TE_FULL, TE_HALF = "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"
CONFIGS = {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json", "vae/config.json",
           "text_encoder/config.json"}
FP16 = CONFIGS | {UNET_HALF, VAE_HALF, TE_FULL}
FP32 = CONFIGS | {UNET_FULL, VAE_FULL, TE_FULL}
NEVER = (".bin", "safety_checker/", "feature_extractor/", "tokenizer/", "README.md", ".gitattributes")


@pytest.fixture(autouse=True)
def hub_settings(monkeypatch, tmp_path):
    """No token, endpoint or offline switch from the machine; no waits between retries."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT",
                 "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


# A repo whose fp16 U-Net spans a few of huggingface_hub's download chunks: a cut transfer
# resumes from the last whole chunk written, so the file must hold more than one.
BIG = "someone/big-unet"


@pytest.fixture(scope="module")
def hub_repos() -> dict[str, dict[str, bytes]]:
    """The repos' contents, made once: the big U-Net's random values take most of a second."""
    big = bk_sdm_repo(unet_half_values=constants.DOWNLOAD_CHUNK_SIZE * 3 // 2 + 1234)
    return {NOTA: bk_sdm_repo(), BIG: big, "someone/no-half": bk_sdm_repo(fp16=False, text_encoder_fp16_only=True),
            "someone/pickles-only": bk_sdm_repo(safetensors=False), "someone/bk-sdm-small": bk_sdm_repo(),
            "someone/private-bk": bk_sdm_repo()}


@pytest.fixture
def hub(hub_repos):
    with FakeHub(hub_repos, tokens={"someone/private-bk": "hf_secret"}) as fake:
        yield fake


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "models" / "diffusers"


def fetch(hub: FakeHub, root: Path, repo: str = NAME, **kwargs) -> Path:
    return Path(download_model(repo, str(root), endpoint=hub.endpoint, **kwargs))


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER}


def assert_same_as_hub(hub: FakeHub, folder: Path, repo: str = NOTA) -> None:
    for path in files_in(folder):
        assert (folder / path).read_bytes() == hub.file(repo, path).data, path


def assert_no_model(root: Path, name: str = NAME) -> None:
    """Nothing a loader could pick up: no listed folder, no destination folder."""
    assert pipeline.list_model_folders([str(root)]) == []
    with pytest.raises(ModelNotFoundError):
        pipeline.open_model_folder(str(root / name))
    if root.is_dir():
        assert all(entry.startswith(".") for entry in os.listdir(root))


def files_requested(hub: FakeHub) -> set[str]:
    return {r.file for r in hub.requests if r.file}


# -- what a download fetches and where it puts it -----------------------------------------------

def test_download_gives_a_loadable_folder_of_the_needed_files(hub, root):
    reports = []
    folder = fetch(hub, root, progress=lambda done, total: reports.append((done, total)))

    assert folder == root / NAME
    assert files_in(folder) == FP16
    assert_same_as_hub(hub, folder)
    assert pipeline.list_model_folders([str(root)]) == [NAME]
    model = pipeline.open_model_folder(str(folder))
    assert model.is_pipeline
    assert pipeline.weights_file(model, "unet", prefer_half=True).endswith(".fp16.safetensors")
    assert os.listdir(root) == [NAME]  # the staging folder is gone
    total = sum(len(hub.file(NOTA, p).data) for p in FP16)
    assert reports[-1] == (total, total)
    assert all(t == total for _, t in reports) and [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert files_requested(hub) == FP16
    assert hub.requests[0].path == f"/api/models/{NOTA}"
    assert {r.path.split("/resolve/")[1].split("/")[0] for r in hub.requests if "/resolve/" in r.path} == \
        {hub.commits[NOTA]}  # every file from the listed commit


@pytest.mark.parametrize(("weights", "expected"), [("fp16", FP16), ("fp32", FP32), ("both", FP16 | FP32)])
def test_weights_choice_picks_the_files(hub, root, weights, expected):
    folder = fetch(hub, root, weights=weights)
    assert files_in(folder) == expected
    assert files_requested(hub) == expected
    assert not [p for p in files_requested(hub) if any(n in p for n in NEVER)]


def test_missing_half_or_full_files_fall_back_to_what_the_repo_has(hub, root, caplog):
    half = fetch(hub, root / "a", "someone/no-half", weights="fp16")
    assert files_in(half) == CONFIGS | {UNET_FULL, VAE_FULL, TE_HALF}
    with caplog.at_level(logging.WARNING, "bksdm.download"):
        full = fetch(hub, root / "b", "someone/no-half", weights="fp32")
    assert files_in(full) == CONFIGS | {UNET_FULL, VAE_FULL, TE_HALF}
    assert "full-precision" in caplog.text


def test_a_repo_without_safetensors_is_refused_before_any_file(hub, root):
    with pytest.raises(DownloadError) as error:
        fetch(hub, root, "someone/pickles-only")
    assert "pytorch_model.bin" in error.value.found and "safetensors" in error.value.fix
    assert len(hub.requests) == 1  # the listing only
    assert not root.exists()


def test_custom_repo_goes_to_its_name_and_unknown_repo_says_so(hub, root):
    assert fetch(hub, root, "someone/no-half") == root / "no-half"
    with pytest.raises(DownloadError, match="check the repo id"):
        fetch(hub, root, "someone/missing")


def test_hf_endpoint_variable_is_honoured(hub, root, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    assert download_model(NAME, str(root)) == str(root / NAME)
    assert hub.requests


# -- once there: no network, and only missing files later ---------------------------------------

def test_a_complete_folder_is_answered_from_disk(hub, root, monkeypatch):
    folder = fetch(hub, root)
    hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch(hub, root) == folder
    assert is_downloaded(NAME, str(root), "fp16") and not is_downloaded(NAME, str(root), "fp32")
    assert hub.requests == []


def test_asking_for_more_weights_adds_only_the_missing_files(hub, root):
    folder = fetch(hub, root, weights="fp16")
    hub.reset()
    assert fetch(hub, root, weights="both") == folder
    assert files_in(folder) == FP16 | FP32
    assert files_requested(hub) == {UNET_FULL, VAE_FULL}
    assert_same_as_hub(hub, folder)
    assert is_downloaded(NAME, str(root), "both") and os.listdir(root) == [NAME]


def test_a_truncated_file_in_a_finished_folder_is_fetched_again(hub, root):
    folder = fetch(hub, root)
    (folder / UNET_HALF).write_bytes(b"truncated")
    assert not is_downloaded(NAME, str(root))
    hub.reset()
    fetch(hub, root)
    assert files_requested(hub) == {UNET_HALF}
    assert_same_as_hub(hub, folder)


# -- folders the pack did not make are never overwritten ----------------------------------------

def test_a_complete_folder_made_by_hand_is_used_as_it_is(hub, root, tmp_path):
    shutil.copytree(fetch(hub, tmp_path / "elsewhere"), root / NAME)
    (root / NAME / MARKER).unlink()
    hub.reset()
    assert fetch(hub, root) == root / NAME
    assert hub.requests == []


def test_an_incomplete_folder_made_by_hand_is_left_alone(hub, root):
    (root / NAME).mkdir(parents=True)
    (root / NAME / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="never overwrites"):
        fetch(hub, root)
    assert os.listdir(root / NAME) == ["notes.txt"] and hub.requests == []


def test_a_folder_of_another_repo_with_the_same_name_is_left_alone(hub, root):
    fetch(hub, root, "someone/bk-sdm-small")
    with pytest.raises(DownloadError, match="someone/bk-sdm-small"):
        fetch(hub, root, NAME)


def test_an_empty_folder_is_filled(hub, root):
    (root / NAME).mkdir(parents=True)
    assert files_in(fetch(hub, root)) == FP16


# -- interrupted and damaged transfers ----------------------------------------------------------

def range_start(request) -> int:
    return int(re.fullmatch(r"bytes=(\d+)-", request.headers["range"]).group(1))


def test_a_dropped_transfer_resumes_with_a_range_request(hub, root):
    size = len(hub.file(BIG, UNET_HALF).data)
    hub.faults.drop_after[UNET_HALF] = size // 2
    folder = fetch(hub, root, BIG)
    first, second = hub.gets(UNET_HALF)
    assert "range" not in first.headers
    # From where the bytes that arrived end (a client may lose the last partial read, never more).
    assert size // 4 <= range_start(second) <= size // 2
    assert hashlib.sha256((folder / UNET_HALF).read_bytes()).hexdigest() == hub.file(BIG, UNET_HALF).sha256


def test_a_later_call_keeps_what_an_earlier_one_verified(hub, root):
    """Across calls huggingface_hub keeps whole files: from 1.20 on it deletes a cut file's
    process-unique temporary when the transfer fails (earlier releases leave a ``.incomplete``
    file, which the next call continues with a Range request). The verified files stay."""
    size = len(hub.file(BIG, UNET_HALF).data)
    hub.faults.drop_after[UNET_HALF] = size // 2
    hub.faults.down_after_drop = True
    with pytest.raises(DownloadError, match="keeps the files already verified"):
        fetch(hub, root, BIG)
    assert_no_model(root, "big-unet")
    staging = root / (STAGING_PREFIX + "big-unet")
    verified = set(json.loads((staging / MARKER).read_text())["files"])
    assert verified and UNET_HALF not in verified
    partials = list(staging.glob(".cache/huggingface/download/unet/*.incomplete"))
    kept = partials[0].stat().st_size if partials else 0
    hub.reset()
    folder = fetch(hub, root, BIG)
    assert [r.headers.get("range") for r in hub.gets(UNET_HALF)] == [f"bytes={kept}-" if kept else None]
    assert not files_requested(hub) & verified
    assert files_requested(hub) | verified == FP16
    assert_same_as_hub(hub, folder, BIG)


def test_progress_follows_the_bytes_inside_a_file(hub, root):
    """huggingface_hub's own progress feeds the callback: a file of several chunks reports as it arrives."""
    reports = []
    fetch(hub, root, BIG, progress=lambda done, total: reports.append(done))
    unet = len(hub.file(BIG, UNET_HALF).data)
    steps = [b - a for a, b in itertools.pairwise(reports) if b > a]
    assert max(steps) < unet  # the U-Net arrived in more than one report
    assert reports[-1] == sum(len(hub.file(BIG, p).data) for p in FP16)


@pytest.mark.parametrize("path", [UNET_HALF, "unet/config.json"])  # checked by sha256 / by git blob id
def test_wrong_bytes_are_detected_and_fetched_again(hub, root, path):
    hub.faults.corrupt[path] = 1
    folder = fetch(hub, root)
    assert len(hub.gets(path)) == 2
    assert_same_as_hub(hub, folder)


def test_wrong_bytes_twice_fail_without_leaving_a_model(hub, root):
    hub.faults.corrupt[UNET_HALF] = 2
    with pytest.raises(DownloadError, match="sha256"):
        fetch(hub, root)
    assert_no_model(root)
    hub.reset()
    assert_same_as_hub(hub, fetch(hub, root))
    assert len(hub.gets(UNET_HALF)) == 1 and len(hub.gets(TE_FULL)) == 0  # verified files were kept


@pytest.mark.parametrize("outage", [True, False], ids=["network-gone-from-k", "only-request-k-fails"])
def test_an_interruption_at_any_request_never_leaves_a_model_and_is_completed_later(hub, tmp_path, outage):
    fetch(hub, tmp_path / "clean")
    count = len(hub.requests)
    for k in range(1, count + 1):
        root = tmp_path / f"k{k}"
        hub.reset()
        if outage:
            hub.faults.fail_from = k
        else:
            hub.faults.fail_only = k
        verified = []
        try:
            fetch(hub, root)
        except DownloadError:
            assert_no_model(root)
            marker = root / (STAGING_PREFIX + NAME) / MARKER
            verified = json.loads(marker.read_text())["files"] if marker.exists() else []
        else:
            assert not outage
        hub.reset()
        folder = fetch(hub, root)
        assert files_in(folder) == FP16 and os.listdir(root) == [NAME], k
        assert_same_as_hub(hub, folder)
        fetched = [r.file for r in hub.requests if r.file and r.method == "GET"
                   and (r.server == "cdn" or not r.file.endswith(".safetensors"))]
        assert len(fetched) == len(set(fetched)), k  # nothing fetched twice
        assert not set(fetched) & set(verified), k  # nor again what the interrupted call had verified


def test_no_module_of_the_pack_speaks_http_to_the_hub():
    """Every byte from the hub moves through huggingface_hub: no HTTP client in the pack's code
    (cli/remote.py is the client of a running ComfyUI server's API, not of the hub)."""
    clients = {"urllib", "http", "requests", "httpx", "httpx2", "aiohttp", "socket", "ssl", "urllib3"}
    offenders = []
    pack = [*REPO.glob("*.py"), *(p for folder in ("bksdm", "nodes", "cli") for p in (REPO / folder).rglob("*.py"))]
    for path in sorted(pack):
        if path == REPO / "cli" / "remote.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in clients]
    assert offenders == []


# -- offline, unreachable, refused names, tokens ------------------------------------------------

def test_offline_mode_explains_the_manual_steps_without_a_request(hub, root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as error:
        fetch(hub, root)
    text = str(error.value)
    assert hub.requests == []
    assert "offline" in error.value.found
    assert f"{hub.endpoint}/{NOTA}/tree/main" in text
    for line in (str(root / NAME) + os.sep, "  scheduler/", "    scheduler_config.json", "  unet/", "    config.json",
                 "    diffusion_pytorch_model.fp16.safetensors", "  text_encoder/", "    model.safetensors"):
        assert any(row.strip().startswith(line.strip()) for row in text.splitlines()), line
    assert not root.exists()
    assert f"https://huggingface.co/{NOTA}/tree/main" in manual_steps(NOTA, "x", "fp16")


def test_an_unreachable_hub_explains_the_manual_steps(root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(DownloadError, match="no connection") as error:
        download_model(NAME, str(root), endpoint=closed)
    assert "model_index.json" in error.value.fix and "tree/main" in error.value.fix


BAD_IDS = ["", ".", "..", "../bk-sdm-small", "nota-ai/..", "nota-ai/../../etc", "/etc/passwd", "/bk-sdm-small",
           "nota-ai/", "nota-ai//x", "nota-ai/bk-sdm-small/unet", "nota-ai\\bk-sdm-small", "C:\\models\\x",
           "https://huggingface.co/nota-ai/bk-sdm-small", "hf://nota-ai/bk-sdm-small", "~/models", "owner/.hidden",
           "owner/name.", "owner/-name", "owner/na--me", "owner/na..me", "owner/name\n", " owner/name",
           "owner/na me", "owner/name?x=1", "owner/name#x", "owner/%2e%2e", "owner/" + "x" * 97, None]


@pytest.mark.parametrize("repo_id", BAD_IDS)
def test_repo_ids_with_path_tricks_are_refused_before_any_request(hub, root, repo_id):
    with pytest.raises(DownloadError) as error:
        fetch(hub, root, repo_id)
    assert "owner/name" in error.value.expected
    assert hub.requests == [] and not root.exists()


def test_accepted_names():
    assert parse_repo_id("bk-sdm-small") == (NOTA, NAME)
    assert parse_repo_id(NOTA) == (NOTA, NAME)
    assert parse_repo_id("segmind/tiny-sd") == ("segmind/tiny-sd", "tiny-sd")
    assert parse_repo_id("some-one/My.Model_v2") == ("some-one/My.Model_v2", "My.Model_v2")


def test_hf_token_is_sent_as_bearer_to_the_hub_only(hub, root, monkeypatch):
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        fetch(hub, root, "someone/private-bk")
    hub.reset()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fetch(hub, root, "someone/private-bk")
    assert all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub.requests if r.server == "hub")
    assert [r for r in hub.requests if r.server == "cdn"]
    assert not [r for r in hub.requests if r.server == "cdn" and "authorization" in r.headers]  # not to the CDN
    hub.reset()
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    fetch(hub, root / "again", "someone/private-bk", token="hf_secret")  # the argument wins
    assert hub.requests[0].headers["authorization"] == "Bearer hf_secret"


def test_the_fake_hub_answers_huggingface_hubs_own_download(hub, tmp_path):
    """The fake speaks the protocol: huggingface_hub's HEAD metadata and hf_hub_download work against it."""
    meta = get_hf_file_metadata(hf_hub_url(NOTA, UNET_HALF, endpoint=hub.endpoint))
    lfs = hub.file(NOTA, UNET_HALF)
    assert (meta.size, meta.etag, meta.commit_hash) == (len(lfs.data), lfs.sha256, hub.commits[NOTA])
    for path in (UNET_HALF, "unet/config.json"):
        local = hf_hub_download(NOTA, path, endpoint=hub.endpoint, local_dir=tmp_path / "hf")
        assert Path(local).read_bytes() == hub.file(NOTA, path).data


# -- the command ----------------------------------------------------------------------------------

def test_command_downloads_to_dest_and_fails_with_exit_code_1(hub, root, monkeypatch, capsys, caplog):
    from cli.download import main

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    with caplog.at_level(logging.INFO):
        assert main([NAME, "--dest", str(root), "--weights", "fp32"]) == 0
    assert capsys.readouterr().out == f"{root / NAME}\n"
    assert files_in(root / NAME) == FP32
    assert "100 %" in caplog.text
    assert main(["../evil", "--dest", str(root)]) == 1
    assert "owner/name" in caplog.text


def test_command_bar_counts_the_requests_bytes(hub, root):
    from cli.download import ProgressBar

    screen = io.StringIO()
    bar = ProgressBar(BIG, file=screen)
    folder = fetch(hub, root, BIG, progress=bar)
    bar.close()
    total = sum(len(hub.file(BIG, p).data) for p in files_in(folder))
    assert bar.bar.n == bar.bar.total == total
    assert BIG in screen.getvalue() and "100%" in screen.getvalue()


def test_command_defaults_to_comfyuis_diffusers_folder_with_extra_model_paths(hub, tmp_path):
    real = comfy_host.find_comfyui()
    comfy = tmp_path / "ComfyUI"  # a checkout of its own, so its models folder is the test's
    comfy.mkdir()
    for name in ("main.py", "nodes.py", "folder_paths.py"):  # copied: folder_paths finds models/ beside itself
        shutil.copy(real / name, comfy / name)
    for name in ("comfy", "utils"):
        (comfy / name).symlink_to(real / name, target_is_directory=True)
    elsewhere = tmp_path / "shared-models"
    (comfy / "extra_model_paths.yaml").write_text(
        f"shared:\n  base_path: {elsewhere}\n  is_default: true\n  diffusers: diffusers\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COMFYUI_PATH"))}
    env |= {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home")}
    run = subprocess.run([sys.executable, str(REPO), "download", NAME, "--comfyui", str(comfy)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(elsewhere / "diffusers" / NAME)
    assert files_in(elsewhere / "diffusers" / NAME) == FP16
    assert not (comfy / "models" / "diffusers" / NAME).exists()


# -- the node -------------------------------------------------------------------------------------

@pytest.fixture
def download_node():
    """The node class, imported as ComfyUI imports the pack (``nodes`` inside the pack package)."""
    return pack_import.pack_module("nodes.download").DownloadNode


@pytest.mark.host
def test_download_node(hub, root, monkeypatch, download_node):
    import comfy.utils
    import folder_paths

    info = download_node.GET_NODE_INFO_V1()
    assert info["category"] == "loaders/BK-SDM" and info["description"] and info["output_node"]
    assert info["display_name"] == "Download BK-SDM Model" and info["output"] == ["STRING"]
    assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())
    assert info["input"]["required"]["variant"][1]["options"][-1] == "custom"

    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusers", ([str(root)], {"folder"}))
    bars = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: bars.append((value, total)))
    inputs = {"variant": "custom", "repo_id": f" {BIG} ", "weights": "fp16"}
    before = download_node.fingerprint_inputs(**inputs)
    output = download_node.execute(**inputs)
    assert output.args == ("big-unet",)
    assert "big-unet" in output.ui.as_dict()["text"][0]
    total = sum(len(hub.file(BIG, p).data) for p in files_in(root / "big-unet"))
    assert bars[-1] == (total, total)
    # huggingface_hub's byte progress reaches the bar: it moves inside a file, not only between files.
    order = sorted(FP16, key=lambda p: (p == pipeline.PIPELINE_INDEX, p))  # the order of the download
    between_files = set(itertools.accumulate((len(hub.file(BIG, p).data) for p in order), initial=0))
    assert any(value not in between_files for value, _ in bars)
    after = download_node.fingerprint_inputs(**inputs)
    assert before != after == download_node.fingerprint_inputs(**inputs)  # stable once downloaded


# -- the main job ---------------------------------------------------------------------------------

@pytest.mark.host
def test_main_job_downloads_a_missing_registry_model_then_loads_it(hub, tmp_path, host):
    """cli.txt2img with a registry name that is not on disk downloads it into the first diffusers
    folder, then runs the workflow on it (the fake hub's tiny weights are refused by the loader,
    by name, which proves the workflow got as far as loading the downloaded folder)."""
    base = tmp_path / "comfy-base"
    (base / "custom_nodes").mkdir(parents=True)  # what a base directory holds: ComfyUI's start-up lists it
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "COMFYUI_PATH": str(host.path),
           "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(REPO), "txt2img", "a fox", "--model", NAME, "-o", str(tmp_path / "x.png"),
                          f"--comfy-arg=--base-directory={base}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    folder = base / "models" / "diffusers" / NAME
    assert files_in(folder) == FP16
    assert run.returncode == 1
    assert "weights do not match" in run.stderr and str(folder / "unet") in run.stderr
