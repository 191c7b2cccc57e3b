"""Bad input at every entry point: one clear error (file, expected, found, fix), nothing
written, no code run from model files, the server still up afterwards."""

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import graphs
import pytest
import torch
from factories import unet_config
from safetensors.torch import save_file

from bksdm.errors import (
    BKSDMError,
    InvalidFileError,
    ModelNotFoundError,
    UnsupportedModelError,
    WeightsMismatchError,
)
from bksdm.files import components, pipeline
from bksdm.files.weights import load_state_dict

REPO = Path(__file__).resolve().parents[1]


def assert_clear(error: BaseException, *names: str):
    """A message with all four parts (what, expected, found, fix) that names ``names``."""
    text = str(error)
    for part in ("BK-SDM:", "expected:", "found:", "fix:", *names):
        assert part in text, f"{part!r} not in {text}"


# --- weight files -----------------------------------------------------------------------


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)},
              str(path))
    return path


def _rewrite_header(path: Path, change) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    change(header)
    new = json.dumps(header).encode()
    new += b" " * (length - len(new)) if len(new) <= length else b""
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + length:])


def test_a_valid_file_loads_and_casts(weights):
    state, _ = load_state_dict(weights, torch.float16)
    assert torch.equal(state["a"], torch.arange(6, dtype=torch.float16).reshape(2, 3))
    assert state["a"].dtype == torch.float16 and state["b"].dtype == torch.float16


