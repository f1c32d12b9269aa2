"""Survey runs: many cubes x line sets, each into its own output folder, one summary table.

A manifest (TOML or CSV) lists the cubes, the line sets and the options; :func:`run_survey`
fits every entry (cube x line set) with :func:`lucijax.fit` into ``OUT/NAME/`` (maps.fits),
on this process's devices or on a Dask cluster (``scheduler=``, the same one for every
entry), and keeps ``OUT/survey_summary.ecsv`` up to date: one row per entry with its
pixels, spectra/s, STATUS counts and median reduced chi2.

A survey is resumable: an entry whose folder holds ``done.json`` is finished and skipped
when the survey runs again; an entry killed half way resumes from its checkpoint folder
(``OUT/NAME/checkpoint``, removed once the entry is done).

TOML manifest::

    out = "signals"                 # optional: the output folder (default: beside the manifest)

    [options]                       # for every entry (an entry's own keys override them)
    block_size = 32

    [line_sets]
    sn3 = ["Halpha", "NII6583", "NII6548", "SII6716", "SII6731"]
    sii = ["SII6716", "SII6731"]

    [[cube]]
    path = "M33_SN3.hdf5"           # relative to the manifest
    name = "M33_SN3"                # optional (default: the file name without suffix)
    line_sets = ["sn3", "sii"]      # optional (default: every line set)
    region = "0:512,0:512"          # any option

CSV manifest: one entry per row, columns ``cube`` and ``lines`` (space-separated line
names) and optional ``name``, ``line_set`` and option columns (an empty cell: the default)::

    cube,line_set,lines,block_size
    M33_SN3.hdf5,sn3,Halpha NII6583 NII6548 SII6716 SII6731,32

Options: any field of :class:`~lucijax.Model` (``profile``, ``redshift``,
``velocity_range = [-300, 300]``...) or of :class:`~lucijax.MAP` (``start``,
``max_iter``...), ``region`` and ``mask`` (as :func:`lucijax.fit` takes them), and
``batch_size`` / ``block_size``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SUMMARY = "survey_summary.ecsv"
DONE = "done.json"
#: STATUS codes counted in the summary (MASKED pixels are not fitted: not counted).
STATUS_CODES = tuple(range(9))
_EXECUTION_KEYS = ("batch_size", "block_size")
_FIT_KEYS = ("region", "mask")


@dataclass(frozen=True)
class Entry:
    """One fit of a survey: a cube with a line set and options, into ``OUT/name``."""

    name: str
    cube: Path
    line_set: str
    lines: tuple[str, ...]
    options: dict = field(default_factory=dict, hash=False, compare=False)


def _value(text: str):
    """A CSV cell as int, float, bool or text (empty: None)."""
    text = text.strip()
    if not text:
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if ":" in text and text.count(":") == 1 and "," not in text:  # a range such as -300:300
        try:
            return tuple(float(v) for v in text.split(":"))
        except ValueError:
            pass
    return text


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(text))


def read_manifest(path) -> tuple[list[Entry], dict]:
    """The entries of a TOML or CSV manifest and its top-level settings (``out``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such survey manifest")
    base = path.resolve().parent
    settings: dict = {}
    entries: list[Entry] = []
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err})") from None
        line_sets = doc.get("line_sets") or {}
        if not line_sets or not all(isinstance(v, list) and v for v in line_sets.values()):
            raise ValueError(f"{path}: give [line_sets] NAME = [line, ...] (at least one, none empty)")
        common = dict(doc.get("options") or {})
        cubes = doc.get("cube") or []
        if not cubes:
            raise ValueError(f"{path}: no [[cube]] entry")
        for c in cubes:
            c = dict(c)
            if "path" not in c:
                raise ValueError(f"{path}: a [[cube]] has no path")
            cube = (base / c.pop("path")).resolve()
            name = str(c.pop("name", cube.stem))
            sets = c.pop("line_sets", list(line_sets))
            for s in sets:
                if s not in line_sets:
                    raise ValueError(f"{path}: cube {name}: no line set {s!r} in [line_sets] ({', '.join(line_sets)})")
                entries.append(Entry(f"{_safe(name)}__{_safe(s)}", cube, s, tuple(line_sets[s]), {**common, **c}))
        if "out" in doc:
            settings["out"] = (base / str(doc["out"])).resolve()
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"cube", "lines"} <= set(rows[0]):
            raise ValueError(f"{path}: a CSV manifest needs a header with the columns cube and lines")
        for i, row in enumerate(rows):
            row = {k.strip(): (v or "") for k, v in row.items() if k}
            cube = (base / row.pop("cube").strip()).resolve()
            lines = tuple(row.pop("lines").split())
            if not lines:
                raise ValueError(f"{path}: row {i + 2} has no lines")
            name = row.pop("name", "").strip() or cube.stem
            s = row.pop("line_set", "").strip() or "+".join(lines)
            opts = {k: v for k, v in ((k, _value(v)) for k, v in row.items()) if v is not None}
            entries.append(Entry(f"{_safe(name)}__{_safe(s)}", cube, s, lines, opts))
    else:
        raise ValueError(f"{path}: a survey manifest is a .toml or .csv file")
    seen: set = set()
    for e in entries:
        if e.name in seen:
            raise ValueError(f"{path}: two entries are named {e.name} (give the cubes distinct names)")
        seen.add(e.name)
        _split_options(e)  # unknown options fail before anything runs
    return entries, settings


