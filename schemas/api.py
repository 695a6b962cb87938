"""Response bodies of the HTTP API (`fusc serve`): the contract with its clients.

The routes return what `fusc_lib.online` computes; these models validate it and describe it in
the OpenAPI document, as tables.py does for the tables.
"""

from pydantic import BaseModel


class ClusterOut(BaseModel):
    """One cluster of a scan's top k, with its probability."""

    cluster_id: int
    probability: float


class ClusterResponse(BaseModel):
    """POST /v1/cluster: the scan's cluster under the served model."""

    image_id: str
    cluster_id: int
    cluster_name: str | None
    confidence: float
    top_k: list[ClusterOut]
    model_version: str
    pseudo_view: str


class SimilarScan(BaseModel):
    """One archived scan near the one sent, with where it came from and its cluster."""

    image_id: str
    source_uri: str | None
    frame: int | None
    similarity: float
    cluster_id: int | None
    cluster_name: str | None


class SimilarResponse(BaseModel):
    """POST /v1/similar: the archived scans nearest to the one sent, most similar first."""

    image_id: str
    model_version: str
    embedding: str
    results: list[SimilarScan]
