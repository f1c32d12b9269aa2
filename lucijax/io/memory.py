"""An in-memory spectral cube with the reader interface of :class:`SpectralCube`.

Anything built from a cube (binned spectra, Voronoi bins, the integrated spectrum of a
region, a synthetic cube) can be wrapped in :class:`MemoryCube` and given to
:func:`lucijax.fit` like a file::

    from lucijax.io.memory import MemoryCube
    cube = MemoryCube.from_synthetic(lucijax.simulate.make_cube(16, 16))
    result = lucijax.fit(cube, lucijax.Model(["Halpha", "NII6583", "NII6548"]))
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lucijax.io.header import FLUX_UNIT, CubeHeader, SpectralCube, header_from_attrs

__all__ = ["MemoryCube", "replace_wcs"]


def replace_wcs(header: CubeHeader, wcs) -> CubeHeader:
    """A copy of ``header`` with another celestial WCS (``None`` for none)."""
    return dataclasses.replace(header, wcs=wcs)


class MemoryCube(SpectralCube):
    """Spectra held in memory, indexed ``[x, y, channel]`` like the file readers.

    Parameters
    ----------
    data : numpy.ndarray
        Spectra, shape ``(nx, ny, n_channels)``, in ``header.flux_unit``.
    header : CubeHeader
        Observation parameters (spectral axis, filter, ...) and celestial WCS of the image
        plane of ``data`` (``None`` when the pixels are not an image, e.g. Voronoi bins).
    calib_map : numpy.ndarray, optional
        Calibration-laser wavelength (nm) per pixel, shape ``(nx, ny)``.
    deep_frame : numpy.ndarray, optional
        Deep image, shape ``(nx, ny)``.
    path : str
        Description used in messages and to tell checkpoints apart.
    is_single_spectrum : bool
        True for one integrated spectrum (``fit.json`` is written for it).
    """

    def __init__(self, data, header: CubeHeader, *, calib_map=None, deep_frame=None, path: str = "<memory>",
                 is_single_spectrum: bool = False):
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError(f"{path}: spectra must be a 3-D [x, y, channel] array, got shape {data.shape}")
        if data.shape[2] != header.n_channels:
            raise ValueError(f"{path}: {data.shape[2]} channels but the header's spectral axis has {header.n_channels}")
        self._data = data.astype(np.float32, copy=False)
        self.header = header
        self.shape = tuple(int(s) for s in data.shape)
        self.path = str(path)
        self.is_single_spectrum = bool(is_single_spectrum)
        self.level = None
        for name, arr in (("calib_map", calib_map), ("deep_frame", deep_frame)):
            if arr is not None and np.shape(arr) != self.shape[:2]:
                raise ValueError(f"{path}: {name} must have shape {self.shape[:2]}, got {np.shape(arr)}")
        self._calib = None if calib_map is None else np.asarray(calib_map, np.float64)
        self._deep = None if deep_frame is None else np.asarray(deep_frame, np.float64)

    @classmethod
    def from_synthetic(cls, synthetic, path: str = "<synthetic>") -> "MemoryCube":
        """Wrap a :class:`lucijax.simulate.SyntheticCube` (flux calibrated, erg/cm^2/s/A)."""
        header = header_from_attrs(synthetic.attrs, synthetic.data.shape[2], path, flux_unit=FLUX_UNIT)
        return cls(synthetic.data, header, calib_map=synthetic.calib_map, path=path)

    def fingerprint(self) -> str:
        """Digest of the spectra, the calibration map and the header."""
        import hashlib

        h = hashlib.sha256(self._data.tobytes())
        for a in (self._calib, self._deep):
            h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
        h.update(repr(sorted((k, repr(v)) for k, v in self.header.attrs.items())).encode())
        h.update(repr((self.shape, self.header.flux_unit)).encode())
        return h.hexdigest()[:24]

    def read_spectra(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        return np.array(self._data[x0:x1, y0:y1], dtype=np.float32)

    def read_calib_map(self, x0: int, x1: int, y0: int, y1: int):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        return None if self._calib is None else self._calib[x0:x1, y0:y1].copy()

    def read_deep_frame(self, x0: int, x1: int, y0: int, y1: int):
        x0, x1, y0, y1 = self._check_box(x0, x1, y0, y1)
        return None if self._deep is None else self._deep[x0:x1, y0:y1].copy()
