"""`fusc review`: the clinicians' review as a web page on this machine (FastAPI on uvicorn).

The page (services/review_page.html, one file, nothing fetched from elsewhere) shows the
clusters of a model version as montages with their sizes, names and suggested names; a click
shows a cluster's scans, the most likely misplaced first; reviewers name, merge, mark mixed,
move and exclude with a few clicks. Every click is a decision appended at once to the `review`
table through `jobs.review.Review.decide` (the same operations as `fusc clusters ...`).

Why a command of its own, not a route of `fusc serve`: a clinician on a laptop starts it at
once, with no Ray cluster to start and no Serve deployment to wait for (one process: uvicorn);
and it writes to the workdir (decisions, the thumbnail cache) where `fusc serve` only reads,
so the two are deployed and secured apart.

What is kept in memory, per model version (`ReviewSession`), is only what decisions cannot
change: the `Review` (assignments, file names, suggestions), each cluster's montage and the
stray ranking (computed once: it needs the whole clustering space). The review's state is
read again from the table on every request, and the server only ever appends: two reviewers
(or a reviewer and `fusc clusters ...`) saving at once lose nothing, and each sees the
other's decisions on the next refresh. A session is rebuilt when the `assignments` table
changes (`fusc assign` added scans to the version).

Access: with $FUSC_API_TOKEN set, every route with data (the JSON API, the thumbnails) needs
`Authorization: Bearer <token>`, as `fusc serve`'s do; a host other than loopback is refused
without one. The page itself is static code holding no data, served to anyone: opened as
`/?token=<token>`, it moves the token into the tab's sessionStorage, takes it off the address
bar and sends it as that header (thumbnails are fetched the same way). No cookie: another site
cannot make the browser send the token, so there is no cross-site request forgery to guard
against; the access log is off, so the token in a URL is written nowhere. Without a token
(loopback only), the decisions route still takes only `application/json`, which no other site
can post without the browser asking this server first (CORS: refused), and requests must name
this machine as their Host, so that a site whose name is made to resolve to 127.0.0.1 (DNS
rebinding) is refused too. The page's Content-Security-Policy runs only its own inline script
(by hash) and fetches only this origin.

Thumbnails (`/thumbs/<image_id>.jpg`): made once from the stored PNG of the `scans` table,
kept in a memory LRU in front of files under `<workdir>/reports/thumbs/<side>/` (a file per
scan, written whole then renamed). Files rather than a LanceDB table: each one is written once
on first view by whichever request comes first, and small appends one by one would leave a
table of thousands of fragments (and versions) to compact, with concurrent writers; a file
needs neither, survives restarts, is shared by every server on the workdir and can be deleted
at will. An image id is the hash of its file's bytes and the workdir's preprocessing is fixed,
so a thumbnail never changes: the browser may keep it (Cache-Control immutable, private).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from fusc_lib import artifacts
from fusc_lib.cluster_model import current_version
from fusc_lib.layout import THUMBS
from fusc_lib.report.thumbnails import thumbnails
from fusc_lib.review import Decision, ReviewState
from fusc_lib.store import Workdir
from jobs.review import Review
from schemas.tables import ASSIGNMENTS
from services.auth import TOKEN_ENV, bearer, check_bearer, digest
from services.serve import check_exposure

PAGE = Path(__file__).with_name("review_page.html")
THUMB_SIDE = 128  # pixels
THUMBS_IN_MEMORY = 4096  # ~12 MB of JPEGs
MONTAGE = 4  # scans per cluster on the overview: its most confident
VERSIONS_KEPT = 2  # model versions whose sessions stay in memory
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]  # Host headers answered without a token
NO_STORE = {"Cache-Control": "no-store"}
THUMB_HEADERS = {"Cache-Control": "private, max-age=31536000, immutable",
                 "X-Content-Type-Options": "nosniff"}


# ------------------------------------------------------------------ what a version keeps


def known_names(state: ReviewState, suggested: dict[int, tuple[str, float]]) -> list[str]:
    """Every name a scan could be moved to: clusters' names, moves' names, suggestions."""
    return sorted({*state.names.values(), *state.moved.values(),
                   *(name for name, _ in suggested.values())}, key=str.casefold)


class ReviewSession:
    """One model version under review: the `Review` and what decisions cannot change."""

    def __init__(self, workdir: Workdir, version: str, stamp: int | None):
        self.review = Review(workdir, version)
        self.version = self.review.version
        self.stamp = stamp  # the `assignments` table version it was built from
        self.montages = self._montages()

    def _montages(self) -> dict[int, list[str]]:
        """cluster -> its MONTAGE most confident scans."""
        review = self.review
        order = np.lexsort((-review.confidences, review.clusters))  # by cluster, then confidence
        by_cluster = review.clusters[order]
        rank = np.arange(len(order)) - np.searchsorted(by_cluster, by_cluster)  # within cluster
        montages: dict[int, list[str]] = {}
        for row in order[rank < MONTAGE]:
            montages.setdefault(int(review.clusters[row]), []).append(review.image_ids[row])
        return montages

    def clusters(self, offset: int, limit: int) -> dict:
        """A page of the cluster overview, with the names a scan can be moved to."""
        review = self.review
        state = review.state
        views = review.overview(state)
        page = [{**asdict(view), "montage": self.montages.get(view.cluster_id, [])}
                for view in views[offset:offset + limit]]
        return {"version": self.version, "scans": len(review.image_ids), "total": len(views),
                "offset": offset, "limit": limit, "decisions": state.decisions,
                "names": known_names(state, review.suggested), "clusters": page}

    def scans(self, cluster: int, offset: int, limit: int) -> dict:
        """A page of a cluster's scans, most likely misplaced first, with their labels now."""
        scans = self.review.strays(cluster, offset, limit)
        return {"version": self.version, "cluster_id": cluster,
                "name": self.review.state.names.get(cluster),
                "total": int((self.review.clusters == cluster).sum()),
                "offset": offset, "limit": limit, "scans": [asdict(s) for s in scans]}

    def decide(self, reviewer: str | None, wanted: list[DecisionIn]) -> int:
        """Append the decisions (`Review.decide` checks actions, names, clusters in range and
        scans this version assigned); returns how many."""
        self.review.decide([Decision(model_version=self.version, reviewer=reviewer,
                                     **d.model_dump()) for d in wanted])
        return len(wanted)


