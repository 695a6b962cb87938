"""The bearer token of `fusc serve`, checked as a FastAPI dependency.

The token is read from $FUSC_API_TOKEN by the process that deploys; only its SHA-256 travels to
the replicas, as the `token_sha256` their deployment object is built with. `require_token`
reaches that object through Serve's replica context, the instance Serve itself passes as `self`
to the routes of a class-based ingress; the check holds no state of its own.
"""

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve

TOKEN_ENV = "FUSC_API_TOKEN"

bearer = HTTPBearer(auto_error=False, description=f"The token in ${TOKEN_ENV}, when it is set.")


def digest(token: str) -> str:
    """The SHA-256 (hex) of a token: what a replica holds and compares, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_bearer(credentials: HTTPAuthorizationCredentials | None, expected: str | None
                 ) -> None:
    """401 unless `credentials` carry the token whose digest is `expected`; passes every
    request when `expected` is None. The digests are compared in constant time."""
    if expected is None:
        return
    given = digest(credentials.credentials) if credentials else ""
    if not hmac.compare_digest(given, expected):
        raise HTTPException(401, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` with the replica's token;
    every request passes when the service was started without one."""
    check_bearer(credentials, serve.get_replica_context().servable_object.token_sha256)
