"""Traced batch programs kept on disk (lucijax.engine.stored)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.engine import stored
from lucijax.engine.stored import traced

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(stored, "program_folder", lambda: tmp_path)
    return tmp_path


def _fn(inp):
    y, f = inp["y"], inp["f"]
    return {"a": jnp.sin(y) * f[:, None], "b": jnp.sum(y, axis=1)}


def _structs(inp):
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in inp.items()}


def test_stored_program_is_written_once_and_reloaded(folder):
    y = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
    f = jnp.arange(8, dtype=jnp.float32)
    inp = {"y": y, "f": f}
    ref = jax.jit(_fn)(inp)
    first = traced(jax.jit(_fn), "key one", _structs(inp))
    out1 = first(inp)
    files = list(folder.glob("*.jaxexport"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    traced_calls = []

    def spy(inp):  # a later process: loads the file, never traces fn
        traced_calls.append(1)
        return _fn(inp)

    out2 = traced(jax.jit(spy), "key one", _structs(inp))(inp)
    assert not traced_calls
    assert files[0].stat().st_mtime_ns == stamp
    for k in ref:
        np.testing.assert_array_equal(np.asarray(out1[k]), np.asarray(ref[k]))
        np.testing.assert_array_equal(np.asarray(out2[k]), np.asarray(ref[k]))
    # another key or another input shape: another program
    traced(jax.jit(spy), "key two", _structs(inp))(inp)
    half = {"y": y[:4], "f": f[:4]}
    traced(jax.jit(spy), "key one", _structs(half))(half)
    assert len(traced_calls) == 2
    assert len(list(folder.glob("*.jaxexport"))) == 3


def test_damaged_program_file_is_traced_again(folder, caplog):
    inp = {"y": jnp.ones((4, 3), jnp.float32), "f": jnp.ones(4, jnp.float32)}
    traced(jax.jit(_fn), "k", _structs(inp))(inp)
    (path,) = folder.glob("*.jaxexport")
    path.write_bytes(b"not a program")
    out = traced(jax.jit(_fn), "k", _structs(inp))(inp)
    np.testing.assert_allclose(np.asarray(out["b"]), 3.0)
    assert "could not load the stored program" in caplog.text


def test_code_digest_names_the_source():
    d = stored.code_digest()
    assert len(d) == 64 and d == stored.code_digest()