class Sessions:
    """One `ReviewSession` per model version, the fixed one or the workdir's current one."""

    def __init__(self, workdir: Workdir, version: str | None = None):
        self.workdir = workdir
        self.version = version
        self._sessions: OrderedDict[str, ReviewSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, version: str | None = None) -> ReviewSession:
        """The session of `version` (default: the one given at start, else the current one),
        built again when the assignments changed since."""
        if version is not None and version not in self.workdir.cluster_versions():
            raise HTTPException(404, f"no cluster model {version!r} in this workdir")
        version = version or self.version or current_version(self.workdir)
        stamp = self.workdir.table(ASSIGNMENTS).version
        with self._lock:
            session = self._sessions.get(version)
            if session is None or session.stamp != stamp:
                session = self._sessions[version] = ReviewSession(self.workdir, version, stamp)
            self._sessions.move_to_end(version)
            while len(self._sessions) > VERSIONS_KEPT:
                self._sessions.popitem(last=False)
            return session

    def knows(self, image_id: str) -> bool:
        """Whether `image_id` is a scan of the workdir (as a session read them)."""
        with self._lock:
            kept = list(self._sessions.values())
        return any(image_id in s.review.files for s in kept) or image_id in self.get().review.files


# ------------------------------------------------------------------ thumbnails


class Thumbnails:
    """JPEG thumbnails of scans: memory LRU, then `<workdir>/reports/thumbs/<side>/`, then
    made from the `scans` table (and written there)."""

    def __init__(self, workdir: Workdir, side: int = THUMB_SIDE):
        self.workdir, self.side = workdir, side
        self.folder = workdir.path(*THUMBS, str(side))
        self.get = functools.lru_cache(maxsize=THUMBS_IN_MEMORY)(self._load)

    def _load(self, image_id: str) -> bytes | None:
        """The JPEG of `image_id` (an id the caller checked), None when `scans` lacks it."""
        path = f"{self.folder}/{image_id[:2]}/{image_id}.jpg"
        if artifacts.exists(path):
            return artifacts.read_bytes(path)
        made = thumbnails(self.workdir, [image_id], self.side).get(image_id)
        if made is None:
            return None
        jpeg = base64.b64decode(made.split(",", 1)[1])
        try:
            write_whole(path, jpeg)
        except OSError:  # a read-only workdir: serve it from memory
            pass
        return jpeg