def test_without_mmap_the_tensors_do_not_follow_the_file(weights):
    """ComfyUI's --disable-mmap: every tensor copied out, so rewriting the file in place changes nothing."""
    state, _ = load_state_dict(weights, mmap=False)
    (length,) = struct.unpack("<Q", weights.read_bytes()[:8])
    with open(weights, "r+b") as f:
        f.seek(8 + length)
        f.write(bytes(weights.stat().st_size - 8 - length))
    assert torch.equal(state["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(state["b"], torch.ones(4, dtype=torch.float16))


@pytest.mark.parametrize("damage", ["truncated", "empty", "header longer than file", "not json", "lying shape",
                                    "lying offsets", "overlap", "unknown dtype", "trailing bytes", "not a file"])
def test_damaged_safetensors_are_refused_by_name(damage, weights):
    raw = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(raw[:-5])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "header longer than file":
        weights.write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    elif damage == "not json":
        weights.write_bytes(raw[:8] + b"\xff" * (len(raw) - 8))
    elif damage == "lying shape":
        _rewrite_header(weights, lambda h: h["a"].update(shape=[200, 300]))
    elif damage == "lying offsets":
        _rewrite_header(weights, lambda h: h["a"].update(data_offsets=[0, 10**6]))
    elif damage == "overlap":
        _rewrite_header(weights, lambda h: h["b"].update(data_offsets=[0, 8]))
    elif damage == "unknown dtype":
        _rewrite_header(weights, lambda h: h["a"].update(dtype="Q7"))
    elif damage == "trailing bytes":
        weights.write_bytes(raw + b"extra")
    else:
        weights.unlink()
        weights.mkdir()
    with pytest.raises(InvalidFileError) as raised:
        load_state_dict(weights)
    assert_clear(raised.value, str(weights))


class RunsCode:
    """What a malicious checkpoint pickles: unpickling it would call exec()."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, legacy):
    marker, path = tmp_path / "pwned", tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"weight": torch.ones(2), "payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(InvalidFileError) as raised:
        load_state_dict(path)
    assert_clear(raised.value, str(path), "refused, not executed")
    assert not marker.exists()
    pickle.loads(pickle.dumps(raised.value))  # the error itself crosses process boundaries intact


def test_errors_take_their_four_fields_by_name_and_keep_them_across_processes():
    with pytest.raises(TypeError):
        UnsupportedModelError("a.safetensors", "x", "y", "z")  # positional fields are easy to swap: refused
    error = UnsupportedModelError(path="a.safetensors", expected="x", found="y", fix="z")
    crossed = pickle.loads(pickle.dumps(error))
    assert (type(crossed), crossed.path, crossed.expected, crossed.found, crossed.fix) == (
        UnsupportedModelError, "a.safetensors", "x", "y", "z")
    assert str(crossed) == str(error)


def test_a_plain_tensor_pickle_still_loads(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(load_state_dict(path)[0]["w"], torch.ones(3))


# --- model folders --------------------------------------------------------------------


def _linked_copy(source: Path, target: Path, replace: dict[str, bytes] | None = None) -> Path:
    """A model folder of symlinks to ``source``'s files (gigabytes not copied), some replaced."""
    for file in source.rglob("*"):
        if file.is_file():
            dest = target / file.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            rel = str(file.relative_to(source))
            if replace and rel in replace:
                dest.write_bytes(replace[rel])
            else:
                dest.symlink_to(file)
    return target


def test_folder_errors_before_any_weight_is_read(tmp_path):
    with pytest.raises(ModelNotFoundError) as raised:
        pipeline.open_model_folder(str(tmp_path / "missing"))
    assert_clear(raised.value, "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="nothing in it"):
        pipeline.open_model_folder(str(tmp_path / "empty"))
    sdxl = tmp_path / "sdxl"
    sdxl.mkdir()
    (sdxl / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline", "unet": []}))
    with pytest.raises(UnsupportedModelError, match="SDXL"):
        pipeline.open_model_folder(str(sdxl))
    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline", "transformer": []}))
    with pytest.raises(UnsupportedModelError, match="transformer-based"):
        pipeline.open_model_folder(str(sd3))


@pytest.mark.parametrize("name", ["../escape", "/etc", "a/../../b", ".hidden", "", "..\\windows"])
def test_folder_names_that_escape_the_model_folders_are_refused(name, tmp_path):
    with pytest.raises(ModelNotFoundError) as raised:
        pipeline.resolve_model_folder(name, [str(tmp_path)])
    assert_clear(raised.value)


@pytest.fixture
def sd1_folder(sd1_pipeline, tmp_path):
    return lambda name, replace=None: _linked_copy(sd1_pipeline.path, tmp_path / name, replace)


def test_config_and_weights_that_disagree_name_both_layouts(sd1_folder):
    base = json.dumps(unet_config("v1_bk_base")).encode()
    folder = pipeline.open_model_folder(str(sd1_folder("says-base", {"unet/config.json": base})))
    with pytest.raises(WeightsMismatchError) as raised:
        components.load_unet(folder, prefer_half=False)
    assert_clear(raised.value, "config.json", "base", "small")


def test_missing_and_empty_sub_files(sd1_folder):
    folder = sd1_folder("no-unet-weights")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        (folder / "unet" / name).unlink()
    with pytest.raises(ModelNotFoundError) as raised:
        components.load_unet(pipeline.open_model_folder(str(folder)), prefer_half=False)
    assert_clear(raised.value, "unet", "diffusion_pytorch_model.safetensors")
    empty = sd1_folder("empty-vae", {"vae/diffusion_pytorch_model.safetensors": b""})
    with pytest.raises(InvalidFileError, match="empty file"):
        components.load_vae(pipeline.open_model_folder(str(empty)), prefer_half=False)
    broken = sd1_folder("broken-config", {"unet/config.json": b"{\"block_out_channels\": "})
    with pytest.raises(BKSDMError, match=r"config\.json"):
        components.read_unet_spec(pipeline.open_model_folder(str(broken)))


def test_truncated_unet_is_refused_before_loading(sd1_folder, sd1_pipeline):
    unet = sd1_pipeline.path / "unet" / "diffusion_pytorch_model.safetensors"
    with open(unet, "rb") as f:
        head = f.read(1 << 20)  # a download that stopped after 1 MB
    folder = sd1_folder("truncated", {"unet/diffusion_pytorch_model.safetensors": head})
    with pytest.raises(InvalidFileError) as raised:
        components.load_unet(pipeline.open_model_folder(str(folder)), prefer_half=False)
    assert_clear(raised.value, "diffusion_pytorch_model.safetensors")


def test_a_pickled_unet_that_would_run_code_is_refused_by_the_loader(sd1_folder, tmp_path):
    folder = sd1_folder("evil")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        (folder / "unet" / name).unlink()
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": RunsCode(marker)}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(InvalidFileError, match="refused, not executed"):
        components.load_unet(pipeline.open_model_folder(str(folder)), prefer_half=False)
    assert not marker.exists()


# --- the nodes in a real ComfyUI -------------------------------------------------------


def _node(host, node_id):
    return host.nodes.NODE_CLASS_MAPPINGS[node_id]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.host
def test_unicode_spaces_and_a_read_only_folder_load_and_are_never_written(sd1_pipeline, diffusers_root, host):
    folder = _linked_copy(sd1_pipeline.path, diffusers_root / "Modèle BK ✓ small")
    before = _snapshot(folder)
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for path in folders:  # read-only (root ignores it: the snapshot below is the real check)
        os.chmod(path, 0o555)
    try:
        model, clip, vae = _node(host, "BKSDMPipelineLoader").execute(
            model_name="Modèle BK ✓ small", weight_dtype="fp32", prediction="auto").args
        assert model is not None and clip is not None and vae is not None
    finally:
        for path in folders:
            os.chmod(path, 0o755)
    assert _snapshot(folder) == before  # nothing created, changed or touched


@pytest.mark.host
def test_a_full_sd_unet_still_loads(diffusers_root, host):
    from factories import write_unet_folder

    folder = diffusers_root / "sd15-unet"
    write_unet_folder(folder, "sd-v1-4_teacher", seed=400)
    try:
        model, = _node(host, "BKSDMUNetLoader").execute(model_name="sd15-unet", weight_dtype="fp16",
                                                         prediction="auto").args
        assert model.model.model_config.unet_config["num_res_blocks"] == [2, 2, 2, 2]
        assert sum(p.numel() for p in model.model.diffusion_model.parameters()) == 859_520_964
    finally:
        shutil.rmtree(folder)  # gigabytes


@pytest.mark.host
@pytest.mark.parametrize("kind", ["sdxl", "flux", "not a checkpoint", "no text encoder"])
def test_single_file_loader_refuses_what_it_cannot_load(kind, host, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("bad-checkpoints")
    folder_paths.add_model_folder_path("checkpoints", str(root))
    tensors = {
        "sdxl": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                 "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816)},
        "flux": {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": torch.zeros(9, 3)},
        "not a checkpoint": {"encoder.layers.0.weight": torch.zeros(4, 4)},
        "no text encoder": {},
    }[kind]
    if kind == "no text encoder":
        from bksdm.files.unet_config import spec_from_diffusers_config
        from bksdm.layout.unet_keys import unet_tensors

        spec = spec_from_diffusers_config(unet_config("v1_bk_tiny"))
        tensors = {f"model.diffusion_model.{t.ldm}": torch.empty(t.shape, dtype=torch.float16)
                   for t in unet_tensors(spec)}
    name = f"{kind.replace(' ', '-')}.safetensors"
    save_file(tensors, str(root / name))
    import bksdm.errors as errors
    with pytest.raises(errors.BKSDMError) as raised:
        _node(host, "BKSDMCheckpointLoader").execute(ckpt_name=name, weight_dtype="default", prediction="auto")
    assert_clear(raised.value, name)
    (root / name).unlink()  # hundreds of megabytes for "no text encoder"; the folder stays listed


@pytest.mark.host
def test_adapters_refuse_models_they_cannot_map(host, sd1_pipeline):
    """A LoRA file that is not safetensors, and the ControlNet adapter on a custom layout."""
    import comfy.supported_models

    model = _node(host, "BKSDMUNetLoader").execute(model_name=sd1_pipeline.path.name, weight_dtype="fp16",
                                                   prediction="auto").args[0]
    import bksdm.errors as errors
    custom = model.clone()
    custom.model.model_config = comfy.supported_models.SD15(dict(  # three res blocks per level
        model.model.model_config.unet_config, num_res_blocks=[3, 3, 3, 3], transformer_depth=[1] * 9 + [0] * 3,
        transformer_depth_output=[1] * 12 + [0] * 4))
    with pytest.raises(errors.UnsupportedModelError, match="custom layout"):
        _node(host, "BKSDMControlNetAdapter").execute(model=custom, alignment="stage_output")
    custom.model.model_config = model.model.model_config  # the clone shares the model: put it back


# --- the commands ----------------------------------------------------------------------


@pytest.mark.host
def test_main_job_reports_a_missing_model_and_writes_nothing(host, tmp_path):
    from cli import txt2img

    output = tmp_path / "out.png"
    assert txt2img.main(["x", "--model", "no-such-folder", "-o", str(output), "--comfyui", str(host.path)]) == 1
    assert not output.exists()


def _limited_convert(folder: Path, output: Path, limit: int) -> subprocess.CompletedProcess:
    """The convert command with files capped at ``limit`` bytes: how a full disk looks to a writer."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "import pack_import; convert = pack_import.pack_module('cli.convert'); "
            f"sys.exit(convert.main([{str(folder)!r}, {str(output)!r}, '--precision', 'fp16']))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.host
def test_convert_on_a_full_disk_leaves_no_partial_file(sd1_pipeline, host, tmp_path):
    output = tmp_path / "out" / "bk.safetensors"
    output.parent.mkdir()
    run = _limited_convert(sd1_pipeline.path, output, 50 * 1024 * 1024)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "cannot write the file" in run.stderr and "nothing was written" in run.stderr
    assert list(output.parent.iterdir()) == []


@pytest.mark.host
def test_convert_refuses_a_non_model_folder_and_names_it(host, tmp_path):
    from cli import convert

    assert convert.main([str(tmp_path), str(tmp_path / "x.safetensors")]) == 1
    assert not (tmp_path / "x.safetensors").exists()


# --- through the server's API ----------------------------------------------------------


def _queue(url: str, prompt: dict) -> dict:
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        prompt_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["prompt_id"]
    except urllib.error.HTTPError as e:
        return {"refused": json.loads(e.read())}
    for _ in range(600):
        history = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30).read())
        if prompt_id in history:
            return history[prompt_id]
        time.sleep(0.5)
    raise AssertionError("no result")


@pytest.mark.host
def test_path_tricks_and_broken_models_through_the_api_leave_the_server_running(comfy_server, diffusers_root,
                                                                               sd1_pipeline):
    import urllib.request

    # ComfyUI does not check V3 combo values sent through the API: the nodes refuse them at validation.
    for prompt, message in (
        (graphs.txt2img(graphs.pipeline_loader("../../etc")), "points outside them"),
        (graphs.txt2img(dict(graphs.pipeline_loader(sd1_pipeline.path.name),
                             inputs={"model_name": sd1_pipeline.path.name, "weight_dtype": "fp64",
                                     "prediction": "auto"})), "weight_dtype must be one of"),
        ({"c": {"class_type": "BKSDMConvertToCheckpoint", "inputs": {
            "model_name": sd1_pipeline.path.name, "filename": "../../escape.safetensors", "precision": "fp16"}}},
         "plain file name"),
        ({"d": {"class_type": "BKSDMDownload", "inputs": {"variant": "custom", "repo_id": "../../etc",
                                                          "weights": "fp16"}}}, "repo id"),
    ):
        refused = _queue(comfy_server, prompt)
        assert "refused" in refused and message in json.dumps(refused["refused"]), refused
    # A listed folder whose weights are damaged: the node fails with the pack's message.
    _linked_copy(sd1_pipeline.path, diffusers_root / "damaged",
                 {"unet/diffusion_pytorch_model.safetensors": b"\x00" * 64,
                  "unet/diffusion_pytorch_model.fp16.safetensors": b"\x00" * 64})
    urllib.request.urlopen(f"{comfy_server}/object_info/BKSDMPipelineLoader", timeout=30).read()  # refreshed list
    result = _queue(comfy_server, graphs.txt2img(graphs.pipeline_loader("damaged")))
    error = next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")
    assert "unreadable model file" in error["exception_message"] and "damaged" in error["exception_message"]
    assert urllib.request.urlopen(f"{comfy_server}/system_stats", timeout=10).status == 200


@pytest.mark.host
def test_a_damaged_lora_file_is_refused_by_name(host, sd1_pipeline, tmp_path_factory):
    import folder_paths

    root = tmp_path_factory.mktemp("bad-loras")
    folder_paths.add_model_folder_path("loras", str(root))
    (root / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    model = _node(host, "BKSDMUNetLoader").execute(model_name=sd1_pipeline.path.name, weight_dtype="fp16",
                                                   prediction="auto").args[0]
    import bksdm.errors as errors
    with pytest.raises(errors.InvalidFileError) as raised:
        _node(host, "BKSDMLoraLoader").execute(model=model, lora_name="cut.safetensors", strength_model=1.0,
                                               strength_clip=1.0)
    assert_clear(raised.value, "cut.safetensors")