def _split_options(entry: Entry) -> tuple[dict, dict, dict, dict]:
    """``entry.options`` as (Model, MAP, fit, Execution) keyword arguments."""
    from lucijax.description import Model
    from lucijax.solvers import MAP

    model_keys = {f.name for f in dataclasses.fields(Model)} - {"lines"}
    solver_keys = {f.name for f in dataclasses.fields(MAP)}
    parts: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
    for k, v in entry.options.items():
        if isinstance(v, list):
            v = tuple(v)
        if k in model_keys:
            parts[0][k] = v
        elif k in solver_keys:
            parts[1][k] = v
        elif k in _FIT_KEYS:
            parts[2][k] = v
        elif k in _EXECUTION_KEYS:
            parts[3][k] = v
        else:
            raise ValueError(f"entry {entry.name}: unknown option {k!r} (a field of lucijax.Model or lucijax.MAP, "
                             f"region, mask, batch_size or block_size)")
    return parts


def fit_entry(entry: Entry, out: Path, *, scheduler=None, keep_checkpoint: bool = False) -> dict:
    """Fit one entry into ``out / entry.name`` (resuming from its checkpoint) and write
    ``done.json`` (its summary row) there; returns the row."""
    from lucijax.api import fit
    from lucijax.description import Model
    from lucijax.engine import Execution
    from lucijax.solvers import MAP

    model_kw, solver_kw, fit_kw, ex_kw = _split_options(entry)
    folder = out / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "checkpoint"
    ex = Execution(checkpoint=str(ckpt / "fit"), progress=False, scheduler=scheduler, **ex_kw)
    t0 = time.perf_counter()
    result = fit(str(entry.cube), Model(lines=entry.lines, **model_kw), MAP(**solver_kw), execution=ex, **fit_kw)
    seconds = time.perf_counter() - t0
    result.write(folder)
    row = summary_row(entry, result, seconds)
    (folder / DONE).write_text(json.dumps(row, indent=1))
    if not keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    return row


def summary_row(entry: Entry, result, seconds: float) -> dict:
    """The summary of one finished entry (what ``done.json`` and the table hold)."""
    status = np.asarray(result.maps["STATUS"])
    fitted = status != -1
    n = int(fitted.sum())
    ok = status == 0
    chi2 = np.asarray(result.maps["CHI2"])[ok]
    row = {"NAME": entry.name, "CUBE": str(entry.cube), "LINE_SET": entry.line_set, "LINES": " ".join(entry.lines),
           "STATE": "done", "N_PIXELS": n, "N_RESUMED": int(result.n_resumed), "SECONDS": float(seconds),
           "SPECTRA_PER_S": float((n - result.n_resumed) / seconds) if seconds > 0 else float("nan"),
           "MEDIAN_CHI2": float(np.nanmedian(chi2)) if chi2.size else float("nan")}
    for code in STATUS_CODES:
        row[f"N_STATUS_{code}"] = int(np.sum(status[fitted] == code))
    return row