def write_whole(uri: str, data: bytes) -> None:
    """Write a file under a temporary name, then rename it: a reader sees all of it or none."""
    filesystem, path = artifacts.resolve(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(data)
    filesystem.move(temporary, path)


# ------------------------------------------------------------------ the page and its headers


def page_headers(html: str) -> dict[str, str]:
    """Headers of the page: a CSP that runs only its own inline script and style (by hash)
    and reaches only this origin; no referrer; not cached (a new version shows at once)."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                        for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; "
              f"style-src {hashes('style')}; img-src 'self' blob: data:; connect-src 'self'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", **NO_STORE}


# ------------------------------------------------------------------ the API


class DecisionIn(BaseModel):
    """One decision as the page sends it (fusc_lib.review.Decision checks the rest)."""

    action: Literal["name", "mixed", "unmixed", "move", "exclude", "restore"]
    cluster_id: int | None = Field(None, ge=0)
    image_id: str | None = Field(None, max_length=200)
    name: str | None = Field(None, max_length=1000)


class DecisionsIn(BaseModel):
    """Decisions to append, on one model version, by one reviewer."""

    version: str | None = Field(None, description="Model version the page shows. Default: "
                                "the server's.")
    reviewer: str | None = Field(None, max_length=200)
    decisions: list[DecisionIn] = Field(min_length=1, max_length=1000)


Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=500)]


def token_check(token: str | None) -> Callable:
    """A dependency: 401 unless the request carries `Authorization: Bearer <token>`; every
    request passes when `token` is None. Compares digests in constant time."""
    expected = digest(token) if token else None

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(bearer)]) -> None:
        check_bearer(credentials, expected)

    return require_token


def build_app(workdir: Workdir, version: str | None = None, token: str | None = None,
              sessions: Sessions | None = None) -> FastAPI:
    """The review application: the page at `/`, the JSON API under `/api`, thumbnails under
    `/thumbs` (both behind `token` when given; without one, only loopback Host names are
    answered). No OpenAPI pages: they would load assets from a CDN."""
    sessions = sessions or Sessions(workdir, version)
    thumbs = Thumbnails(workdir)
    html = PAGE.read_text()
    headers = page_headers(html)
    app = FastAPI(title="FUSC review", docs_url=None, redoc_url=None, openapi_url=None)
    api = APIRouter(dependencies=[Depends(token_check(token))])
    if token is None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)

    @app.exception_handler(ValueError)
    async def refused(request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    @api.get("/api/clusters")
    def clusters(offset: Offset = 0, limit: Limit = 24, version: str | None = None):
        """A page of the clusters: size, name, suggested name, mixed, montage."""
        return JSONResponse(sessions.get(version).clusters(offset, limit), headers=NO_STORE)

    @api.get("/api/clusters/{cluster_id}/scans")
    def scans(cluster_id: int, offset: Offset = 0, limit: Limit = 48,
              version: str | None = None):
        """A page of a cluster's scans, most likely misplaced first."""
        return JSONResponse(sessions.get(version).scans(cluster_id, offset, limit),
                            headers=NO_STORE)

    @api.post("/api/decisions")
    def decisions(body: DecisionsIn):
        """Append decisions; the page reads the state back."""
        session = sessions.get(body.version)
        recorded = session.decide((body.reviewer or "").strip() or None, body.decisions)
        return JSONResponse({"version": session.version, "recorded": recorded},
                            headers=NO_STORE)

    @api.get("/thumbs/{image_id}.jpg")
    def thumb(image_id: str):
        """A scan's thumbnail (JPEG), made once."""
        jpeg = thumbs.get(image_id) if sessions.knows(image_id) else None
        if jpeg is None:
            raise HTTPException(404, f"no scan {image_id!r}")
        return Response(jpeg, media_type="image/jpeg", headers=THUMB_HEADERS)

    app.include_router(api)
    return app


# ------------------------------------------------------------------ the command


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so that a port in use is said before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def server(app: FastAPI) -> uvicorn.Server:
    """A uvicorn server of `app`: warnings only, no access log (a URL may carry the token)."""
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve_review(workdir: str, version: str | None, host: str, port: int, token: str | None,
                 echo: Callable[[str], None] = print) -> None:
    """Serve the review page of `version` (default: the current one) on host:port until
    Ctrl-C. Refuses a host other than loopback without a token; a port in use, a missing
    model or missing assignments are said before anything is served."""
    check_exposure(host, token)
    sock = listen(host, port)
    try:
        store = Workdir(workdir)
        sessions = Sessions(store, version)
        session = sessions.get()
    except BaseException:
        sock.close()
        raise
    # the stray ranking, ready for the first click
    threading.Thread(target=lambda: session.review.stray_ranking, daemon=True).start()
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    scans = len(session.review.assigned)
    echo(f"reviewing model {session.version} of {store.root} ({scans} scans) "
         f"on {url}" + (f"?token=<${TOKEN_ENV}> (token required)" if token else "")
         + ". Ctrl-C to stop.")
    try:
        server(build_app(store, version, token, sessions)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully, then raises Ctrl-C again
        pass
