"""Series rules: which DICOM series is which modality, by regular expressions on its description."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ModalityError
from ..scan import canonical_modality
from ..uids import uid_hash

#: a description that says "pre-contrast" or "non-contrast" is never t1ce
_NOT_PRE = r"^(?!.*(?<![a-z])(pre|non)[-_ ]?(contrast|gd|gad|c(?![a-z]))).*"
#: default series rules: modality -> regular expressions (case-insensitive) searched in
#: SeriesDescription, then ProtocolName. A series takes the first modality in
#: :data:`CLASSIFY_ORDER` that matches, so ``T2 FLAIR`` is flair and ``T1 POST`` is t1ce.
DEFAULT_SERIES_RULES: dict[str, tuple[str, ...]] = {
    "flair": (r"(?<!t1)(?<!t1[-_ ])flair", r"t2[-_ ]?f(?![a-z])", r"dark[-_ ]?fluid", r"tirm"),
    "t1ce": tuple(
        _NOT_PRE + p
        for p in (
            r"t1.*((?<![a-z])ce(?![a-z])|gd|gad|post|contrast|\+ ?c)",
            r"mp-?rage.*(gd|gad|post|\+ ?c)",
            r"t1c(?![a-z])",
            r"(?<![a-z])(ce|gd|post)[-_ ]*t1",
        )
    ),
    "t2": (r"t2(?![-_ ]?(\*|star))",),
    "t1": (r"t1", r"mp-?rage"),
}
#: the order in which default rules are tried (user rules come first)
CLASSIFY_ORDER = ("flair", "t1ce", "t2", "t1")


@dataclass(frozen=True)
class SeriesInfo:
    """What the mapping rules see of a series.

    Attributes
    ----------
    uid : SeriesInstanceUID (raw; never log it, use :attr:`short_hash`)
    description : SeriesDescription, whitespace collapsed
    protocol : ProtocolName, whitespace collapsed
    instances : number of images (frames: a multi-frame file counts each frame)
    files : number of files holding them (0: not counted)
    problem : why a file of the series cannot be used (``""``: none), shown in listings
    """

    uid: str
    description: str = ""
    protocol: str = ""
    instances: int = 0
    files: int = 0
    problem: str = ""

    @property
    def short_hash(self) -> str:
        return uid_hash(self.uid)[:8]

    def label(self) -> str:
        name = self.description or self.protocol or "(no description)"
        if self.files and self.files != self.instances:
            count = f"{self.instances} frames in {self.files} file{'s' if self.files > 1 else ''}"
        else:
            count = f"{self.instances} images"
        unusable = f", unusable: {self.problem}" if self.problem else ""
        return f"'{name}' ({count}, uid {self.short_hash}{unusable})"


def map_series(
    series: Sequence[SeriesInfo],
    modalities: Sequence[str],
    rules: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, SeriesInfo]:
    """Pick one series per modality by regular expressions on its description.

    Parameters
    ----------
    series : the series found
    modalities : canonical names or aliases of the modalities wanted
    rules : modality -> regular expressions (case-insensitive) that replace the defaults of
        that modality; user rules are tried before the defaults

    Returns
    -------
    dict
        canonical modality -> its series. A single series and a single modality map directly.

    Raises
    ------
    ModalityError
        One line naming each modality that matches no series or several, listing the series
        found and how to choose (``--series-rule MODALITY=REGEX``).
    """
    wanted = canonical_modalities(modalities)
    ordered = _compile_rules(rules)
    if len(series) == 1 and len(wanted) == 1:
        return {wanted[0]: series[0]}
    matches: dict[str, list[SeriesInfo]] = {m: [] for m in wanted}
    for s in series:
        modality = _classify(s, ordered)
        if modality in matches:
            matches[modality].append(s)
    problems = []
    for m, found in matches.items():
        if not found:
            problems.append(f"{m} matches no series")
        elif len(found) > 1:
            problems.append(f"{m} matches {len(found)} series ({', '.join(s.label() for s in found)})")
    if problems:
        listing = ", ".join(s.label() for s in sorted(series, key=lambda s: (s.description, s.uid)))
        raise ModalityError(
            f"cannot map DICOM series to modalities: {'; '.join(problems)}; series found: "
            f"{listing or 'none'}; choose with --series-rule MODALITY=REGEX (a regular "
            "expression searched in SeriesDescription, then ProtocolName)"
        )
    return {m: found[0] for m, found in matches.items()}


def canonical_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of the requested modalities; unknown or repeated names are refused."""
    wanted = []
    for name in modalities:
        canonical = canonical_modality(name)
        if canonical is None:
            raise ModalityError(f"unknown modality {name!r}; use t1, t1ce, t2 or flair")
        if canonical in wanted:
            raise ModalityError(f"modality {canonical} is requested twice; list each modality once")
        wanted.append(canonical)
    if not wanted:
        raise ModalityError("no modality requested; name at least one of t1, t1ce, t2, flair")
    return tuple(wanted)


def _compile_rules(rules: Mapping[str, Sequence[str]] | None) -> list[tuple[str, list[re.Pattern]]]:
    """User rules first (replacing that modality's defaults), then the defaults in order."""
    user: dict[str, list[re.Pattern]] = {}
    for key, patterns in (rules or {}).items():
        modality = canonical_modality(key)
        if modality is None:
            raise ModalityError(f"series rule for unknown modality {key!r}; use t1, t1ce, t2 or flair")
        if isinstance(patterns, str):
            patterns = [patterns]
        user[modality] = [_compile_rule(modality, p) for p in patterns]
    defaults = [(m, [_compile_rule(m, p) for p in DEFAULT_SERIES_RULES[m]]) for m in CLASSIFY_ORDER if m not in user]
    return list(user.items()) + defaults


def _compile_rule(modality: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ModalityError(
            f"series rule {pattern!r} for {modality} is not a valid regular expression ({exc}); fix it"
        ) from exc


def _classify(series: SeriesInfo, ordered: list[tuple[str, list[re.Pattern]]]) -> str | None:
    """The first modality whose rules match the description, else the protocol name."""
    for text in (series.description, series.protocol):
        if not text:
            continue
        for modality, patterns in ordered:
            if any(p.search(text) for p in patterns):
                return modality
    return None
