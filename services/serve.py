"""`fusc serve`: the cluster of a new scan over HTTP, on Ray Serve with a FastAPI ingress.

Starts and stops the application: one deployment, `services.deployment.ClusterService`, whose
replicas, autoscaling and HTTP options come from a Serve config file (deploy/serve.yaml), which
`serve deploy` also accepts as it is (`import_path: services.serve:build_app`). Its live settings
are validated here as the deployment's `ServiceConfig` before anything starts.
"""

import ipaddress
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from fusc_lib.config import DEFAULT_WORKDIR, ServeOptions
from fusc_lib.store import Workdir
from services.auth import TOKEN_ENV, digest
from services.deployment import ClusterService, ServiceConfig

APP_NAME = "fusc"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "serve.yaml"
DEFAULT_REQUEST_TIMEOUT_S = 30.0


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
                               digest(token) if token else None)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost or a loopback address)."""
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


def start(workdir: str, *, host: str = ServeOptions().host, port: int = ServeOptions().port,
          model: str | None = None,
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
    serve.run(ClusterService.options(**options).bind(Workdir(workdir).root,
                                                     digest(token) if token else None),
              name=APP_NAME, route_prefix=application.get("route_prefix", "/"))
    return f"http://{host}:{port}"


def stop(shared_cluster: bool = False) -> None:
    """Take the service down: the application on a shared cluster, else Serve itself."""
    if shared_cluster:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()


def serve_until_stopped(shared_cluster: bool, on_stop: Callable[[], None]) -> None:
    """Block until Ctrl-C or SIGTERM, then call `on_stop()` and take the service down."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        on_stop()
        stop(shared_cluster)
