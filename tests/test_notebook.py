"""The quickstart notebook runs end to end (fit -> sample -> write with the public objects)
and its figures are saved and look right; plot_corner on known samples.

The notebook is executed with nbclient in a fresh kernel, writing into a temporary folder
(``LUCIJAX_QUICKSTART_OUT``); the test checks that no cell failed, that every figure exists
and is a non-blank PNG, and the numbers the notebook writes to ``summary.json`` (fit against
the synthetic truth, posterior against the MAP fit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
FIGURES = ("maps.png", "spectrum.png", "corner.png")


def _png_pixels(path):
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(path))


@pytest.mark.timeout(540)
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "out"
    monkeypatch.setenv("LUCIJAX_QUICKSTART_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=480, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    for name in FIGURES:
        path = out / name
        assert path.exists() and path.stat().st_size > 10_000, name
        img = _png_pixels(path)
        assert img.shape[0] > 300 and img.shape[1] > 300, name
        assert float(np.std(img[..., :3])) > 0.05, f"{name} looks blank"
    assert (out / "fit" / "maps.fits").exists()
    assert (out / "posterior" / "maps.fits").exists() and (out / "draws.h5").exists()
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nACCEPTANCE notebook: {json.dumps(summary)}")
    # the region fit is right (SNR 5-60) and its errors are calibrated
    assert summary["velocity_median_abs_error_kms"] < 5.0
    assert 0.6 < summary["velocity_pull_std"] < 1.6
    # the posterior agrees with the MAP fit and its Laplace error, and with the truth
    dv = abs(summary["posterior_velocity_median"] - summary["map_velocity"])
    assert dv < 0.5 * summary["map_velocity_err"] + 0.5
    assert 0.6 < summary["posterior_velocity_std"] / summary["map_velocity_err"] < 1.6
    assert abs(summary["posterior_velocity_median"] - summary["true_velocity"]) < 4 * summary["posterior_velocity_std"]
    # the posterior maps hold the same pixel's median, and the chains mixed almost everywhere
    assert summary["posterior_map_velocity_median"] == pytest.approx(summary["posterior_velocity_median"], abs=0.05)
    assert summary["posterior_rhat_ok_fraction"] > 0.9


@pytest.mark.timeout(60)
def test_plot_corner(tmp_path):
    pytest.importorskip("corner")
    from lucijax.plots import plot_corner

    rng = np.random.default_rng(0)
    samples = {"velocity": rng.normal(10.0, 2.0, (2, 500)), "broadening": rng.normal(30.0, 4.0, 1000),
               "HALPHA_AMPLITUDE": rng.normal(1.0, 0.1, 1000)}
    path = tmp_path / "corner.png"
    fig = plot_corner(samples, ["velocity", "broadening"], truths={"velocity": 10.0, "broadening": 30.0},
                      units={"velocity": "km/s"}, path=path)
    assert len(fig.axes) == 4
    assert path.exists() and path.stat().st_size > 5_000
    # the diagonal titles carry the median and the 16-84 % interval of each parameter
    import re

    title = fig.axes[0].get_title()
    assert title.startswith("velocity (km/s)")
    median = float(re.search(r"\{([-0-9.]+)\}_", title).group(1))
    assert abs(median - np.median(samples["velocity"])) < 0.01
    assert abs(median - 10.0) < 0.3
    with pytest.raises(KeyError, match="amplitude"):
        plot_corner(samples, ["amplitude"])
    with pytest.raises(ValueError, match="same number"):
        plot_corner({"a": np.zeros(10), "b": np.zeros(20)})
