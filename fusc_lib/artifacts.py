"""Reading and writing run artifacts (weights, CSV) at a local path or an object-store URI."""

from __future__ import annotations

import io
import os

import pyarrow.fs as pafs


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))


def read_bytes(uri: str) -> bytes:
    filesystem, path = _resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at once (readers never see half of it on object stores)."""
    filesystem, path = _resolve(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def exists(uri: str) -> bool:
    filesystem, path = _resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def file_names(uri: str) -> list[str]:
    """Names of the files directly inside folder `uri` (sub-folders left out), sorted."""
    filesystem, path = _resolve(uri)
    found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in found if info.type == pafs.FileType.File)


def save_torch(uri: str, state: object) -> None:
    """`torch.save` of tensors / state dicts to a local path or object-store URI, whole."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(uri, buffer.getvalue())


def load_torch(uri: str) -> object:
    """What `save_torch` wrote (tensors, dicts, lists, str: torch's default weights-only load),
    on the CPU."""
    import torch

    return torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu")
