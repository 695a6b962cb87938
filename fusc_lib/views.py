"""The view vocabulary: burnt-in OCR text -> canonical view, and views -> super-classes.

The vocabulary is data (`fusc_lib/vocab/views.yaml`), not code, because every hospital types view
names its own way; a data team extends the file instead of patching the matcher.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

UNKNOWN = "unknown"
_FUZZY_FROM = 5  # aliases this long also match with one wrong, missing or extra letter
_NON_ALNUM = re.compile(r"[^0-9A-Z]+")


_CONFUSABLE = str.maketrans("OILS", "0115")  # letters OCR reads for digits and back


def _squash(text: str) -> str:
    """Upper-case, fold confusable letters, drop separators: '4 ch', '4-CH', '4CH' are one."""
    return _NON_ALNUM.sub("", text.upper()).translate(_CONFUSABLE)


def _words(text: str) -> list[str]:
    return [w.translate(_CONFUSABLE) for w in _NON_ALNUM.split(text.upper()) if w]


def _names(alias: str, words: list[str], fuzzy: bool) -> bool:
    """True when a run of consecutive whole words spells the alias ("4", "CH" spell "4CH").

    Whole words only, so "TV" is not found in "TVUS"; with `fuzzy`, aliases of five characters or
    more also match with one OCR slip.
    """
    fuzzy = fuzzy and len(alias) >= _FUZZY_FROM
    for start in range(len(words)):
        joined = ""
        for word in words[start:]:
            joined += word
            if len(joined) > len(alias) + 1:
                break
            if joined == alias or (fuzzy and _within_one_edit(joined, alias)):
                return True
    return False


def _within_one_edit(a: str, b: str) -> bool:
    """True when `a` becomes `b` with at most one substitution, insertion or deletion."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i + (len(a) == len(b)):] == b[i + 1:]


@dataclass(frozen=True)
class Alias:
    squashed: str
    label: str
    weight: float


@dataclass(frozen=True)
class ViewMatch:
    """The view the text names (`unknown` when none) and how sure we are, in [0, 1]."""

    view: str
    confidence: float
    text: str = ""


class ViewVocabulary:
    """Maps OCR text to one of the canonical views, a super-class, or `unknown`."""

    def __init__(self, spec: dict):
        self.super_classes: dict[str, list[str]] = spec["super_classes"]
        self.views: list[str] = list(spec["views"])
        self._aliases = self._build_aliases(spec)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ViewVocabulary:
        """Read a vocabulary file; the packaged default when `path` is None."""
        if path is None:
            text = resources.files("fusc_lib.vocab").joinpath("views.yaml").read_text()
        else:
            text = Path(path).read_text()
        return cls(yaml.safe_load(text))

    @staticmethod
    def _build_aliases(spec: dict) -> list[Alias]:
        aliases = [Alias(_squash(a), view, 1.0)
                   for view, entry in spec["views"].items() for a in entry["aliases"]]
        regions = spec.get("regions", {})
        aliases += [Alias(_squash(a), region, float(regions.get("weight", 1.0)))
                    for region, names in regions.get("names", {}).items() for a in names]
        measurements = spec.get("measurements", {})
        weight = float(measurements.get("weight", 1.0))
        aliases += [Alias(_squash(a), view, weight)
                    for view, names in measurements.get("labels", {}).items() for a in names]
        # Longest first: "THREE VESSEL TRACHEA" must win over "CORD" style short words.
        return sorted(aliases, key=lambda a: -len(a.squashed))

    @property
    def labels(self) -> list[str]:
        """Every value `match` can return."""
        return self.views + list(self.super_classes) + [UNKNOWN]

    def super_class(self, view: str) -> str:
        """The super-class of a view (a super-class maps to itself; anything else to unknown)."""
        if view in self.super_classes:
            return view
        for name, members in self.super_classes.items():
            if view in members:
                return name
        return UNKNOWN

    def match_line(self, line: str) -> Alias | None:
        """The best alias named by one line of screen text, or None."""
        words = _words(line)
        for fuzzy in (False, True):  # "RV OUTFLOW" must not become "LV OUTFLOW" by one slip
            found = next((a for a in self._aliases if _names(a.squashed, words, fuzzy)), None)
            if found:
                return found
        return None

    def match(self, lines: Iterable[tuple[str, float]]) -> ViewMatch:
        """Map the text lines of one image (text, OCR confidence) to a view.

        A typed view name beats a region or a caliper label whatever their OCR confidence (the
        weight ranks first); then the more confident read, then the longer alias. Lines that name
        no view are ignored, so machine text (dates, presets) costs nothing.
        """
        best: tuple[float, float, int, ViewMatch] | None = None
        for text, ocr_confidence in lines:
            alias = self.match_line(text)
            if alias is None:
                continue
            score = float(ocr_confidence) * alias.weight
            candidate = (alias.weight, score, len(alias.squashed),
                         ViewMatch(alias.label, score, text))
            if best is None or candidate[:3] > best[:3]:
                best = candidate
        return best[3] if best else ViewMatch(UNKNOWN, 0.0)


@lru_cache(maxsize=8)
def load_vocabulary(path: str | None = None) -> ViewVocabulary:
    """Cached `ViewVocabulary.load`, for per-image callers."""
    return ViewVocabulary.load(path)
