"""A local stand-in for the Hugging Face Hub, on 127.0.0.1, for the download tests.

It answers what huggingface_hub asks when it lists and fetches a model repo:

- ``GET /api/models/<owner>/<name>[/revision/<rev>]`` (``?blobs=true`` adds sizes, git
  blob ids and LFS sha256), as ``HfApi.model_info(files_metadata=True)`` calls it;
- ``GET`` / ``HEAD /<owner>/<name>/resolve/<rev>/<path>``: files kept in git are served
  directly (ETag = blob id); LFS files are redirected (302) to a second server standing
  for the CDN, on another origin as on the real hub, with ``X-Linked-Size`` /
  ``X-Linked-Etag`` / ``X-Repo-Commit``, so that huggingface_hub's HEAD logic and the
  dropping of the Authorization header on the way to the CDN are exercised;
- byte ranges (``Range: bytes=N-``, answered 206 with ``Content-Range``) on both servers;
- the hub's error headers (``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound``).

Faults are injected per request, to test what the client does with them: the connection
dropped after N bytes of a file, wrong bytes of the right length, every request from the
k-th on (or only the k-th) aborted without an answer. Every request is recorded with its
headers.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from random_models import UNET_CONFIGS

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")  # as the repos' .gitattributes send them to LFS


@dataclass(frozen=True)
class HubFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:  # git's object id of the content
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Seen:
    """One request as the server saw it."""

    number: int
    server: str  # "hub" or "cdn"
    method: str
    path: str  # the URL path, unquoted, without the query
    headers: dict[str, str]  # lower-case names
    file: str | None  # the repo file a resolve or CDN request is for


@dataclass
class Faults:
    fail_from: int | None = None  # abort every request from this number on
    fail_only: int | None = None  # abort this request only
    drop_after: dict[str, int] = field(default_factory=dict)  # repo path -> bytes sent before the next GET breaks
    corrupt: dict[str, int] = field(default_factory=dict)  # repo path -> how many GETs get wrong bytes
    down_after_drop: bool = False  # after a drop_after, abort every later request (the network is gone)


class FakeHub:
    """Serves ``repos`` ({repo id: {path: bytes}}) like huggingface.co; use as a context manager."""

    def __init__(self, repos: dict[str, dict[str, bytes]], tokens: dict[str, str] | None = None):
        self.repos = {rid: {p: HubFile(d, p.endswith(LFS_SUFFIXES)) for p, d in files.items()}
                      for rid, files in repos.items()}
        self.commits = {rid: hashlib.sha1(rid.encode()).hexdigest() for rid in repos}
        self.tokens = tokens or {}  # repo id -> the token it requires (a private repo)
        self.faults = Faults()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._hub = _Server(self, "hub")
        self._cdn = _Server(self, "cdn")

    @property
    def endpoint(self) -> str:
        return self._hub.url

    def __enter__(self) -> FakeHub:
        for server in (self._hub, self._cdn):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def file(self, repo_id: str, path: str) -> HubFile:
        return self.repos[repo_id][path]

    def gets(self, path: str) -> list[Seen]:
        """The GET requests that carried bytes of repo file ``path`` (not the redirects)."""
        return [r for r in self.requests if r.method == "GET" and r.file == path
                and (r.server == "cdn" or not path.endswith(LFS_SUFFIXES))]

    def heal(self) -> None:
        self.faults = Faults()

    def reset(self) -> None:
        """No faults, and request numbers start again at 1."""
        with self._lock:
            self.faults = Faults()
            self.requests = []

    def _record(self, handler: BaseHTTPRequestHandler, server: str) -> Seen:
        url = urlsplit(handler.path)
        path = unquote(url.path)
        if server == "cdn":  # the signed CDN URL names the file, as the real one does
            file = parse_qs(url.query).get("file", [None])[0]
        else:
            file = (re.fullmatch(r"/[^/]+/[^/]+/resolve/[^/]+/(.+)", path) or [None, None])[1]
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            seen = Seen(len(self.requests) + 1, server, handler.command, path, headers, file)
            self.requests.append(seen)
        return seen

    def _aborts(self, number: int) -> bool:
        f = self.faults
        return (f.fail_from is not None and number >= f.fail_from) or number == f.fail_only

    def _take_fault(self, table: dict[str, int], path: str) -> int | None:
        with self._lock:
            value = table.pop(path, None)
            if table is self.faults.corrupt and value and value > 1:
                table[path] = value - 1
        return value

    # -- the hub ----------------------------------------------------------------------------

    def handle_hub(self, h: _Handler, seen: Seen) -> None:
        url = urlsplit(h.path)
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", seen.path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", seen.path)
        repo_id = (api or resolve).group(1) if (api or resolve) else None
        if repo_id not in self.repos or not self._authorized(repo_id, seen):
            return h.reply(401 if repo_id in self.repos else 404, {"X-Error-Code": "RepoNotFound",
                                                                   "X-Error-Message": "Repository not found"},
                           json.dumps({"error": "Repository not found"}).encode())
        revision = (api.group(2) if api else resolve.group(2)) or "main"
        if revision not in ("main", self.commits[repo_id]):
            return h.reply(404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}')
        if api and h.command == "GET":
            blobs = parse_qs(url.query).get("blobs", [""])[0].lower() == "true"
            return h.reply(200, {"Content-Type": "application/json"},
                           json.dumps(self._model_info(repo_id, blobs)).encode())
        if not resolve:
            return h.reply(404, {}, b"not found")
        path = resolve.group(3)
        file = self.repos[repo_id].get(path)
        if file is None:
            return h.reply(404, {"X-Error-Code": "EntryNotFound"}, b'{"error": "Entry not found"}')
        common = {"X-Repo-Commit": self.commits[repo_id], "Accept-Ranges": "bytes"}
        if file.lfs:
            location = f"{self._cdn.url}/blobs/{file.sha256}?file={quote(path)}&signature=fake"
            return h.reply(302, {**common, "Location": location, "X-Linked-Size": str(len(file.data)),
                                 "X-Linked-Etag": f'"{file.sha256}"', "ETag": f'"{file.blob_id}"'}, b"")
        self._send_file(h, seen, path, file, {**common, "ETag": f'"{file.blob_id}"'})

    def _authorized(self, repo_id: str, seen: Seen) -> bool:
        required = self.tokens.get(repo_id)
        return required is None or seen.headers.get("authorization") == f"Bearer {required}"

    def _model_info(self, repo_id: str, blobs: bool) -> dict:
        siblings = []
        for path, file in sorted(self.repos[repo_id].items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling |= {"size": len(file.data), "blobId": file.blob_id}
                if file.lfs:
                    sibling["lfs"] = {"sha256": file.sha256, "size": len(file.data), "pointerSize": 134}
            siblings.append(sibling)
        return {"_id": "fake", "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
                "sha": self.commits[repo_id], "lastModified": "2023-08-01T00:00:00.000Z", "private": False,
                "gated": False, "disabled": False, "library_name": "diffusers", "tags": ["diffusers"],
                "pipeline_tag": "text-to-image", "siblings": siblings}

    # -- the CDN ----------------------------------------------------------------------------

    def handle_cdn(self, h: _Handler, seen: Seen) -> None:
        match = re.fullmatch(r"/blobs/([0-9a-f]{64})", seen.path)
        path = seen.file or ""
        found = [(p, f) for files in self.repos.values() for p, f in files.items()
                 if match and f.sha256 == match.group(1)]
        if not found:
            return h.reply(403, {}, b"<Error>AccessDenied</Error>")
        self._send_file(h, seen, path, found[0][1], {"ETag": f'"{found[0][1].sha256}"', "Accept-Ranges": "bytes"})

    # -- bytes, with ranges and faults --------------------------------------------------------

    def _send_file(self, h: _Handler, seen: Seen, path: str, file: HubFile, headers: dict[str, str]) -> None:
        data = file.data
        if h.command == "GET" and self._take_fault(self.faults.corrupt, path):
            data = bytes(b ^ 0x5A for b in data)  # same length, wrong bytes
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            if start >= len(data):
                return h.reply(416, {"Content-Range": f"bytes */{len(data)}"}, b"")
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        drop = self._take_fault(self.faults.drop_after, path) if h.command == "GET" else None
        if drop is None:
            return h.reply(status, {**headers, "Content-Type": "application/octet-stream"}, body)
        if self.faults.down_after_drop:
            self.faults.fail_from = seen.number + 1
        h.send_response(status)  # announce the whole body, send part of it, hang up
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body[:drop])
        h.wfile.flush()
        h.hang_up()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so Content-Length is what marks a body's end
    timeout = 5  # an idle keep-alive connection ends its thread soon after a test
    disable_nagle_algorithm = True  # else each small answer waits for the client's delayed ACK
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        hub = self.server.hub
        seen = hub._record(self, self.server.role)
        if hub._aborts(seen.number):
            return self.hang_up()
        if self.server.role == "hub":
            hub.handle_hub(self, seen)
        else:
            hub.handle_cdn(self, seen)

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_message(self, format, *args) -> None:  # quiet: the test reads ``FakeHub.requests``
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.role = role

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


# -- a nota-ai-shaped repo with tiny files ----------------------------------------------------

def _tensors(seed: int, count: int, dtype: str) -> bytes:
    """A small, valid safetensors file."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({"weight": rng.standard_normal(count).astype(dtype)})


