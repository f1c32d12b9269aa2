"""Traced fit programs kept on disk (lucijax.fit.programs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lucijax.fit import programs
from lucijax.fit.programs import StoredProgram

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(programs, "program_folder", lambda: tmp_path)
    return tmp_path


def _fn(y, f):
    return {"a": jnp.sin(y) * f[:, None], "b": jnp.sum(y, axis=1)}


def test_stored_program_is_written_once_and_reloaded(folder):
    y = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)), jnp.float32)
    f = jnp.arange(8, dtype=jnp.float32)
    ref = jax.jit(_fn)(y, f)
    first = StoredProgram(jax.jit(_fn), "key one")
    out1 = first(y, f)
    files = list(folder.glob("*.jaxexport"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns

    traced = []

    def spy(y, f):  # a later process: loads the file, never traces fn
        traced.append(1)
        return _fn(y, f)

    out2 = StoredProgram(jax.jit(spy), "key one")(y, f)
    assert not traced
    assert files[0].stat().st_mtime_ns == stamp
    for k in ref:
        np.testing.assert_array_equal(np.asarray(out1[k]), np.asarray(ref[k]))
        np.testing.assert_array_equal(np.asarray(out2[k]), np.asarray(ref[k]))
    # another key or another input shape: another program
    StoredProgram(jax.jit(spy), "key two")(y, f)
    StoredProgram(jax.jit(spy), "key one")(y[:4], f[:4])
    assert len(traced) == 2
    assert len(list(folder.glob("*.jaxexport"))) == 3


def test_damaged_program_file_is_traced_again(folder, caplog):
    y = jnp.ones((4, 3), jnp.float32)
    f = jnp.ones(4, jnp.float32)
    StoredProgram(jax.jit(_fn), "k")(y, f)
    (path,) = folder.glob("*.jaxexport")
    path.write_bytes(b"not a program")
    out = StoredProgram(jax.jit(_fn), "k")(y, f)
    np.testing.assert_allclose(np.asarray(out["b"]), 3.0)
    assert "could not load the stored program" in caplog.text


def test_code_digest_names_the_source():
    d = programs._code_digest()
    assert len(d) == 64 and d == programs._code_digest()
