"""Line catalogue and the description of the line set to fit.

Rest wavelengths are **air** wavelengths in nm, the values of ORB's line table (Martin et
al. 2015; ``orb.core.Lines``), which ORCS and LUCI share, so that velocities are
comparable between the codes. A 0.002 nm error in a rest wavelength is a ~1 km/s bias:
keep this the only table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Air rest wavelengths (nm).
LINE_CATALOGUE_NM: dict[str, float] = {
    "Halpha": 656.2819,
    "Hbeta": 486.1333,
    "Hgamma": 434.0471,
    "NII6548": 654.805,
    "NII6583": 658.345,
    "SII6716": 671.644,
    "SII6731": 673.0816,
    "OIII4959": 495.8911,
    "OIII5007": 500.6843,
    "OII3726": 372.603,
    "OII3729": 372.882,
    "HeI5876": 587.567,
    "HeII4686": 468.57,
    "OI6300": 630.0304,
    # lines of the C filters' networks (issue 21 item 7): NIST ASD air wavelengths (Balmer
    # lines as Hbeta/Hgamma above; forbidden lines as tabulated by Osterbrock & Ferland 2006)
    "Hdelta": 410.1742,
    "NeIII3869": 386.876,
    "OIII4363": 436.3209,
    "NII5755": 575.459,
}

#: Other spellings users type, mapped to the catalogue names.
LINE_ALIASES: dict[str, str] = {
    "HA": "Halpha",
    "HALPHA": "Halpha",
    "HB": "Hbeta",
    "HBETA": "Hbeta",
    "HG": "Hgamma",
    "HGAMMA": "Hgamma",
    "HD": "Hdelta",
    "HDELTA": "Hdelta",
    "NEIII3868": "NeIII3869",
    "NII5754": "NII5755",
    "NII6584": "NII6583",
    "NII6548": "NII6548",
    "NII6549": "NII6548",
    "SII6717": "SII6716",
    "SII6731": "SII6731",
    "SII6730": "SII6731",
    "OIII5007": "OIII5007",
    "OIII4959": "OIII4959",
    "OII3727": "OII3726",
    "OII3726": "OII3726",
    "OII3729": "OII3729",
}

#: Flux ratios fixed by atomic physics: (dependent, primary, flux(dependent)/flux(primary)).
NII_TIE = ("NII6548", "NII6583", 1.0 / 3.0)
OIII_TIE = ("OIII4959", "OIII5007", 1.0 / 3.0)

#: Energy-flux ratio F([OII]3729) / F([OII]3726) between its high-density limit (10^6-10^7
#: cm^-3) and its low-density limit (1 cm^-3) at T = 10^4 K, from PyNeb's O+ emissivities
#: (``lucijax.nebular.atomic.oii_ratio_limits``; ``tests/test_ratio_ranges.py`` checks it
#: against PyNeb): the physical range of the density-sensitive doublet.
OII_RATIO_RANGE = (0.3466, 1.4992)

#: Ratio ranges a :class:`~lucijax.description.Model` applies by default (when both lines are
#: fitted as free lines of one kinematic and broadening group): (dependent, primary, (lo, hi)).
DEFAULT_RATIO_RANGES = (("OII3729", "OII3726", OII_RATIO_RANGE),)


class UnknownLineError(ValueError):
    """A line name that is not in the catalogue."""


def canonical_line_name(name: str) -> str:
    """Map a user-typed line name ('Ha', '[NII]6584', 'nii6583') to its catalogue name."""
    if name in LINE_CATALOGUE_NM:
        return name
    key = re.sub(r"[\[\]\s_\-]", "", str(name)).upper()
    for cat in LINE_CATALOGUE_NM:
        if cat.upper() == key:
            return cat
    if key in LINE_ALIASES:
        return LINE_ALIASES[key]
    raise UnknownLineError(
        f"unknown line '{name}'; known lines: {', '.join(LINE_CATALOGUE_NM)} "
        "(or give a user line as NAME=WAVELENGTH_NM, e.g. 'ArIII7136=713.579')"
    )


def parse_line(spec: str) -> tuple[str, float]:
    """Parse 'Halpha' or a user line 'NAME=air_wavelength_nm' into (name, air nm)."""
    if "=" in spec:
        name, _, wl = spec.partition("=")
        try:
            wavelength_nm = float(wl)
        except ValueError as err:
            raise UnknownLineError(f"cannot read the wavelength in line '{spec}' (NAME=NM)") from err
        if not 100.0 < wavelength_nm < 2000.0:
            raise UnknownLineError(f"line '{spec}': wavelength must be an air wavelength in nm")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\[\]]*", name):
            raise UnknownLineError(f"line '{spec}': give the line a name that starts with a letter and has only "
                                   "letters, digits, _ and [] (it names the maps), e.g. 'ArIII7136=713.579'")
        return name, wavelength_nm
    name = canonical_line_name(spec)
    return name, LINE_CATALOGUE_NM[name]


@dataclass(frozen=True)
class LineSet:
    """The lines to fit and how their parameters are shared.

    Attributes
    ----------
    names : tuple of str
        Line names, in fit order.
    rest_nm : tuple of float
        Air rest wavelength of each line (nm).
    groups : tuple of int
        Kinematic group of each line (0..n_groups-1): lines of a group share one velocity
        (and, without ``broadening_groups``, one broadening).
    ties : tuple of (int, int, float)
        ``(dependent, primary, ratio)``: flux(dependent) = ratio * flux(primary); the
        dependent line has no amplitude of its own.
    velocity_chain : tuple of (int, int)
        ``(group, base_group)``: the velocity parameter of ``group`` is its offset from the
        velocity of ``base_group`` (kinematic components ordered in velocity; see
        :mod:`lucijax.solvers.components`). Empty (default): every velocity parameter is the
        group's velocity itself.
    absorption : tuple of int
        Indices of absorption lines: their columns are the negative of the line profile,
        so that a non-negative amplitude parameter (the depth) gives a negative amplitude
        and flux (see :func:`absorption_line_set`). Empty (default): emission lines only.
    ratio_ranges : tuple of (int, int, float, float)
        ``(dependent, primary, lo, hi)``: ``lo <= flux(dependent)/flux(primary) <= hi``
        (energy fluxes), for two free (untied) emission lines of one kinematic and broadening
        group, e.g. the density-sensitive [OII]3729/3726. The two lines' amplitude columns
        become the cone ``c_lo (primary + lo x dependent) + c_hi (primary + hi x dependent)``,
        ``c >= 0`` (:class:`~lucijax.model.LineModel`), so the non-negative amplitudes of the
        fit keep the ratio in its range. Empty (default): free ratios.
    """

    names: tuple[str, ...]
    rest_nm: tuple[float, ...]
    groups: tuple[int, ...]
    ties: tuple[tuple[int, int, float], ...] = field(default=())
    velocity_chain: tuple[tuple[int, int], ...] = field(default=())
    absorption: tuple[int, ...] = field(default=())
    broadening_groups: tuple[int, ...] | None = None
    ratio_ranges: tuple[tuple[int, int, float, float], ...] = field(default=())

    def __post_init__(self):
        n = len(self.names)
        if self.broadening_groups is not None:
            bg = tuple(int(b) for b in self.broadening_groups)
            if len(bg) != n:
                raise ValueError(f"{len(bg)} broadening groups given for {n} lines")
            if sorted(set(bg)) != list(range(max(bg) + 1)):
                raise ValueError(f"broadening groups must be numbered 0..B-1, got {bg}")
            object.__setattr__(self, "broadening_groups", None if bg == tuple(self.groups) else bg)
        if n == 0:
            raise ValueError("the line set is empty: give at least one line")
        if len(self.rest_nm) != n or len(self.groups) != n:
            raise ValueError("names, rest_nm and groups must have the same length")
        if len(set(self.names)) != n:
            raise ValueError(f"a line is listed twice: {list(self.names)}")
        if sorted(set(self.groups)) != list(range(max(self.groups) + 1)):
            raise ValueError(f"kinematic groups must be numbered 0..G-1, got {self.groups}")
        dependents = [d for d, _, _ in self.ties]
        if len(set(dependents)) != len(dependents):
            raise ValueError("a line is tied twice")
        for d, p, _ in self.ties:
            if p in dependents:
                raise ValueError(f"line {self.names[p]} is tied to another line and cannot be a primary")
            if self.groups[d] != self.groups[p]:
                raise ValueError(f"tied lines {self.names[d]} and {self.names[p]} must share a kinematic group")
            if self.broadening_of[d] != self.broadening_of[p]:
                raise ValueError(f"tied lines {self.names[d]} and {self.names[p]} must share a broadening group")
        chained = [g for g, _ in self.velocity_chain]
        if len(set(chained)) != len(chained):
            raise ValueError(f"a group is offset from two base groups: {self.velocity_chain}")
        n_groups = max(self.groups) + 1
        for g, b in self.velocity_chain:
            if not (0 <= g < n_groups and 0 <= b < n_groups) or g == b:
                raise ValueError(f"velocity chain ({g}, {b}) must link two different groups of 0..{n_groups - 1}")
        self.velocity_matrix()  # raises on a cycle
        if any(not 0 <= i < n for i in self.absorption) or len(set(self.absorption)) != len(self.absorption):
            raise ValueError(f"absorption lines {self.absorption} must be distinct indices of 0..{n - 1}")
        for d, p, _ in self.ties:
            if (d in self.absorption) != (p in self.absorption):
                raise ValueError(f"tied lines {self.names[d]} and {self.names[p]} must both be emission or absorption")
        object.__setattr__(self, "ratio_ranges", tuple((int(d), int(p), float(lo), float(hi))
                                                       for d, p, lo, hi in self.ratio_ranges))
        ranged = [i for d, p, _, _ in self.ratio_ranges for i in (d, p)]
        if len(set(ranged)) != len(ranged):
            raise ValueError("a line is in two ratio ranges")
        for d, p, lo, hi in self.ratio_ranges:
            if not (0 <= d < n and 0 <= p < n) or d == p:
                raise ValueError(f"ratio range ({d}, {p}) must name two different lines of 0..{n - 1}")
            what = f"the ratio range of {self.names[d]}/{self.names[p]}"
            if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo < hi):
                raise ValueError(f"{what} {lo:g}:{hi:g} must satisfy 0 <= min < max")
            if d in dependents or p in dependents:
                raise ValueError(f"{what}: a tied line has no amplitude of its own")
            if any(q in (d, p) for _, q, _ in self.ties):
                raise ValueError(f"{what}: a line with tied lines cannot be in a ratio range")
            if self.groups[d] != self.groups[p] or self.broadening_of[d] != self.broadening_of[p]:
                raise ValueError(f"{what}: both lines must share a kinematic and a broadening group")
            if d in self.absorption or p in self.absorption:
                raise ValueError(f"{what}: ratio ranges are for emission lines")

    def line_sign(self) -> np.ndarray:
        """+1 for each emission line, -1 for each absorption line (float64)."""
        sign = np.ones(self.n_lines)
        sign[list(self.absorption)] = -1.0
        return sign

    @property
    def absorption_groups(self) -> tuple[int, ...]:
        """Kinematic groups that hold absorption lines."""
        return tuple(sorted({self.groups[i] for i in self.absorption}))

    @property
    def absorption_broadening_groups(self) -> tuple[int, ...]:
        """Broadening groups that hold absorption lines."""
        return tuple(sorted({self.broadening_of[i] for i in self.absorption}))

    def velocity_matrix(self) -> np.ndarray:
        """(G, G) matrix ``T`` with group velocities ``= T @ velocity parameters`` (the
        identity without a velocity chain; entries 0/1, exact in float32)."""
        n_groups = max(self.groups) + 1
        base = dict(self.velocity_chain)
        t = np.zeros((n_groups, n_groups))
        for g in range(n_groups):
            seen, k = set(), g
            while True:  # v_g = p_g + p_base(g) + p_base(base(g)) + ...
                if k in seen:
                    raise ValueError(f"the velocity chain {self.velocity_chain} has a cycle")
                seen.add(k)
                t[g, k] = 1.0
                if k not in base:
                    break
                k = base[k]
        return t

    @property
    def n_lines(self) -> int:
        return len(self.names)

    @property
    def n_groups(self) -> int:
        return max(self.groups) + 1

    @property
    def broadening_of(self) -> tuple[int, ...]:
        """Broadening group of each line (its kinematic group without ``broadening_groups``)."""
        return self.groups if self.broadening_groups is None else self.broadening_groups

    @property
    def n_broadening_groups(self) -> int:
        return max(self.broadening_of) + 1

    @property
    def rest_cm1(self) -> np.ndarray:
        """Rest wavenumbers (cm^-1), float64."""
        return 1e7 / np.asarray(self.rest_nm, dtype=np.float64)

    @property
    def primary_lines(self) -> tuple[int, ...]:
        """Indices of the lines that own an amplitude parameter."""
        dependents = {d for d, _, _ in self.ties}
        return tuple(i for i in range(self.n_lines) if i not in dependents)

    def amplitude_column(self) -> np.ndarray:
        """For each line, the index of the amplitude column it contributes to."""
        prim = self.primary_lines
        col = np.empty(self.n_lines, dtype=np.int32)
        for j, i in enumerate(prim):
            col[i] = j
        for d, p, _ in self.ties:
            col[d] = prim.index(p)
        return col

    def flux_ratio(self) -> np.ndarray:
        """For each line, flux(line)/flux(primary of its column) (1 for primaries), as a ratio
        of energy fluxes (erg/cm^2/s), the quantity atomic physics fixes."""
        ratio = np.ones(self.n_lines, dtype=np.float64)
        for d, _, r in self.ties:
            ratio[d] = r
        return ratio

    def flux_ratio_cm1(self) -> np.ndarray:
        """:meth:`flux_ratio` for fluxes integrated over wavenumber of a spectrum per unit
        wavelength (what the model integrates): ``F_erg = F_cm1 * 1e8 / x0^2``, so
        ``F_cm1(dep)/F_cm1(prim) = ratio * (x0_dep / x0_prim)^2`` (velocity-independent)."""
        ratio = self.flux_ratio()
        rest = self.rest_cm1
        for d, p, r in self.ties:
            ratio[d] = r * (rest[d] / rest[p]) ** 2
        return ratio

    def ratio_ranges_cm1(self) -> tuple[tuple[int, int, float, float], ...]:
        """:attr:`ratio_ranges` as ratios of fluxes integrated over wavenumber (see
        :meth:`flux_ratio_cm1`)."""
        rest = self.rest_cm1
        return tuple((d, p, lo * (rest[d] / rest[p]) ** 2, hi * (rest[d] / rest[p]) ** 2)
                     for d, p, lo, hi in self.ratio_ranges)


def _known_name(name: str) -> str:
    """The catalogue name of ``name``, or ``name`` itself (a user line)."""
    try:
        return canonical_line_name(name)
    except UnknownLineError:
        return str(name)


def make_line_set(
    lines,
    groups=None,
    *,
    tie_nii: bool = True,
    tie_oiii: bool = False,
    extra_ties=(),
    broadening_groups=None,
    ratio_ranges=(),
) -> LineSet:
    """Build a :class:`LineSet` from line names.

    Parameters
    ----------
    lines : sequence of str
        Catalogue names or aliases ('Halpha', 'NII6584', '[SII]6717') or user lines
        'NAME=air_nm'.
    groups : sequence of int, optional
        Kinematic group of each line. Default: all lines share one velocity and broadening.
    tie_nii, tie_oiii : bool
        Fix flux([NII]6548) = flux([NII]6583)/3 and flux([OIII]4959) = flux([OIII]5007)/3
        when both lines of the doublet are fitted in the same group.
    extra_ties : sequence of (dependent_name, primary_name, ratio)
        More flux ties.
    broadening_groups : sequence of int, optional
        Broadening group of each line, independent of ``groups`` (default: one broadening
        per kinematic group). Lines are tied only within one kinematic and broadening group.
    ratio_ranges : sequence of (dependent_name, primary_name, (lo, hi))
        Flux ratio ranges (:attr:`LineSet.ratio_ranges`), applied where both lines are fitted,
        untied, in one kinematic and broadening group (others are skipped).
    """
    parsed = [parse_line(s) for s in lines]
    _check_distinct(list(lines), parsed)
    names = tuple(n for n, _ in parsed)
    rest = tuple(w for _, w in parsed)
    if groups is None:
        groups = (0,) * len(names)
    groups = tuple(int(g) for g in groups)
    if len(groups) != len(names):
        raise ValueError(f"{len(groups)} kinematic groups given for {len(names)} lines")
    if broadening_groups is not None:
        broadening_groups = tuple(int(b) for b in broadening_groups)
        if len(broadening_groups) != len(names):
            raise ValueError(f"{len(broadening_groups)} broadening groups given for {len(names)} lines")
    same_b = groups if broadening_groups is None else broadening_groups
    index = {n: i for i, n in enumerate(names)}
    ties = []
    wanted = ([NII_TIE] if tie_nii else []) + ([OIII_TIE] if tie_oiii else []) + list(extra_ties)
    for dep, prim, ratio in wanted:
        i, j = index.get(dep), index.get(prim)
        if i is not None and j is not None and groups[i] == groups[j] and same_b[i] == same_b[j]:
            ties.append((i, j, float(ratio)))
    tied = {i for t in ties for i in t[:2]}
    ranges = []
    for dep, prim, (lo, hi) in ratio_ranges:
        i, j = index.get(_known_name(dep)), index.get(_known_name(prim))
        if i is not None and j is not None and groups[i] == groups[j] and same_b[i] == same_b[j] \
                and i not in tied and j not in tied:
            ranges.append((i, j, float(lo), float(hi)))
    return LineSet(names, rest, groups, tuple(ties), broadening_groups=broadening_groups, ratio_ranges=tuple(ranges))


def _check_distinct(specs: list, parsed: list) -> None:
    """Two lines with one name (in any case: the map names are upper case) or one
    wavelength (closer than 0.01 nm, ~5 km/s, far below SITELLE's resolution) would write
    their maps over each other and split one line's flux between them."""
    for i in range(len(parsed)):
        for j in range(i):
            (ni, wi), (nj, wj) = parsed[i], parsed[j]
            if ni.upper() == nj.upper():
                raise ValueError(f"line {ni} is listed twice ('{specs[j]}' and '{specs[i]}'): give each line once")
            if abs(wi - wj) < 0.01:
                raise ValueError(f"'{specs[j]}' and '{specs[i]}' are one line ({wi:.3f} nm) listed twice: "
                                 "give each line once")


def read_sky_lines(path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ORB sky line list: columns index, air wavelength (Angstrom), then either the
    intensity (three columns) or the line width and the intensity (four columns).

    ORB's ``sky_lines.orb`` (from the UVES sky atlas of Hanuschik 2003) has four columns:
    index, air wavelength, FWHM (Angstrom: ~wavelength / 40000, UVES's resolution, larger
    for blends) and flux; ORB's own reader (``orb.core.Lines``) takes the fourth as the
    intensity, and so does this one. A three-column list gives the intensity third.

    Returns (air wavelengths in nm, relative intensities). Lines starting with '#' are
    comments.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sky line list '{path}' does not exist")
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        try:
            rows.append((float(cols[1]) / 10.0, float(cols[3] if len(cols) >= 4 else cols[2])))
        except (IndexError, ValueError) as err:
            raise ValueError(f"{path}:{k}: expected 'index wavelength_A [fwhm_A] intensity', got '{line}'") from err
    if not rows:
        raise ValueError(f"{path}: no lines found")
    arr = np.asarray(rows)
    return arr[:, 0], arr[:, 1]


def sky_line_set(path, band_cm1: tuple[float, float], fwhm_cm1: float, *, blend_fwhm: float = 0.25) -> LineSet:
    """All lines of a sky line list inside ``band_cm1``, sharing one velocity.

    Lines that the instrument cannot separate form a blend: one amplitude, the members tied
    to the brightest in the ratio of their catalogue intensities (equal, when the catalogue
    gives none). A blend spans less than ``blend_fwhm`` x the instrumental FWHM from its
    first (lowest-wavenumber) member, so neighbours do not chain into wider blends. Two
    sinc profiles 0.25 FWHM apart correlate at 0.86 (at 0.5 FWHM, at 0.5): closer than
    that their amplitudes are nearly degenerate; farther apart they are separable, and a
    tie would force the catalogue's ratio on the data. That ratio does not hold on another
    night (relative OH intensities change with the rotational temperature): with a 0.5 FWHM
    neighbour criterion, chained blends reached 1.4 FWHM and the real M31 sky spectra
    fitted markedly worse (``benchmarks/RESULTS.md``, "Sky blends").
    """
    wl_nm, intensity = read_sky_lines(path)
    sigma = 1e7 / wl_nm
    inside = (sigma > band_cm1[0]) & (sigma < band_cm1[1])
    if not inside.any():
        raise ValueError(f"{path}: no sky line falls inside {band_cm1[0]:.1f}-{band_cm1[1]:.1f} cm-1")
    order = np.argsort(sigma[inside])
    sigma, wl_nm, intensity = sigma[inside][order], wl_nm[inside][order], intensity[inside][order]
    names = tuple(f"SKY{10 * w:.2f}" for w in wl_nm)
    blends: list[list[int]] = []
    for i in range(len(sigma)):
        if blends and sigma[i] - sigma[blends[-1][0]] < blend_fwhm * fwhm_cm1:
            blends[-1].append(i)
        else:
            blends.append([i])
    ties = []
    for members in blends:
        # tie to the brightest member so that the ratios stay well scaled
        brightest = max(members, key=lambda j: intensity[j])
        for j in members:
            if j != brightest:
                ratio = intensity[j] / intensity[brightest] if intensity[brightest] > 0 else 1.0
                ties.append((j, brightest, float(ratio)))
    return LineSet(names, tuple(float(w) for w in wl_nm), (0,) * len(names), tuple(sorted(ties)))


def join_line_sets(first: LineSet, second: LineSet) -> LineSet:
    """The lines of ``first`` then those of ``second``, whose kinematic groups, ties and
    velocity chain are renumbered after ``first``'s (e.g. a sky spectrum's OH lines, group
    0, and the emission lines of the gas in front of it, groups 1...)."""
    n, g, nb = first.n_lines, first.n_groups, first.n_broadening_groups
    return LineSet(
        first.names + second.names,
        first.rest_nm + second.rest_nm,
        first.groups + tuple(k + g for k in second.groups),
        first.ties + tuple((d + n, q + n, r) for d, q, r in second.ties),
        first.velocity_chain + tuple((a + g, b + g) for a, b in second.velocity_chain),
        absorption=first.absorption + tuple(i + n for i in second.absorption),
        broadening_groups=first.broadening_of + tuple(k + nb for k in second.broadening_of),
        ratio_ranges=first.ratio_ranges + tuple((d + n, q + n, lo, hi) for d, q, lo, hi in second.ratio_ranges),
    )


#: Suffix of the name of an absorption line (``Halpha_ABS``: maps ``HALPHA_ABS_FLUX``, ...).
ABSORPTION_SUFFIX = "_ABS"


def absorption_line_set(lines) -> LineSet:
    """Absorption copies of catalogue lines (e.g. the Balmer absorption of a stellar
    population under Halpha emission): named ``{LINE}_ABS``, all in one kinematic group
    (the stars' velocity and broadening), each with an amplitude of its own that is <= 0
    (:attr:`LineSet.absorption`). Join it after the emission lines with
    :func:`join_line_sets`."""
    parsed = [parse_line(s) for s in lines]
    _check_distinct(list(lines), parsed)
    names = tuple(f"{n}{ABSORPTION_SUFFIX}" for n, _ in parsed)
    return LineSet(names, tuple(w for _, w in parsed), (0,) * len(names), absorption=tuple(range(len(names))))


#: Diagnostic ratios of line fluxes: map name -> (numerator lines, denominator lines), the
#: fluxes summed within each (names as in ``LINE_CATALOGUE_NM``, upper case).
LINE_RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "NII_HA": (("NII6583",), ("HALPHA",)),
    "SII_HA": (("SII6716", "SII6731"), ("HALPHA",)),
    "SII_RATIO": (("SII6716",), ("SII6731",)),
    "OIII_HB": (("OIII5007",), ("HBETA",)),
    "HA_HB": (("HALPHA",), ("HBETA",)),
    "OIII_OII": (("OIII5007",), ("OII3726", "OII3729")),
}


def ratios_in(names) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """The :data:`LINE_RATIOS` whose lines are all among ``names`` (a line set's, any
    case): ``(ratio name, numerator indices, denominator indices)`` into ``names``."""
    upper = [str(n).upper() for n in names]
    return [(name, tuple(upper.index(n) for n in num), tuple(upper.index(n) for n in den))
            for name, (num, den) in LINE_RATIOS.items() if all(n in upper for n in num + den)]