def bk_sdm_repo(*, fp16: bool = True, text_encoder_fp16_only: bool = False, safetensors: bool = True,
                unet_half_values: int = 32768) -> dict:
    """The file tree nota-ai publishes for a BK-SDM model (SD-1.x pipeline), with tiny contents.

    ``fp16``: the U-Net and VAE also have ``*.fp16.safetensors`` files.
    ``text_encoder_fp16_only``: the text encoder has only ``model.fp16.safetensors``.
    ``safetensors``: False leaves the text encoder with a ``pytorch_model.bin`` only.
    ``unet_half_values``: the fp16 U-Net's size, in values of 2 bytes.
    """
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.19.0.dev0",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "requires_safety_checker": True, "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    scheduler = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                 "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
    vae = {"_class_name": "AutoencoderKL", "latent_channels": 4, "sample_size": 512, "in_channels": 3,
           "out_channels": 3, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}
    text = {"architectures": ["CLIPTextModel"], "hidden_size": 768, "num_hidden_layers": 12,
            "model_type": "clip_text_model", "vocab_size": 49408, "torch_dtype": "float32"}

    def js(value) -> bytes:
        return json.dumps(value, indent=2).encode()

    files = {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                          b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"---\nlicense: creativeml-openrail-m\n---\n# BK-SDM (fake)\n",
        "model_index.json": js(index),
        "feature_extractor/preprocessor_config.json": js({"crop_size": 224}),
        "safety_checker/config.json": js({"architectures": ["StableDiffusionSafetyChecker"]}),
        "safety_checker/model.safetensors": _tensors(1, 512, "float32"),
        "safety_checker/pytorch_model.bin": b"PK\x03\x04 pickled safety checker" * 40,
        "scheduler/scheduler_config.json": js(scheduler),
        "text_encoder/config.json": js(text),
        "text_encoder/pytorch_model.bin": b"PK\x03\x04 pickled text encoder" * 40,
        "tokenizer/merges.txt": b"#version: 0.2\nh e\n",
        "tokenizer/special_tokens_map.json": js({"bos_token": "<|startoftext|>"}),
        "tokenizer/tokenizer_config.json": js({"model_max_length": 77}),
        "tokenizer/vocab.json": js({"a": 0}),
        "unet/config.json": (UNET_CONFIGS / "v1_bk_small.json").read_bytes(),
        "unet/diffusion_pytorch_model.bin": b"PK\x03\x04 pickled unet" * 40,
        "unet/diffusion_pytorch_model.safetensors": _tensors(2, 32768, "float32"),
        "vae/config.json": js(vae),
        "vae/diffusion_pytorch_model.bin": b"PK\x03\x04 pickled vae" * 40,
        "vae/diffusion_pytorch_model.safetensors": _tensors(3, 2048, "float32"),
    }
    if safetensors:
        name = "model.fp16.safetensors" if text_encoder_fp16_only else "model.safetensors"
        files[f"text_encoder/{name}"] = _tensors(4, 1024, "float16" if text_encoder_fp16_only else "float32")
    if fp16:
        files["unet/diffusion_pytorch_model.fp16.safetensors"] = _tensors(2, unet_half_values, "float16")
        files["vae/diffusion_pytorch_model.fp16.safetensors"] = _tensors(3, 2048, "float16")
    return files
