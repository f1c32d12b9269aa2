"""Loading the shipped networks and building the per-spectrum predictor."""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lucijax.mdn.config import MDN_VERSION, load_config
from lucijax.mdn.preprocess import features, interp_weights

log = logging.getLogger(__name__)

#: What :func:`load_predictor` returns: ``predict(y (n,), fwhm_cm1 ()) -> (mean (2,), sigma (2,))``.
Predictor = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class MissingWeightsError(ValueError):
    """No trained network ships for this filter (or kind)."""


#: Where the shipped networks live (weights + the JSON config that made them).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _weights_dir() -> Path:
    return WEIGHTS_DIR


def _kind(mdn: bool) -> str:
    return "mdn" if mdn else "cnn"


def available_filters(mdn: bool = True) -> list[str]:
    """Filters with shipped weights of the MDN (``mdn=True``) or of the CNN."""
    kind = _kind(mdn)
    return sorted(p.name[: -len(f"_{kind}.msgpack")] for p in _weights_dir().glob(f"*_{kind}.msgpack")
                  if p.with_suffix(".json").exists())


@functools.lru_cache(maxsize=16)
def load_network(filter_name: str, mdn: bool = True, weights_dir: str | None = None):
    """``(config dict, params)`` of a filter's network (cached).

    Raises :class:`MissingWeightsError` when the filter has no shipped weights.
    """
    key = str(filter_name).strip().upper()
    folder = Path(weights_dir) if weights_dir else _weights_dir()
    stem = folder / f"{key}_{_kind(mdn)}"
    if not stem.with_suffix(".msgpack").exists() or not stem.with_suffix(".json").exists():
        have = ", ".join(available_filters(mdn)) or "none"
        raise MissingWeightsError(
            f"no trained {_kind(mdn).upper()} for filter '{filter_name}' in {folder} (available: {have}); "
            f"train one with `python scripts/train_mdn.py --filter {key}{' --cnn' if not mdn else ''}` "
            "or fit without the network (--no-mdn)")
    cfg = load_config(stem.with_suffix(".json"))
    if cfg.get("version") != MDN_VERSION:
        raise MissingWeightsError(f"{stem}.json was made by MDN version {cfg.get('version')}, this lucijax reads "
                                  f"version {MDN_VERSION}: retrain with scripts/train_mdn.py")
    # the saved state dict as it is (no ``net.init`` template: that costs seconds of
    # small compilations at every start-up), placed with ``device_put``: ``jnp.asarray``
    # compiles a small program per array shape (JAX's ``stage``), ~10 ms each at start-up
    params = jax.device_put(msgpack_restore(stem.with_suffix(".msgpack").read_bytes()))
    return cfg, params


def msgpack_restore(data: bytes):
    """The state dict of a flax msgpack file (``flax.serialization.msgpack_restore``)
    without importing flax (~0.15 s of a start-up whose fit program comes from disk and
    never runs the network in Python): the same arrays, bit for bit."""
    import msgpack

    def array(payload: bytes) -> np.ndarray:
        shape, dtype, buffer = msgpack.unpackb(payload, raw=True)
        if dtype == b"bfloat16":
            dtype = jnp.bfloat16
        return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape, order="C")

    def ext(code: int, payload: bytes):
        if code == 1:  # ndarray
            return array(payload)
        if code == 2:  # complex
            re, im = msgpack.unpackb(payload)
            return complex(re, im)
        if code == 3:  # numpy scalar
            return array(payload)[()]
        return msgpack.ExtType(code, payload)

    def chunked(d) -> bool:
        return isinstance(d, dict) and ("__msgpack_chunked_array__" in d or any(chunked(v) for v in d.values()))

    tree = msgpack.unpackb(data, ext_hook=ext, raw=False, strict_map_key=False)
    if chunked(tree):  # arrays over 2 GB, split by flax: its own reader
        from flax import serialization

        return serialization.msgpack_restore(data)
    return tree