def _failed_row(entry: Entry, message: str) -> dict:
    row = {"NAME": entry.name, "CUBE": str(entry.cube), "LINE_SET": entry.line_set, "LINES": " ".join(entry.lines),
           "STATE": f"failed: {message}"[:200], "N_PIXELS": 0, "N_RESUMED": 0, "SECONDS": float("nan"),
           "SPECTRA_PER_S": float("nan"), "MEDIAN_CHI2": float("nan")}
    row.update({f"N_STATUS_{code}": 0 for code in STATUS_CODES})
    return row


def write_summary(rows: list[dict], path) -> Path:
    """The survey's summary table (ECSV), written atomically."""
    from astropy.table import Table

    table = Table(rows=rows, names=list(rows[0])) if rows else Table()
    table.meta["comments"] = [("lucijax survey: one row per cube x line set; SPECTRA_PER_S counts the spectra fitted "
                               "in the run that finished the entry (resumed ones excluded), compilation included; "
                               "MEDIAN_CHI2: median reduced chi2 of the STATUS 0 pixels")]
    for name, unit in (("SECONDS", "s"), ("SPECTRA_PER_S", "1/s")):
        if name in table.colnames:
            table[name].unit = unit
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    table.write(tmp, format="ascii.ecsv", overwrite=True)
    tmp.replace(path)
    return path


def run_survey(manifest, out=None, *, scheduler=None, progress: bool = True, keep_checkpoint: bool = False,
               on_entry=None) -> Table:  # noqa: F821
    """Fit every entry of ``manifest`` (a path, or a list of :class:`Entry`) into
    ``out/NAME/``; entries already done are skipped, half-done ones resume. Returns the
    summary table (also written to ``out/survey_summary.ecsv`` after every entry).

    ``scheduler``: as :class:`~lucijax.engine.Execution`'s (a Dask client, an address or
    ``local:N``), opened once for the whole survey. ``on_entry(row)``: called after each
    entry (done, skipped or failed). An entry that fails (a missing cube, a bad option)
    is recorded as failed and the survey goes on; it is tried again by the next run.
    """
    from astropy.table import Table
    from tqdm.auto import tqdm

    from lucijax.engine.checkpoint import folder_lock

    settings: dict = {}
    if isinstance(manifest, (list, tuple)):
        entries = list(manifest)
    else:
        entries, settings = read_manifest(manifest)
    if out is None:
        out = settings.get("out") or Path(manifest).with_suffix("").with_name(Path(manifest).stem + "_out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(out, ".lucijax-survey.lock") or contextlib.nullcontext())
        if scheduler is not None and not hasattr(scheduler, "submit"):
            from lucijax.engine.cluster import connect

            scheduler = stack.enter_context(connect(scheduler))
        done = {e.name for e in entries if (out / e.name / DONE).is_file()}
        bar = tqdm(total=len(entries), initial=len(done), unit="entry", desc="survey", disable=not progress)
        for e in entries:
            if e.name in done:
                row = dict(json.loads((out / e.name / DONE).read_text()), STATE="done")
            else:
                try:
                    row = fit_entry(e, out, scheduler=scheduler, keep_checkpoint=keep_checkpoint)
                except (ValueError, FileNotFoundError, OSError) as err:
                    log.warning("survey entry %s failed: %s", e.name, err)
                    row = _failed_row(e, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
                bar.update(1)
            rows.append(row)
            write_summary(rows, out / SUMMARY)
            if on_entry is not None:
                on_entry(row)
        bar.close()
    return Table(rows=rows, names=list(rows[0])) if rows else Table()


__all__ = ["DONE", "SUMMARY", "Entry", "fit_entry", "read_manifest", "run_survey", "summary_row", "write_summary"]
