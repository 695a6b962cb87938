"""Request bodies of `fusc serve`: the bytes of one scan, sent raw or as a multipart form.

The content type only says how a body is packed: the decoder is chosen from the bytes
(`fusc_lib.io.decode`), as in ingest, never from a type or a file name.
"""

from email import policy
from email.parser import BytesParser

from fastapi import HTTPException, Request

MIB = 1 << 20

# Raw bodies: a picture or DICOM file as is. `image/*` is accepted too (the format comes from the
# file's signature, never from the header); multipart/form-data carries it as a file field.
RAW_TYPES = ("application/octet-stream", "application/dicom")
MULTIPART = "multipart/form-data"

_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The OpenAPI request body of the routes that take a scan (they read the stream themselves, so
# FastAPI cannot infer it).
SCAN_BODY = {"requestBody": {"required": True, "content": {
    **{media: _BINARY for media in (*RAW_TYPES, "image/png", "image/jpeg")},
    MULTIPART: {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}}


async def read_scan(request: Request, limit: int) -> bytes:
    """The file bytes of a raw or multipart body; 4xx for what cannot be a scan.

    The size is checked from Content-Length before reading, then while streaming (chunked
    uploads declare none), so a huge body is refused without being held in memory.
    """
    content_type = request.headers.get("content-type", "application/octet-stream")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in RAW_TYPES and media != MULTIPART and not media.startswith("image/"):
        raise HTTPException(415, f"unsupported content type {media!r}: send the file as "
                                 "application/octet-stream (or its image/* or application/dicom "
                                 "type), or as multipart/form-data field `file`")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, _too_large(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, _too_large(size, limit, "at least "))
        chunks.append(chunk)
    body = b"".join(chunks)
    data = _multipart_file(body, content_type) if media == MULTIPART else body
    if not data:
        raise HTTPException(400, "empty body: send the bytes of one scan")
    return data


def _too_large(size: int, limit: int, qualifier: str = "") -> str:
    return f"body of {qualifier}{size / MIB:.1f} MiB is over the limit of {limit / MIB:g} MiB"


def _multipart_file(body: bytes, content_type: str) -> bytes:
    """The `file` part (or the only file part) of a multipart/form-data body."""
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts:
        raise HTTPException(400, "malformed multipart body (no parts found)")
    files = [p for p in parts if p.get_param("name", header="content-disposition") == "file"] \
        or [p for p in parts if p.get_filename()]
    if len(files) != 1:
        raise HTTPException(400, "multipart body needs exactly one file, in the field `file`")
    return files[0].get_payload(decode=True) or b""
