"""Turn what the user names (folders, globs, files, URIs, a manifest) into a list of scan files.

Listing goes through pyarrow's filesystems, so `s3://`, `gs://` and local paths work alike.
A named location that does not exist is the user's error and stops the job before it starts; a
file that exists but cannot be read is the archive's problem and is quarantined by the ingest.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Folders are searched for these; files named explicitly are always taken, whatever their name.
# Files without an extension are taken too: DICOM archives often name files by UID.
SCAN_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".dic"}
MANIFEST_COLUMNS = ("site", "patient", "study")


@dataclass(frozen=True)
class Source:
    """One file to ingest, with what the manifest says about it."""

    uri: str
    site: str | None = None
    patient: str | None = None
    study: str | None = None

    def as_row(self) -> dict:
        return asdict(self)


def _filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, URI prefix to rebuild full URIs)."""
    if "://" in location:
        filesystem, path = pafs.FileSystem.from_uri(location)
        return filesystem, path, location[: location.index("://") + 3]
    return pafs.LocalFileSystem(), os.path.abspath(location), ""


def _is_scan_name(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    if name.startswith("."):
        return False
    suffix = os.path.splitext(name)[1].lower()
    return suffix in SCAN_EXTENSIONS or suffix == ""


def _glob_root(pattern: str) -> str:
    """The longest leading part of a glob without wildcards: where listing starts."""
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return "/".join(parts[:i]) or "/"
    return pattern


class SourceError(ValueError):
    """A location the user named cannot be listed (missing, no permission, bad URI)."""


def list_location(location: str) -> list[Source]:
    """Every scan file under a folder, matching a glob, or the single file named."""
    filesystem, path, prefix = _filesystem(location)
    is_glob = any(c in path for c in "*?[")
    root = _glob_root(path) if is_glob else path
    infos: list[pafs.FileInfo] = []
    try:
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.Directory:
            infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot list {location}: {error}") from None
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"path not found: {location}")
    if info.type == pafs.FileType.File and not is_glob:
        return [Source(prefix + path)]
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    if is_glob:
        files = [f for f in files if fnmatch.fnmatchcase(f, path)]
    else:
        files = [f for f in files if _is_scan_name(f)]
    return [Source(prefix + f) for f in files]


def read_manifest(manifest: str) -> list[Source]:
    """Sources from a CSV or Parquet manifest with a `path` column (optional site/patient/study).

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
    """All sources named, each URI once (the manifest's row wins: it carries site/patient)."""
    found: dict[str, Source] = {}
    for location in locations:
        for source in list_location(location):
            found.setdefault(source.uri, source)
    if manifest:
        for source in read_manifest(manifest):
            found[source.uri] = source
    return list(found.values())
