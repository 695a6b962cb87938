"""`fusc serve`: the cluster of a new scan over HTTP, on Ray Serve with a FastAPI ingress.

One deployment, `ClusterService`, holds a `fusc_lib.online.OnlineClusterer` (the offline path in
memory) per replica. Requests for /v1/cluster and /v1/similar are batched (`@serve.batch`) so
concurrent scans share one OCR batch and one forward pass; the heavy work runs in a thread so the
replica keeps answering while it computes.

Live settings are the deployment's `user_config` (`ServiceConfig`), applied by `reconfigure`
without restarting replicas: the pinned model version (None follows
`models/cluster/current.json`, checked every `reload_interval_s`), body limit, batch size and
wait. Replicas, autoscaling and HTTP options come from a Serve config file (deploy/serve.yaml),
which `serve deploy` also accepts as it is (`import_path: services.serve:build_app`).

Every bad request is a 4xx JSON error `{"detail": reason}`; nothing from a request but its
path and status reaches the logs.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import threading
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Annotated

import ray
import yaml
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from fusc_lib.io import BadInput
from fusc_lib.online import MAX_SIMILAR, EmbeddedScan, OnlineClusterer, ScanRequest
from fusc_lib.store import DEFAULT_WORKDIR, Workdir

APP_NAME = "fusc"
TOKEN_ENV = "FUSC_API_TOKEN"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "serve.yaml"
DEFAULT_REQUEST_TIMEOUT_S = 30.0
MIB = 1 << 20

# Raw bodies: a picture or DICOM file as is. `image/*` is accepted too (the format comes from the
# file's signature, never from the header); multipart/form-data carries it as a file field.
RAW_TYPES = {"application/octet-stream", "application/dicom"}
MULTIPART = "multipart/form-data"

logger = logging.getLogger("ray.serve")


class ServiceConfig(BaseModel):
    """The deployment's `user_config`: changed on a running service without a restart."""

    model_version: str | None = Field(None, description="Cluster model version to serve; None: "
                                                        "the workdir's current one, followed.")
    reload_interval_s: float = Field(10.0, gt=0, description="How often current.json is read.")
    max_body_mb: float = Field(50.0, gt=0, description="Larger request bodies get a 413 (MiB).")
    max_batch_size: int = Field(16, ge=1, description="Scans per forward pass.")
    batch_wait_timeout_s: float = Field(0.01, gt=0, description="Wait for a fuller batch.")
    torch_threads: int | None = Field(None, ge=1, description="None: the replica's CPUs.")


class ClusterOut(BaseModel):
    cluster_id: int
    probability: float


class ClusterResponse(BaseModel):
    image_id: str
    cluster_id: int
    cluster_name: str | None
    confidence: float
    top_k: list[ClusterOut]
    model_version: str
    pseudo_view: str


class SimilarScan(BaseModel):
    image_id: str
    source_uri: str | None
    frame: int | None
    similarity: float
    cluster_id: int | None
    cluster_name: str | None


class SimilarResponse(BaseModel):
    image_id: str
    model_version: str
    embedding: str
    results: list[SimilarScan]


_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    MULTIPART: {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}}

# /docs and /openapi.json are routes of the service below, so they need the token too.
api = FastAPI(title="FUSC", version="1", docs_url=None, openapi_url=None,
              description="The anatomical-view cluster of a fetal ultrasound scan (PNG, JPEG, "
                          "BMP, TIFF or DICOM), prepared exactly as the archive was.")
bearer = HTTPBearer(auto_error=False, description=f"The token in ${TOKEN_ENV}, when it is set.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _replica_cpus() -> int:
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(assigned))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- request bodies ----------------------------------------------------------------------------

async def read_scan(request: Request, limit: int) -> bytes:
    """The file bytes of a raw or multipart body; 4xx for what cannot be a scan.

    The content type only says how the body is packed (raw or multipart): the decoder is chosen
    from the bytes, as in ingest, never from a type or a file name.

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


@api.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug answers JSON without details (they could quote the request)."""
    logger.error("internal error on %s: %s", request.url.path, type(error).__name__)
    return JSONResponse({"detail": "internal error"}, status_code=500)


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1},
                  user_config={}, health_check_period_s=10)
