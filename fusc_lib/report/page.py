"""The report page: colours, the per-cluster cards and the map's data, rendered through
`page.html.j2` (Jinja2, autoescaped: file names and labels cannot inject markup)."""

from __future__ import annotations

import colorsys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import matplotlib

TEMPLATE = "page.html.j2"
MIX_PARTS = 6  # the largest parts of a cluster's view or site mix; the rest is "other"
OTHER_COLOUR = "#bbbbbb"


def palette(n: int) -> list[str]:
    """`n` distinct colours: matplotlib's tab10/tab20, then evenly spaced hues."""
    if n <= 10:
        return [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors[:n]]
    if n <= 20:
        return [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors[:n]]
    return [matplotlib.colors.to_hex(colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.65, 0.85))
            for i in range(n)]


@dataclass
class Thumb:
    uri: str
    confidence: float
    title: str  # the scan's file name (and frame)


@dataclass
class MixPart:
    name: str
    share: float
    colour: str


@dataclass
class ClusterCard:
    id: int
    name: str | None
    size: int
    share: float
    mean_confidence: float
    colour: str
    most: list[Thumb] = field(default_factory=list)
    least: list[Thumb] = field(default_factory=list)
    view_mix: list[MixPart] = field(default_factory=list)
    site_mix: list[MixPart] = field(default_factory=list)


def mix(values: Sequence[str], colours: dict[str, str]) -> list[MixPart]:
    """Shares of the most frequent values (MIX_PARTS of them), the rest as one "other"."""
    counts = Counter(values)
    total = sum(counts.values())
    top = counts.most_common(MIX_PARTS)
    parts = [MixPart(name, n / total, colours[name]) for name, n in top]
    rest = total - sum(n for _, n in top)
    return parts + ([MixPart("other", rest / total, OTHER_COLOUR)] if rest else [])


def colours_of(values: Sequence[str]) -> dict[str, str]:
    """A colour for each distinct value, most frequent first, so the big ones differ most."""
    names = [name for name, _ in Counter(values).most_common()]
    return dict(zip(names, palette(len(names))))


def map_data(coordinates, clusters: Sequence[int], n_clusters: int, sites: Sequence[str],
             views: Sequence[str], thumbs: Sequence[str]) -> dict:
    """The map's points and, per colouring (cluster, site, view), names and colours by index."""
    site_colours, view_colours = colours_of(sites), colours_of(views)
    site_names, view_names = list(site_colours), list(view_colours)
    site_index = {name: i for i, name in enumerate(site_names)}
    view_index = {name: i for i, name in enumerate(view_names)}
    points = [{"x": round(float(x), 4), "y": round(float(y), 4), "cluster": int(c),
               "site": site_index[s], "view": view_index[v], "thumb": t}
              for (x, y), c, s, v, t in zip(coordinates, clusters, sites, views, thumbs)]
    return {"points": points,
            "names": {"cluster": [str(c) for c in range(n_clusters)], "site": site_names,
                      "view": view_names},
            "colours": {"cluster": palette(n_clusters), "site": list(site_colours.values()),
                        "view": list(view_colours.values())}}


def render(**context) -> str:
    """The page's HTML from its context (see page.html.j2 for the names it reads)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
        undefined=jinja2.StrictUndefined)
    return environment.get_template(TEMPLATE).render(**context)
