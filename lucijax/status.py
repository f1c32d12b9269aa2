"""The outcome of every pixel, one code for every mode (the ``STATUS`` map).

Failures inside compiled programs are data, not exceptions: each fitter and sampler returns
a :class:`Status` per pixel (an ``int32`` array inside ``jit``), the engine marks the pixels
it never computed as :attr:`Status.MASKED`, and the maps carry the code as ``STATUS``.
:func:`describe` gives the one-line message of a code, :func:`counts_line` a summary of a map.
"""

from __future__ import annotations

import enum

import numpy as np


class Status(enum.IntEnum):
    """Per-pixel outcome. Codes below 0 were not computed; 0 is a good result; the other
    codes say what went wrong, most serious first when several apply."""

    #: Left out by a mask (``mask=``, a binned view's empty bins): not computed, maps NaN.
    MASKED = -1
    #: Converged.
    CONVERGED = 0
    #: NaN/inf, all-zero or masked spectrum (too few valid channels): maps are NaN.
    INVALID_INPUT = 1
    #: The iteration budget ended before the fit converged.
    NOT_CONVERGED = 2
    #: A velocity, or a broadening at its upper limit, sits on a bound.
    AT_BOUND = 3
    #: The broadening went to zero (line unresolved); the other quantities are valid.
    UNRESOLVED = 4
    #: The Fisher matrix could not be inverted: uncertainties are NaN.
    SINGULAR = 5
    #: A sampler's chains did not mix (split R-hat above the sampler's threshold, or
    #: divergent transitions): the posterior summaries of this pixel are not to be trusted.
    NOT_MIXED = 6
    #: No line detected: the line amplitudes are consistent with zero (their joint
    #: significance is below the solver's ``detection_chi2``), e.g. a spectrum of noise
    #: only. Fluxes and their errors are valid (an upper limit); velocity and broadening
    #: are not measured.
    NO_LINE = 7
    #: Another velocity fits almost as well (``MAP(ambiguity_chi2=...)``): the matched
    #: filter's grid has a peak farther than one FWHM from the fit within that chi2 of it
    #: (or better); its velocity is in ``{LINE}_ALT_VELOCITY``. The values are those of
    #: the fitted minimum, which may be an alias.
    AMBIGUOUS = 8


#: One line per code, as printed in summaries and the CLI's help.
MESSAGES: dict[Status, str] = {
    Status.MASKED: "masked out: not computed, maps are NaN",
    Status.CONVERGED: "converged",
    Status.INVALID_INPUT: "invalid input (NaN/inf, all zero or too few valid channels): maps are NaN",
    Status.NOT_CONVERGED: "not converged within the iteration budget",
    Status.AT_BOUND: "a velocity, or a broadening at its upper limit, on a bound",
    Status.UNRESOLVED: "broadening went to zero (line unresolved); the other quantities are valid",
    Status.SINGULAR: "singular Fisher matrix: uncertainties are NaN",
    Status.NOT_MIXED: "posterior chains did not mix (R-hat above threshold or divergences)",
    Status.NO_LINE: "no line detected (amplitudes consistent with zero): fluxes are upper limits, velocity unmeasured",
    Status.AMBIGUOUS: "another velocity fits almost as well (or better): see {LINE}_ALT_VELOCITY, _ALT_DCHI2",
}

#: Statuses whose values are usable (the others are NaN, or flagged as suspect).
GOOD = (Status.CONVERGED, Status.UNRESOLVED)


def describe(code: int) -> str:
    """The message of a status code (``'unknown status 9'`` for a code not in the enum)."""
    try:
        return MESSAGES[Status(int(code))]
    except ValueError:
        return f"unknown status {int(code)}"


def help_text() -> str:
    """``'STATUS: -1 masked, 0 converged, 1 invalid input, ...'`` (one line)."""
    return "STATUS: " + ", ".join(f"{int(s)} {s.name.lower().replace('_', ' ')}" for s in Status)


def counts(status_map) -> dict[int, int]:
    """``{code: number of pixels}`` of a status map."""
    values, n = np.unique(np.asarray(status_map), return_counts=True)
    return {int(v): int(k) for v, k in zip(values, n)}


def counts_line(status_map) -> str:
    """One line: ``'0 converged: 1012, 4 unresolved: 3, -1 masked: 9'``."""
    parts = []
    for code, n in counts(status_map).items():
        try:
            name = Status(code).name.lower().replace("_", " ")
        except ValueError:
            name = "unknown"
        parts.append(f"{code} {name}: {n}")
    return ", ".join(parts)


__all__ = ["Status", "MESSAGES", "GOOD", "describe", "help_text", "counts", "counts_line"]
