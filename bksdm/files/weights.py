"""Read weight files safely: safetensors checked before a byte of data is read, pickles never run.

A ``.safetensors`` header is validated first (sizes, offsets, dtypes), so a truncated
download or a header that lies about its sizes gets an error naming the file instead of a
crash later. The file is then memory-mapped, as ComfyUI and diffusers do: tensors already in
the model's dtype are views of the mapping (no copy, pages read on first use), others are
cast into fresh memory. ``.bin`` / ``.ckpt`` pickles are opened with
``torch.load(weights_only=True)``: a pickle that asks for anything but tensors and plain
containers is refused, never executed.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InvalidFileError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

REDOWNLOAD = "the file is damaged or incomplete: delete it and download it again"


@dataclass(frozen=True)
class Header:
    """A safetensors header: tensor shapes, dtypes and byte offsets, and the free-form metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    offsets: dict[str, tuple[int, int]]  # absolute [begin, end) in the file
    metadata: dict[str, str]


def is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIXES)


def read_safetensors_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header without reading any tensor data."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise InvalidFileError(path=path,
                                       expected="a safetensors file (an 8-byte header length, then a JSON header)",
                                       found=f"{size} bytes", fix=REDOWNLOAD)
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise InvalidFileError(path=path, expected="a header that fits in the file",
                                       found=f"a header of {length} bytes in a file of {size} bytes",
                                       fix=f"this is not a safetensors file, or {REDOWNLOAD}")
            raw = f.read(length)
    except OSError as e:
        raise InvalidFileError(path=path, expected="a readable file", found=f"{type(e).__name__}: {e.strerror or e}",
                               fix="check the path and its permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidFileError(path=path, expected="a JSON safetensors header", found="unparsable bytes",
                               fix=f"this is not a safetensors file, or {REDOWNLOAD}") from None
    if not isinstance(header, dict):
        raise InvalidFileError(path=path, expected="a JSON object as header", found=type(header).__name__,
                               fix=REDOWNLOAD)
    metadata = header.pop("__metadata__", None) or {}
    return _validate(path, header, metadata, data_start=8 + length, data_bytes=size - 8 - length)


def _validate(path, header: dict, metadata, data_start: int, data_bytes: int) -> Header:
    shapes, dtypes, offsets, spans = {}, {}, {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (dtype in DTYPE_BYTES and isinstance(shape, list)
                  and all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(begin, int)
                  and isinstance(end, int))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise InvalidFileError(path=path, expected="dtype, shape and data_offsets for every tensor",
                                   found=f"a malformed entry for '{name}'", fix=REDOWNLOAD)
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
            raise InvalidFileError(
                path=path,
                expected=f"'{name}' ({dtype} {shape}) to take {nbytes} bytes inside the {data_bytes}-byte data section",
                found=f"data_offsets [{begin}, {end}]", fix=REDOWNLOAD)
        shapes[name], dtypes[name] = tuple(shape), dtype
        offsets[name] = (data_start + begin, data_start + end)
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise InvalidFileError(path=path, expected="tensors packed back to back in the data section",
                                   found=f"a gap or overlap at byte {begin}", fix=REDOWNLOAD)
        covered = end
    if covered != data_bytes:
        raise InvalidFileError(path=path, expected=f"{covered} bytes of tensor data", found=f"{data_bytes} bytes",
                               fix=REDOWNLOAD)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidFileError(path=path, expected="string metadata", found="non-string metadata values",
                               fix=REDOWNLOAD)
    return Header(shapes, dtypes, offsets, metadata)


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a weight file's tensors; reads only the header of safetensors."""
    if is_safetensors(path):
        return read_safetensors_header(path).shapes
    return {k: tuple(v.shape) for k, v in load_state_dict(path)[0].items()}


def load_state_dict(path: str | os.PathLike, dtype=None, mmap: bool = True) -> tuple[dict, dict[str, str]]:
    """Load a weight file as (state dict, metadata), floating-point tensors cast to ``dtype`` if given.

    Safetensors are memory-mapped copy-on-write, so replace a loaded file by writing a new one
    and renaming it over the old (as downloads and exports here do), never by rewriting it in place.
    ``mmap=False`` copies each tensor out of the mapping at once, as ComfyUI's ``--disable-mmap``
    does, for file systems where mappings misbehave.
    """
    path = os.fspath(path)
    if is_safetensors(path):
        return _load_safetensors(path, dtype, mmap)
    if path.lower().endswith(PICKLE_SUFFIXES):
        return _cast(_load_pickle(path), dtype), {}
    raise InvalidFileError(path=path, expected=f"a weight file ({', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})",
                           found=f"a '{os.path.splitext(path)[1] or 'extensionless'}' file",
                           fix="choose a .safetensors file (preferred) or a PyTorch .bin/.ckpt")


def _cast(state_dict: dict, dtype) -> dict:
    if dtype is None:
        return state_dict
    return {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in state_dict.items()}


def _load_safetensors(path: str, dtype, mmap: bool) -> tuple[dict, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    header = read_safetensors_header(path)  # the checks safetensors does not make, before it maps the file
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) if mmap else f.get_tensor(name).clone() for name in header.shapes}
    except (OSError, SafetensorError) as e:
        raise InvalidFileError(path=path, expected="a readable safetensors file", found=f"{type(e).__name__}: {e}",
                               fix=REDOWNLOAD) from None
    return _cast(tensors, dtype), header.metadata


def _load_pickle(path: str) -> dict:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InvalidFileError(
            path=path, expected="a pickle holding only tensors",
            found=f"a pickle that asks to run or build other objects ({e})",
            fix="it was refused, not executed. Use the model's .safetensors file instead; "
            "only load pickles from sources you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error, zipfile.BadZipFile) as e:
        raise InvalidFileError(path=path, expected="a PyTorch weight file", found=f"{type(e).__name__}: {e}",
                               fix=REDOWNLOAD) from None
    return unwrap_state_dict(loaded, path)


def unwrap_state_dict(loaded, path) -> dict:
    """The tensors of a loaded pickle, which may wrap them in {'state_dict': ...}."""
    import torch

    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise InvalidFileError(path=path, expected="a mapping of tensor names to tensors",
                               found=f"a {type(loaded).__name__}", fix=REDOWNLOAD)
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise InvalidFileError(path=path, expected="tensors", found="no tensors", fix=REDOWNLOAD)
    return tensors
