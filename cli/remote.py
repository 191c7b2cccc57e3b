"""Queue a prompt on a running ComfyUI server over its HTTP API and fetch the result."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from functools import cached_property

from .comfy_host import HostError


class RemoteComfy:
    def __init__(self, url: str, timeout: float = 3600.0, poll_every: float = 0.5):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_every = poll_every

    def _request(self, path: str, payload: dict | None = None) -> bytes:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise HostError(f"{self.url}{path} answered {e.code}: {e.read().decode(errors='replace')[:2000]}") from None
        except (urllib.error.URLError, OSError) as e:
            raise HostError(f"cannot reach ComfyUI at {self.url}: {e}; is the server running?") from None

    @cached_property
    def object_info(self) -> dict:
        return json.loads(self._request("/object_info"))

    def node_info(self, class_type: str) -> dict:
        if class_type not in self.object_info:
            raise HostError(f"the server at {self.url} has no node '{class_type}'; is this pack installed there?")
        return self.object_info[class_type]

    def run(self, prompt: dict) -> dict:
        """Queue the prompt, wait for it, and return its outputs by node id."""
        queued = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex}))
        prompt_id = queued["prompt_id"]
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            history = json.loads(self._request(f"/history/{prompt_id}"))
            if prompt_id in history:
                entry = history[prompt_id]
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
                    message = errors[0].get("exception_message") if errors else "see the server log"
                    raise HostError(f"ComfyUI failed to run the workflow: {message}")
                return entry["outputs"]
            time.sleep(self.poll_every)
        raise HostError(f"no result from {self.url} after {self.timeout:.0f} s")

    def file_bytes(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")
