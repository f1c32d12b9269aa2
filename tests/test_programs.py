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


def test_stored_executable_is_loaded_without_tracing_or_lowering(folder, caplog):
    inp = {"y": jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32),
           "f": jnp.arange(4, dtype=jnp.float32)}
    dev = jax.devices()[0]
    assert stored.load_compiled("digest a", dev) is None  # nothing stored yet
    # a program no earlier process compiled (the persistent cache would give it without
    # its machine code: compile_fresh says so)
    fresh_fn = jax.jit(lambda d: {"c": _fn(d)["a"] * 2.0 + float(np.random.default_rng().integers(1 << 30))})
    exe, fresh = stored.compile_fresh(fresh_fn.lower(_structs(inp)))
    assert fresh
    again, fresh = stored.compile_fresh(fresh_fn.lower(_structs(inp)))
    assert not fresh  # from memory or JAX's cache: never stored
    stored.store_compiled("digest a", dev, exe)
    (path,) = folder.glob("*.xla")
    loaded = stored.load_compiled("digest a", dev)
    for k, v in exe(inp).items():
        np.testing.assert_array_equal(np.asarray(loaded(inp)[k]), np.asarray(v))
    assert stored.load_compiled("digest b", dev) is None  # another program
    path.write_bytes(b"not an executable")
    assert stored.load_compiled("digest a", dev) is None
    assert "could not load the stored executable" in caplog.text


def test_stored_program_digest_names_its_content(folder):
    inp = {"y": jnp.ones((4, 3), jnp.float32), "f": jnp.ones(4, jnp.float32)}
    _, d1 = stored.stored_program(jax.jit(_fn), "k1", _structs(inp))
    _, d1_again = stored.stored_program(jax.jit(_fn), "k1", _structs(inp))  # loaded from disk
    _, d2 = stored.stored_program(jax.jit(lambda d: {"a": _fn(d)["a"] + 1.0}), "k2", _structs(inp))
    assert d1 == d1_again and d1 != d2


def _call_from(depth, fn, *args):
    return _call_from(depth - 1, fn, *args) if depth else fn(*args)


def _digest_via(depth, key, inp):
    """The digest of a program whose inner jitted function was first called (and so traced,
    its operations' source locations with it) from a call stack ``depth`` frames deeper."""
    inner = jax.jit(lambda y: jnp.sin(y) * 2.0)
    _call_from(depth, inner, inp["y"])
    return _call_from(depth, stored.stored_program, jax.jit(lambda d: {"a": inner(d["y"])}), key, _structs(inp))[1]


def test_stored_program_digest_does_not_depend_on_its_caller(folder):
    """The same program traced from two call stacks (the command line and a notebook; or
    another key: a code base changed outside the program) -> one digest, so one stored
    executable serves both."""
    inp = {"y": jnp.ones((4, 3), jnp.float32), "f": jnp.ones(4, jnp.float32)}
    d1 = _digest_via(0, "k1", inp)
    d2 = _digest_via(3, "k2", inp)
    assert len(list(folder.glob("*.jaxexport"))) == 2
    assert d1 == d2


def test_engine_loads_the_stored_executable(folder, monkeypatch):
    from lucijax.engine import core
    from lucijax.program import Program

    traced_calls = []
    salt = float(np.random.default_rng().integers(1 << 30))  # a program JAX's cache has not seen

    def one(inp):
        traced_calls.append(1)
        return {"s": jnp.sum(jnp.sin(inp["y"])) + salt}

    program = Program(name="stored exe test", key=f"k{salt}", prepare=lambda b: b, one=one)
    example = {"y": np.ones((1, 5), np.float32)}
    first = core.BatchRunner(program, 4, jax.devices()[:1])
    first.compile(example)
    assert len(list(folder.glob("*.xla"))) == 1 and traced_calls
    monkeypatch.setattr(core, "_EXECUTABLES", {})  # a later process
    traced_calls.clear()
    second = core.BatchRunner(program, 4, jax.devices()[:1])
    second.compile(example)
    assert not traced_calls
    y = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    dev = jax.devices()[0]
    np.testing.assert_array_equal(np.asarray(second._compiled[dev]({"y": y})["s"]),
                                  np.asarray(first._compiled[dev]({"y": y})["s"]))
    # the executable from JAX's persistent cache (another process compiled it, none stored
    # here): run, but not stored, since it would be stored without its machine code
    (path,) = folder.glob("*.xla")
    path.unlink()
    monkeypatch.setattr(core, "_EXECUTABLES", {})
    jax.clear_caches()
    third = core.BatchRunner(program, 4, jax.devices()[:1])
    third.compile(example)
    np.testing.assert_array_equal(np.asarray(third._compiled[dev]({"y": y})["s"]),
                                  np.asarray(first._compiled[dev]({"y": y})["s"]))
    assert not list(folder.glob("*.xla"))


def test_template_cache_returns_every_set_asked_for_when_it_evicts(monkeypatch):
    """A call that needs more new template sets than the in-memory cache has room for, next
    to one it already holds, still returns all of them (the cache evicted the held one while
    adding the new ones: KeyError in CI)."""
    import dataclasses
    from types import SimpleNamespace

    from lucijax.solvers import map as map_solver
    from lucijax.solvers.fitting import FitSettings

    monkeypatch.setattr(map_solver, "_TEMPLATES", {})
    computed = []

    def fake_stored(disk_keys, compute):
        computed.extend(disk_keys)
        return [(np.full(1, float(k.split("broadening_start_kms=")[1].split(",")[0])),) for k in disk_keys]

    monkeypatch.setattr(map_solver, "stored_arrays_many", fake_stored)
    bound = SimpleNamespace(key="k", typical_fwhm=1.0, redshift=0.0, line_model=None)
    sets = [dataclasses.replace(FitSettings(), broadening_start_kms=float(w)) for w in range(1, 21)]
    map_solver.templates_for_all(bound, sets[:map_solver._MAX_TEMPLATES - 1])
    got = map_solver.templates_for_all(bound, [sets[0], *sets[15:20]])
    assert [float(g[0][0]) for g in got] == [1.0, 16.0, 17.0, 18.0, 19.0, 20.0]
    assert len(computed) == 20  # the held set was not computed again
    assert len(map_solver._TEMPLATES) <= map_solver._MAX_TEMPLATES
