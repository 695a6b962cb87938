"""The Ray Serve deployment of `fusc serve`, `ClusterService`, and its FastAPI routes.

Each replica holds a `fusc_lib.online.OnlineClusterer` (the offline path in memory). Requests for
/v1/cluster and /v1/similar are batched (`@serve.batch`) so concurrent scans share one OCR batch
and one forward pass; the heavy work runs in a thread so the replica keeps answering while it
computes.

Live settings are the deployment's `user_config` (`ServiceConfig`), applied by `reconfigure`
without restarting replicas: the pinned model version (None follows
`models/cluster/current.json`, checked every `reload_interval_s`), body limit, batch size and
wait.

Every bad request is a 4xx JSON error `{"detail": reason}`; nothing from a request but its
path and status reaches the logs.
"""

import asyncio
import logging
import threading
import time
from typing import Annotated

import ray
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from ray import serve

from fusc_lib.io import BadInput
from fusc_lib.online import MAX_SIMILAR, EmbeddedScan, OnlineClusterer, ScanRequest
from schemas.api import ClusterResponse, SimilarResponse
from services.auth import require_token
from services.bodies import MIB, SCAN_BODY, read_scan

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


# /docs and /openapi.json are routes of the service below, so they need the token too.
api = FastAPI(title="FUSC", version="1", docs_url=None, openapi_url=None,
              description="The anatomical-view cluster of a fetal ultrasound scan (PNG, JPEG, "
                          "BMP, TIFF or DICOM), prepared exactly as the archive was.")
# Every route but /healthz: the bearer token, when the service has one.
TOKEN_REQUIRED = [Depends(require_token)]


@api.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A bug answers JSON without details (they could quote the request)."""
    logger.error("internal error on %s: %s", request.url.path, type(error).__name__)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _replica_cpus() -> int:
    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(assigned))


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 1},
                  user_config={}, health_check_period_s=10)
@serve.ingress(api)
class ClusterService:
    """One replica: the online clusterer and the batched forward pass behind the routes.

    `token_sha256` is what `services.auth.require_token` compares requests with.
    """

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
        """Reload when `current.json` names a new version (unless a version is pinned), and
        the cluster names when the review changed them."""
        while True:
            time.sleep(self.config.reload_interval_s)
            try:
                if self.online.reload_if_changed():
                    logger.info("now serving cluster model %s", self.online.model.version)
            except Exception as error:  # a half-written model folder: try again next time
                logger.warning("model reload failed: %s", error)

    def check_health(self) -> None:
        """Serve's health check: unhealthy until the model is loaded."""
        if self.online is None:
            raise RuntimeError("model not loaded")

    # --- routes ------------------------------------------------------------------------------

    @api.api_route("/healthz", methods=["GET", "HEAD"])  # load balancers probe with HEAD
    async def healthz(self) -> dict:
        """Liveness, without the token."""
        return {"status": "ok"}

    @api.get("/openapi.json", include_in_schema=False, dependencies=TOKEN_REQUIRED)
    async def openapi(self) -> dict:
        """The OpenAPI document of the routes."""
        return api.openapi()

    @api.get("/docs", include_in_schema=False, dependencies=TOKEN_REQUIRED)
    async def docs(self) -> HTMLResponse:
        """Swagger UI; with a token set, open it with the Authorization header (a browser
        extension or a proxy), or read /openapi.json with curl."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="FUSC")

    @api.get("/v1/model", dependencies=TOKEN_REQUIRED)
    async def model(self) -> dict:
        """The served model version, its clusters and their names (null until named)."""
        return self.online.info()

    @api.post("/v1/cluster", response_model=ClusterResponse, openapi_extra=SCAN_BODY,
              dependencies=TOKEN_REQUIRED)
    async def cluster(self, request: Request,
                      site: Annotated[str | None, Query(max_length=200, description=(
                          "Hospital the scan comes from, as named in the archive's manifest; "
                          "default: the DICOM's InstitutionName."))] = None,
                      device: Annotated[str | None, Query(max_length=200, description=(
                          "Machine the scan was made on, as named in the manifest's `device`; "
                          "default: the DICOM's Manufacturer + ManufacturerModelName. With "
                          "neither site nor device, the style group is inferred."))] = None
                      ) -> dict:
        """The cluster of one scan, sent as the raw body or as the multipart field `file`."""
        scan = await self._embedded(request, site, device)
        return self.online.classify(scan)

    @api.post("/v1/similar", response_model=SimilarResponse, openapi_extra=SCAN_BODY,
              dependencies=TOKEN_REQUIRED)
    async def similar(self, request: Request,
                      k: Annotated[int, Query(ge=1, le=MAX_SIMILAR,
                                              description="Scans returned.")] = 10) -> dict:
        """The k archived scans most similar to this one (vector search over `embeddings`)."""
        scan = await self._embedded(request, None, None)
        return await asyncio.to_thread(self.online.similar, scan, k)

    # --- helpers -----------------------------------------------------------------------------

    async def _embedded(self, request: Request, site: str | None, device: str | None
                        ) -> EmbeddedScan:
        data = await read_scan(request, int(self.config.max_body_mb * MIB))
        result = await self._embed(ScanRequest(data, site, device))
        if isinstance(result, BadInput):
            raise HTTPException(422, f"{result.stage}: {result.reason}")
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _embed(self, requests: list[ScanRequest]) -> list[EmbeddedScan | BadInput]:
        return await asyncio.to_thread(self.online.embed_batch, requests)