def load_predictor(filter_name: str, axis_obs_cm1, redshift: float = 0.0, mdn: bool = True, weights_dir=None) -> Predictor:
    """The network of ``filter_name`` as a function of ONE spectrum.

    Parameters
    ----------
    filter_name : str
        'SN1', 'SN2', 'SN3', 'C1'-'C4' (see :func:`available_filters`).
    axis_obs_cm1 : (n,) array
        Observed wavenumbers (cm^-1) of the channels the spectra will hold (the fit window).
    redshift : float
        The axis is de-redshifted (``axis * (1 + z)``); the velocity is the residual.
    mdn : bool
        The mixture density network (mean and sigma) or the point-estimate CNN.

    Returns
    -------
    predict : callable
        ``predict(y, fwhm_cm1) -> (mean, sigma)``: ``y`` (n,) the spectrum on
        ``axis_obs_cm1`` (NaN channels are ignored), ``fwhm_cm1`` the instrumental sinc
        FWHM **in the de-redshifted frame** (the value the fit receives:
        ``pixel_fwhm * (1 + z)``). ``mean`` = [velocity_kms, broadening_kms] (broadening
        clipped at 0), ``sigma`` their posterior standard deviations (NaN for the CNN).
        Pure and jax-traceable: ``jax.jit(jax.vmap(predict))`` over a batch.
    """
    cfg, params = load_network(str(filter_name).strip().upper(), bool(mdn), None if weights_dir is None else str(weights_dir))
    recipe = cfg["recipe"]
    net_cfg = cfg["net"]
    axis_rest = np.asarray(axis_obs_cm1, np.float64) * (1.0 + float(redshift))
    grid = np.linspace(recipe.grid_min_cm1, recipe.grid_max_cm1, recipe.n_grid)
    lo, w, inside = interp_weights(axis_rest, grid)
    if not inside.any():
        raise ValueError(
            f"the spectral axis ({axis_rest[0]:.1f}-{axis_rest[-1]:.1f} cm-1 de-redshifted, z={redshift}) does not "
            f"overlap the {recipe.filter_name} network's input range {recipe.grid_min_cm1:.0f}-{recipe.grid_max_cm1:.0f} cm-1")
    if inside.mean() < 0.99:  # (C1's band axis can end a fraction of a channel short of its grid)
        log.warning("the fit window covers %.0f%% of the %s network's input range: predictions may be poor",
                    100 * inside.mean(), recipe.filter_name)
    channel = float(np.median(np.diff(axis_rest)))
    lo_j, w_j, inside_j = jax.device_put((np.asarray(lo), np.asarray(w), np.asarray(inside)))
    step = recipe.grid_step_cm1
    n_channels = axis_rest.size
    is_mdn = net_cfg.mdn

    def predict(y, fwhm_cm1):
        # flax only where the network is traced: a program loaded from disk never is
        from lucijax.mdn.network import SpectrumNet, split_outputs, to_kms

        if y.shape[-1] != n_channels:
            raise ValueError(f"spectrum has {y.shape[-1]} channels, the predictor's axis {n_channels}")
        net = SpectrumNet(net_cfg, recipe)
        x, s = features(y, lo_j, w_j, inside_j, jnp.asarray(fwhm_cm1, jnp.float32), channel, step)
        mean, sigma = to_kms(*split_outputs(net.apply(params, x, s), is_mdn))
        mean = mean.at[1].set(jnp.maximum(mean[1], 0.0))
        return mean, sigma

    predict.filter_name = recipe.filter_name
    predict.mdn = is_mdn
    predict.config = cfg
    digest = hashlib.sha256(repr((filter_name, bool(mdn), cfg.get("version"))).encode())
    for leaf in jax.tree.leaves(params):
        digest.update(np.asarray(leaf).tobytes())
    predict.weights_digest = digest.hexdigest()  # names the network in stored fit programs
    return predict
