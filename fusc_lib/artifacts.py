"""Reading and writing run artifacts (weights, CSV) at a local path or an object-store URI."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.fs as pafs

# Object stores whose paths are "bucket/key": only "scheme://bucket" goes through pyarrow's URI
# parser, the key is taken as it is.
_BUCKET_SCHEMES = ("s3", "gs", "gcs")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or a URI (s3://bucket/key, gs://...).

    Archive names hold characters a URI may not (`[2024] ward/`, spaces, `%`, `#`): the key of an
    object-store URI is kept literally, never parsed or percent-decoded, so a listed file reads
    back under the name it was listed with. Credentials and endpoint come from the standard
    AWS_* / GOOGLE_* environment variables (pyarrow's). Raises `pyarrow.ArrowInvalid` for a URI
    pyarrow cannot open.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme in _BUCKET_SCHEMES:
        filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{rest.split('/', 1)[0]}")
        return filesystem, rest.rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def read_bytes(uri: str) -> bytes:
    filesystem, path = resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def open_output(uri: str) -> pa.NativeFile:
    """A stream writing the file at `uri` (its folder made first). On object stores the file
    appears whole when the stream closes; readers never see half of it."""
    filesystem, path = resolve(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    return filesystem.open_output_stream(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file at once."""
    with open_output(uri) as stream:
        stream.write(data)


def exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def remove(uri: str) -> None:
    """Delete the file at `uri` if there is one."""
    if exists(uri):
        filesystem, path = resolve(uri)
        filesystem.delete_file(path)


def file_names(uri: str) -> list[str]:
    """Names of the files directly inside folder `uri` (sub-folders left out), sorted."""
    filesystem, path = resolve(uri)
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
