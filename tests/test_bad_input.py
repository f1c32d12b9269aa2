"""Bad input: invalid spectra become STATUS 1 and NaN maps (never an exception); bad line
names, lines outside the band and incomplete headers raise errors that say what is wrong."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

import lucijax
from lucijax.description import LineOutsideWindowError
from lucijax.engine import Execution, map_pixels
from lucijax.io import MissingHeaderError, open_cube
from lucijax.physics.lines import UnknownLineError
from lucijax.simulate import DEFAULT_LINES
from lucijax.status import Status

pytestmark = pytest.mark.timeout(300)

#: One batch holds the whole 4x4 cube: its bad pixels share the batch with the good ones.
BATCH = 16

#: Maps that describe the instrument, not the fit: finite even where the spectrum is bad.
INSTRUMENT_MAPS = {"FWHM"}


@pytest.fixture(scope="module")
def bad_fit(bad_pixel_cube):
    """The fit of the 4x4 cube with bad pixels (one compilation, shared by this module)."""
    cube, path, clean, bad = bad_pixel_cube
    model = lucijax.Model(list(DEFAULT_LINES), profile="sincgauss")
    result = lucijax.fit(path, model, lucijax.MAP(), execution=Execution(batch_size=BATCH, progress=False))
    return cube, clean, result, bad


def _good_mask(shape_yx, bad):
    good = np.ones(shape_yx, bool)
    for x, y in bad.values():
        good[y, x] = False
    return good


def _fit_like(tmp_path, synthetic, result, name):
    """Fit a whole synthetic cube with the program of an existing fit (same compiled batch
    shape); returns the per-pixel fields, ``[x, y, ...]`` arrays."""
    path = synthetic.write(tmp_path / name)
    program = result.solver.program(result.bound)
    with open_cube(path) as cube:
        out = map_pixels(cube, program, Execution(batch_size=BATCH, progress=False))
    return {k: np.asarray(v) for k, v in out.values.fit._asdict().items()}


def test_invalid_spectra_get_status_1_and_nan_maps(bad_fit):
    cube, _, result, bad = bad_fit
    status = result.maps["STATUS"]
    for name, (x, y) in bad.items():
        assert status[y, x] == Status.INVALID_INPUT, f"{name} pixel (x={x}, y={y}) has STATUS {status[y, x]}"
    float_maps = {k: v for k, v in result.maps.items() if v.dtype.kind == "f" and k not in INSTRUMENT_MAPS}
    assert len(float_maps) > 20  # flux, velocity, ... of every line, CHI2, SNR, NOISE, CONTINUUM
    for key, arr in float_maps.items():
        for name, (x, y) in bad.items():
            assert np.isnan(arr[y, x]), f"map {key} is {arr[y, x]} at the {name} pixel (x={x}, y={y}), expected NaN"
    # every other pixel is fitted: a valid status, finite maps, a velocity close to the truth
    good = _good_mask(status.shape, bad)
    assert np.all(np.isin(status[good], [Status.CONVERGED, Status.UNRESOLVED])), status
    for key in ("HALPHA_FLUX", "HALPHA_FLUX_ERR", "HALPHA_VELOCITY", "HALPHA_VELOCITY_ERR", "CHI2", "NOISE", "SNR"):
        assert np.all(np.isfinite(result.maps[key][good])), key
    pull = (result.maps["HALPHA_VELOCITY"] - cube.truth["VELOCITY"])[good] / result.maps["HALPHA_VELOCITY_ERR"][good]
    assert np.max(np.abs(pull)) < 5.0, f"velocity pulls {pull}"


def test_bad_pixels_do_not_change_their_neighbours(tmp_path, bad_fit):
    """The same cube without bad pixels, fitted with the same compiled batch: every good
    pixel gets bit-identical results (pixels of a batch are independent)."""
    _, clean, result, bad = bad_fit
    clean_fields = _fit_like(tmp_path, clean, result, "clean.hdf5")
    good_xy = _good_mask(result.maps["STATUS"].shape, bad).T  # per-pixel fields are [x, y]
    for key in ("velocity_kms", "velocity_err_kms", "broadening_kms", "flux_cm1", "flux_err_cm1", "noise", "chi2_reduced", "status"):
        np.testing.assert_array_equal(clean_fields[key][good_xy], result.fields[key][good_xy], err_msg=key)
    # and the clean cube's former bad pixels are fitted normally
    for x, y in bad.values():
        assert clean_fields["status"][x, y] in (Status.CONVERGED, Status.UNRESOLVED)


def test_single_nonfinite_channel_is_masked_not_invalid(tmp_path, bad_fit):
    """One NaN or inf channel is ignored (real spectra carry NaN channels at the band
    edges): that spectrum is still fitted, close to its truth."""
    _, clean, result, _ = bad_fit
    data = clean.data.copy()
    mid = result.bound.window[len(result.bound.window) // 2]
    (xi, yi), (xn, yn) = (2, 2), (1, 1)
    data[xi, yi, mid] = np.inf
    data[xn, yn, mid + 7] = np.nan
    got = _fit_like(tmp_path, dataclasses.replace(clean, data=data), result, "one_channel.hdf5")
    for x, y in ((xi, yi), (xn, yn)):
        assert got["status"][x, y] in (Status.CONVERGED, Status.UNRESOLVED)
        v, e = got["velocity_kms"][x, y, 0], got["velocity_err_kms"][x, y, 0]
        assert np.isfinite(v) and np.isfinite(e) and e > 0
        assert abs(v - clean.truth["VELOCITY"][y, x]) < 5 * e


def test_unknown_line_names_the_line(bad_pixel_cube):
    path = bad_pixel_cube[1]
    with pytest.raises(UnknownLineError, match="NotALine6000"):
        lucijax.fit(path, lucijax.Model(["Halpha", "NotALine6000"]), execution=Execution(progress=False))


def test_line_outside_band_names_the_line(bad_pixel_cube):
    path = bad_pixel_cube[1]
    with pytest.raises(LineOutsideWindowError, match="Hbeta") as info:
        lucijax.fit(path, lucijax.Model(["Halpha", "Hbeta"]), execution=Execution(progress=False))
    assert "Halpha" not in str(info.value)  # it blames Hbeta alone


def test_missing_step_attribute_is_reported(tmp_path, bad_pixel_cube):
    clean = bad_pixel_cube[2]
    path = clean.write(tmp_path / "no_step.hdf5")
    with h5py.File(path, "r+") as f:
        assert "step" in f.attrs
        del f.attrs["step"]
    with pytest.raises(MissingHeaderError) as info:
        lucijax.fit(path, lucijax.Model(list(DEFAULT_LINES)), execution=Execution(progress=False))
    assert "'step'" in str(info.value)
    assert "no_step.hdf5" in str(info.value)
