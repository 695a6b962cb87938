"""Turn what the user names (folders, globs, files, URIs, a manifest) into a list of scan files.

Local paths are walked with `os` (links to folders followed, broken links kept so the ingest
quarantines them with their reason); `s3://`, `gs://`… are listed through pyarrow's filesystems.
A named location that does not exist is the user's error and stops the job before it starts; a
file that exists but cannot be read is the archive's problem and is quarantined by the ingest.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fusc_lib.artifacts import resolve

MANIFEST_COLUMNS = ("site", "device", "patient", "study")
_GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class Source:
    """One file to ingest, with what the manifest says about it."""

    uri: str
    site: str | None = None
    device: str | None = None  # the machine (make and model), where the manifest names it
    patient: str | None = None
    study: str | None = None

    def as_row(self) -> dict:
        return asdict(self)


class SourceError(ValueError):
    """A location the user named cannot be listed (missing, empty, no permission, bad URI)."""


def _filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, URI prefix to rebuild full URIs)."""
    if "://" in location:
        filesystem, path = resolve(location)
        return filesystem, path, location[: location.index("://") + 3]
    return pafs.LocalFileSystem(), os.path.abspath(location), ""


def list_location(location: str) -> list[Source]:
    """Every file under a folder, the single file named, or the files matching a glob.

    A location that exists is taken literally, whatever characters its name holds (`[2024]`,
    spaces, `%`, `#`); it is a glob only when nothing by that name exists. Every file in a folder
    is a candidate, whatever its name: the ingest decides by content, and quarantines what is
    not a scan. Raises `SourceError` when the location is missing or cannot be listed.
    """
    if "://" not in location:
        return [Source(path) for path in _local_files(location)]
    filesystem, path, prefix = _filesystem(location)
    try:
        return [Source(prefix + f) for f in _remote_files(filesystem, path)]
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot list {location}: {error}") from None


def _local_files(location: str) -> list[str]:
    path = os.path.abspath(location)
    if os.path.isdir(path):
        return _walk(path)
    if os.path.lexists(path):  # a file, or a broken link the ingest quarantines with its reason
        return [path]
    if any(c in location for c in _GLOB_CHARACTERS):
        matches = sorted(glob.glob(path, recursive=True))
        return [f for match in matches for f in (_walk(match) if os.path.isdir(match) else [match])]
    raise SourceError(f"path not found: {location}")


def _walk(folder: str) -> list[str]:
    """Every non-folder entry under `folder` (links to folders followed once, loops cut)."""
    files, seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True, onerror=_raise_listing_error):
        real = os.path.realpath(root)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        files.extend(os.path.join(root, name) for name in names)
    return sorted(files)


def _raise_listing_error(error: OSError) -> None:
    raise SourceError(f"cannot list {error.filename}: {error.strerror}")


def _remote_files(filesystem: pafs.FileSystem, path: str) -> list[str]:
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type == pafs.FileType.Directory:
        return _remote_listing(filesystem, path)
    if not any(c in path for c in _GLOB_CHARACTERS):
        raise SourceError(f"path not found: {path}")
    root = _glob_root(path)
    return [f for f in _remote_listing(filesystem, root) if fnmatch.fnmatchcase(f, path)]


def _remote_listing(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _glob_root(pattern: str) -> str:
    """The longest leading part of a glob without wildcards: where listing starts."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARACTERS):
            return "/".join(parts[:i]) or "/"
    return pattern


def read_manifest(manifest: str) -> list[Source]:
    """Sources from a CSV or Parquet manifest with a `path` column (optional site, device,
    patient, study).

    Relative paths are taken relative to the manifest's own folder, so a manifest travels with
    its archive.
    """
    table = _read_table(manifest)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {manifest} has no `path` column (columns: {table.column_names})")
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    columns = {c: table.column(c).cast(pa.string()).to_pylist()
               for c in ("path", *MANIFEST_COLUMNS) if c in table.column_names}
    sources = []
    for i, path in enumerate(columns["path"]):
        if not path:
            continue
        uri = path if "://" in path or os.path.isabs(path) else f"{base}/{path}"
        if "://" not in uri:
            uri = os.path.abspath(uri)
        extra = {c: (columns[c][i] or None) for c in MANIFEST_COLUMNS if c in columns}
        sources.append(Source(uri, **extra))
    return sources


def _read_table(manifest: str) -> pa.Table:
    filesystem, path, _ = _filesystem(manifest)
    if path.lower().endswith(".parquet"):
        return pq.read_table(path, filesystem=filesystem)
    with filesystem.open_input_stream(path) as stream:
        return pacsv.read_csv(stream)


def gather_sources(locations: list[str], manifest: str | None = None) -> list[Source]:
    """All sources named, each URI once (the manifest's row wins: it carries site, device, patient).

    Raises `SourceError` naming every location (or the manifest) that yields no file at all: a
    nightly job must not look green while it ingests nothing.
    """
    found: dict[str, Source] = {}
    empty = []
    for location in locations:
        sources = list_location(location)
        empty += [location] if not sources else []
        for source in sources:
            found.setdefault(source.uri, source)
    if manifest:
        sources = read_manifest(manifest)
        empty += [f"manifest {manifest}"] if not sources else []
        found.update((source.uri, source) for source in sources)
    if empty:
        raise SourceError(f"no files found in {', '.join(empty)}: check the path (a folder is "
                          "searched recursively; every file in it is read)")
    return list(found.values())