@serve.ingress(api)
class ClusterService:
    """One replica: the online clusterer, the token check and the batched forward pass."""

    def __init__(self, workdir: str, token_sha256: str | None = None):
        self.workdir = workdir
        self.token_sha256 = token_sha256
        self.config = ServiceConfig()
        self.online: OnlineClusterer | None = None
        self._watch = threading.Event()

    def reconfigure(self, user_config: dict) -> None:
        """Apply a new `user_config`: Serve calls this at start and on every config update."""
        config = ServiceConfig(**(user_config or {}))
        threads = config.torch_threads or _replica_cpus()
        import torch

        torch.set_num_threads(threads)
        if self.online is None:
            self.online = OnlineClusterer(self.workdir, config.model_version)
        elif self.online.switch(config.model_version):
            logger.info("now serving cluster model %s", self.online.model.version)
        self._embed.set_max_batch_size(config.max_batch_size)
        self._embed.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.config = config
        if not self._watch.is_set():
            self._watch.set()
            threading.Thread(target=self._follow_current, daemon=True).start()

    def _follow_current(self) -> None:
        """Reload when `current.json` names a new version (unless a version is pinned)."""
        while True:
            time.sleep(self.config.reload_interval_s)
            try:
                if self.online.pinned is None and self.online.reload_if_changed():
                    logger.info("now serving cluster model %s", self.online.model.version)
            except Exception as error:  # a half-written model folder: try again next time
                logger.warning("model reload failed: %s", error)

    def check_health(self) -> None:
        if self.online is None:
            raise RuntimeError("model not loaded")

    # --- routes ------------------------------------------------------------------------------

    @api.api_route("/healthz", methods=["GET", "HEAD"])  # load balancers probe with HEAD
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, credentials: Credentials) -> dict:
        self._authorize(credentials)
        return api.openapi()

    @api.get("/docs", include_in_schema=False)
    async def docs(self, credentials: Credentials) -> HTMLResponse:
        """Swagger UI; with a token set, open it with the Authorization header (a browser
        extension or a proxy), or read /openapi.json with curl."""
        self._authorize(credentials)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="FUSC")

    @api.get("/v1/model")
    async def model(self, credentials: Credentials) -> dict:
        """The served model version, its clusters and their names (null until named)."""
        self._authorize(credentials)
        return self.online.info()

    @api.post("/v1/cluster", response_model=ClusterResponse, openapi_extra=_BODY_DOC)
    async def cluster(self, request: Request, credentials: Credentials,
                      site: Annotated[str | None, Query(max_length=200, description=(
                          "Hospital or machine the scan comes from, as named in the archive's "
                          "manifest; default: the DICOM's InstitutionName, else inferred."))
                                      ] = None) -> dict:
        """The cluster of one scan, sent as the raw body or as the multipart field `file`."""
        self._authorize(credentials)
        scan = await self._embedded(request, site)
        return self.online.classify(scan)

    @api.post("/v1/similar", response_model=SimilarResponse, openapi_extra=_BODY_DOC)
    async def similar(self, request: Request, credentials: Credentials,
                      k: Annotated[int, Query(ge=1, le=MAX_SIMILAR,
                                              description="Scans returned.")] = 10) -> dict:
        """The k archived scans most similar to this one (vector search over `embeddings`)."""
        self._authorize(credentials)
        scan = await self._embedded(request, None)
        return await asyncio.to_thread(self.online.similar, scan, k)

    # --- helpers -----------------------------------------------------------------------------

    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.token_sha256 is None:
            return
        given = _digest(credentials.credentials) if credentials else ""
        if not hmac.compare_digest(given, self.token_sha256):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    async def _embedded(self, request: Request, site: str | None) -> EmbeddedScan:
        data = await read_scan(request, int(self.config.max_body_mb * MIB))
        result = await self._embed(ScanRequest(data, site))
        if isinstance(result, BadInput):
            raise HTTPException(422, f"{result.stage}: {result.reason}")
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _embed(self, requests: list[ScanRequest]) -> list[EmbeddedScan | BadInput]:
        return await asyncio.to_thread(self.online.embed_batch, requests)


# --- deploying ---------------------------------------------------------------------------------

class AppArgs(BaseModel):
    """Arguments of the application builder (the `args` of an application in the config file)."""

    workdir: str = Field(default_factory=lambda: os.environ.get("FUSC_WORKDIR", DEFAULT_WORKDIR))


def build_app(args: dict) -> Application:
    """Application builder for `serve run` / `serve deploy` of deploy/serve.yaml.

    The token is read here, from $FUSC_API_TOKEN of the process that deploys, and only its
    SHA-256 travels to the replicas.
    """
    token = os.environ.get(TOKEN_ENV) or None
    return ClusterService.bind(Workdir(AppArgs(**args).workdir).root,
                               _digest(token) if token else None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without a token: set {TOKEN_ENV} "
                         "(clients send `Authorization: Bearer <token>`), or bind 127.0.0.1")


def read_config(path: str | Path | None) -> dict:
    """The Serve config file (deploy/serve.yaml), validated by Ray's own schema."""
    from ray.serve.schema import ServeDeploySchema

    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ValueError(f"no Serve config file at {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    ServeDeploySchema.model_validate(raw)
    if len(raw.get("applications", [])) != 1:
        raise ValueError(f"{path} must describe one application (the FUSC service)")
    return raw


def start(workdir: str, *, host: str = "127.0.0.1", port: int = 8000, model: str | None = None,
          config_path: str | Path | None = None, token: str | None = None,
          user_config: dict | None = None) -> str:
    """Deploy the service on the connected Ray (Serve started with these HTTP options) and
    return its URL once every replica is ready. `user_config` overrides the file's."""
    from fusc_lib.cluster_model import ClusterModel

    check_exposure(host, token)
    ClusterModel.load(Workdir(workdir), model)  # a missing model fails here, not in a replica
    config = read_config(config_path)
    http = {**config.get("http_options", {}), "host": host, "port": port}
    http.setdefault("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)
    application = config["applications"][0]
    options = next((d for d in application.get("deployments", [])
                    if d.get("name") == ClusterService.name), {})
    options = {key: value for key, value in options.items() if key != "name"}
    settings = {**options.get("user_config", {}), **(user_config or {})}
    if model:
        settings["model_version"] = model
    options["user_config"] = ServiceConfig(**settings).model_dump()
    serve.start(http_options=http)
    digest = _digest(token) if token else None
    serve.run(ClusterService.options(**options).bind(Workdir(workdir).root, digest),
              name=APP_NAME, route_prefix=application.get("route_prefix", "/"))
    return f"http://{host}:{port}"


def stop(shared_cluster: bool = False) -> None:
    """Take the service down: the application on a shared cluster, else Serve itself."""
    if shared_cluster:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
