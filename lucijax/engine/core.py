"""The engine: map a per-spectrum :class:`~lucijax.program.Program` over every pixel of a
cube view. The only place that knows about blocks, batches, padding, devices,
checkpoints and progress.

For each block of the view (:mod:`lucijax.io.blocks`; the next block is read while the
current one computes): the pixels the view's mask keeps are read, ``program.prepare`` turns
them into per-pixel inputs, the inputs are cut into batches of one fixed size (the last one
padded, so one compiled program serves every batch), the batches are sent round robin to
the devices (every device runs the same executable, compiled for each of them before the
first block), gathered, passed through ``program.finish`` and either saved to
the checkpoint folder or placed into the output maps. Pixels the mask leaves out are never
computed: their float outputs are NaN, their integer outputs :attr:`Status.MASKED`. The
progress bar counts pixels batch by batch and, for a program with a
:class:`~lucijax.program.ProgressNote`, shows its running share (a sampler's share of
pixels with R-hat under its threshold).

A pixel's result depends only on its own inputs (and, for samplers, on its coordinates,
from which its random key is derived), never on the batch it ran in, the device, the
number of devices, or whether its block was computed before a crash: the maps of a resumed
or multi-device run are bit-identical to those of a single uninterrupted run.

:func:`run_block` computes one block with no state beyond its arguments: a distributed
scheduler can hand blocks to workers through it and write the results with the same
:class:`~lucijax.engine.checkpoint.BlockCheckpoint`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from lucijax.engine.checkpoint import BlockCheckpoint, data_digest, digest
from lucijax.engine.stored import compile_fresh, load_compiled, store_compiled, stored_program
from lucijax.io.blocks import DEFAULT_BLOCK, read_ahead, selected, tile
from lucijax.program import Block, Program
from lucijax.status import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Execution:
    """How a program runs (never what it computes: results do not depend on these, except
    that on CPU another ``batch_size`` can change the last bits: XLA vectorises another width).

    Attributes
    ----------
    batch_size : int, optional
        Spectra per compiled batch (default: the program's own, else 64 on CPU and 4096
        on an accelerator).
    block_size : int
        Pixels are read, checkpointed and placed in ``block_size`` x ``block_size`` blocks.
    devices : sequence of jax devices, optional
        Devices the batches are spread over (default: every local device).
    checkpoint : path, optional
        Keep every finished block there: a run killed and started again with the same
        arguments computes only the missing blocks.
    progress : bool
        Show a progress bar (tqdm: terminal or notebook).
    scheduler : distributed.Client, str, optional
        Run the blocks as tasks of a Dask distributed cluster (:mod:`lucijax.engine.cluster`):
        a ``Client`` (or a cluster object), a scheduler address (``'tcp://host:8786'``) or
        ``'local:N'`` (a ``LocalCluster`` of ``N`` single-threaded worker processes, started
        and stopped by this call). None: this process's devices.
    """

    batch_size: int | None = None
    block_size: int = DEFAULT_BLOCK
    devices: Sequence | None = None
    checkpoint: str | os.PathLike | None = None
    progress: bool = True
    scheduler: Any = None

    def __post_init__(self):
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if int(self.block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")


def default_batch_size() -> int:
    """64 spectra on CPU (a batch's working arrays stay in cache, and the per-core devices
    interleave; measured fastest on 2 cores among 64, 128 and 256), 4096 on an accelerator
    (which needs wide batches to fill it)."""
    import jax

    return 64 if jax.default_backend() == "cpu" else 4096


def local_devices(devices=None, n_batches: int | None = None, n_spectra: int = 0, spectra_per_device: int = 1) -> list:
    """The devices ``n_batches`` batches (``n_spectra`` spectra) are spread over: ``devices``
    as given, else the local devices, one per ``spectra_per_device`` spectra (a program's
    :attr:`~lucijax.program.Program.spectra_per_device`); never more than one per batch."""
    import jax

    if devices is None:
        devices = jax.local_devices()
        if n_batches is not None and n_spectra:
            n_batches = min(n_batches, -(-n_spectra // max(1, spectra_per_device)))
    devices = list(devices)
    return devices if n_batches is None else devices[: max(1, n_batches)]


@dataclass
class PixelMap:
    """What :func:`map_pixels` returns.

    Attributes
    ----------
    values : pytree
        The program's outputs with leading axes ``[x, y]`` of the view (bulk fields None).
    computed : bool array [x, y]
        Pixels computed (False: masked out).
    n_resumed : int
        Pixels taken from the checkpoint folder instead of computed in this run.
    seconds : float
        Wall time of the run.
    """

    values: Any
    computed: np.ndarray
    n_resumed: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    n_devices: int = 1
    #: ``'progress_note'``: the program's :class:`~lucijax.program.ProgressNote` totals
    #: ``(n_ok, n_total)`` over the pixels computed in this run (resumed ones not counted);
    #: ``'cluster'`` (a run on a Dask cluster): blocks, workers, devices, the blocks re-run
    #: after a lost worker (:func:`lucijax.engine.cluster.run_blocks`); ``'timing'`` (a local
    #: run): where the wall time went (:func:`run_blocks_pipelined`)
    meta: dict = field(default_factory=dict)


# ------------------------------------------------------------------------ batches
#: Compiled executables of this process, by (program, input signature, device): a second
#: map of the same program (another region, another call from a notebook) compiles nothing.
_EXECUTABLES: dict = {}
_MAX_EXECUTABLES = 12


def forget(program: Program | None = None) -> int:
    """Drop this process's compiled executables of ``program`` (every input signature and
    device; None: of every program), e.g. before compiling a program that replaces it, so
    that both are never held at once, and hand the memory they held back to the system;
    returns how many were dropped."""
    keys = [k for k in _EXECUTABLES if program is None or k[0][:2] == (program.name, program.key)]
    for k in keys:
        del _EXECUTABLES[k]
    if keys:
        import gc

        gc.collect()  # executables referenced from cycles (jit wrappers) go now, not at some later collection
        release_free_memory()
    return len(keys)


def release_free_memory() -> bool:
    """Return to the system the memory the C allocator keeps free (glibc's
    ``malloc_trim``; elsewhere nothing; True when it ran). XLA frees its compiler's working
    memory at the end of each compilation, on the compiling threads' own glibc arenas,
    which keep it: 0.3-1 GB of resident memory per program that the run's batches (whose
    large buffers are mapped afresh) never reuse. Under 0.1 s."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                lib = ctypes.CDLL("libc.so.6")
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                _libc = lib
            except (OSError, AttributeError):  # not glibc
                pass
    if _libc is False:
        return False
    _libc.malloc_trim(0)
    return True


_libc = None


def device_inputs(inputs: dict) -> dict:
    """The inputs that go to the devices: those not named ``_...`` (host side only)."""
    return {k: v for k, v in inputs.items() if not k.startswith("_")}


class BatchRunner:
    """Runs batches of a program on the devices: compiled once per device (one after
    another; kept for the rest of the process), then called round robin."""

    def __init__(self, program: Program, batch_size: int, devices: list):
        self.program = program
        self.batch_size = int(batch_size)
        self.devices = devices
        self._compiled: dict = {}

    def _pad(self, inputs: dict, n: int) -> dict:
        B = self.batch_size
        if n == B:
            return inputs
        out = {}
        for k, v in inputs.items():
            v = np.asarray(v)
            if k in self.program.pad:
                fill = np.full((B - n,) + v.shape[1:], self.program.pad[k], v.dtype)
            else:
                fill = np.repeat(v[:1], B - n, axis=0)
            out[k] = np.concatenate([v, fill])
        return out

    def compile(self, example: dict) -> None:
        """Compile the batch program for every device from an example of the inputs."""
        if self.program.host is not None or self._compiled:
            return
        import jax

        program = self.program
        structs = {k: jax.ShapeDtypeStruct((self.batch_size,) + np.shape(v)[1:], np.asarray(v).dtype)
                   for k, v in device_inputs(example).items()}
        signature = (program.name, program.key, repr(sorted((k, v.shape, str(v.dtype)) for k, v in structs.items())))
        compiled = {}
        for d in self.devices:  # the ones compiled already: most recently used now
            exe = _EXECUTABLES.pop((signature, d), None)
            if exe is not None:
                _EXECUTABLES[(signature, d)] = compiled[d] = exe
        missing = [d for d in self.devices if d not in compiled]
        key = f"{program.name}\n{program.key}"
        fn = digest = None
        # one device after another: compiling on threads at once doubled the peak memory
        # of a run (and concurrent loads of one persistent-cache entry crashed jaxlib
        # 0.10.2 in native code). On CPU each device's copy is its own cache entry (the
        # device assignment is part of JAX's cache key); compiling once for all devices
        # (shard_map over a mesh) is the speed issue's next step.
        for dev in missing:
            if fn is None:  # the program stored on disk (traced and stored the first time)
                with program.running():
                    fn = jax.jit(jax.vmap(program.one))
                    if program.stored:
                        fn, digest = stored_program(fn, key, structs, program.namedtuples)
            exe = None
            if digest is not None:  # its executable, kept by an earlier process: no lowering, no compiling
                with program.running():
                    exe = load_compiled(digest, dev)
            if exe is None:
                sharding = jax.sharding.SingleDeviceSharding(dev)
                s = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in structs.items()}
                # the device is also the default one while tracing: a program that places
                # arrays itself (jaxns' nested sampler) places them there
                with program.running(), jax.default_device(dev):
                    exe, fresh = compile_fresh(fn.lower(s))
                if digest is not None and fresh:
                    store_compiled(digest, dev, exe)
            while len(_EXECUTABLES) >= _MAX_EXECUTABLES:
                _EXECUTABLES.pop(next(iter(_EXECUTABLES)))  # least recently used
            _EXECUTABLES[(signature, dev)] = compiled[dev] = exe
            release_free_memory()  # the compiler's working memory, before the next device's copy
        self._compiled = compiled

    def dispatch(self, inputs: dict, n: int, k: int):
        """Start batch ``k`` (``n`` real rows) on its device; returns a handle for :meth:`gather`."""
        batch = self._pad(inputs, n)
        if self.program.host is not None:
            return self.program.host(batch)
        import jax

        dev = self.devices[k % len(self.devices)]
        with self.program.running():
            return self._compiled[dev](jax.device_put(device_inputs(batch), dev))

    def gather(self, handle, inputs: dict, n: int):
        import jax

        with self.program.running():
            out = jax.tree.map(lambda a: np.asarray(a)[:n], handle)
        if self.program.finish is not None:
            out = self.program.finish(out, inputs)
        return out


def _rows(inputs: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in inputs.items()}


def _split_bulk(out, names: tuple[str, ...]):
    """(outputs with the bulk fields set to None, {name: bulk array})."""
    if not names:
        return out, {}
    if isinstance(out, dict):
        return {k: (None if k in names else v) for k, v in out.items()}, {k: out[k] for k in names}
    return out._replace(**{k: None for k in names}), {k: getattr(out, k) for k in names}


def start_block(program: Program, runner: BatchRunner, block: Block, timing: dict | None = None) -> list:
    """Prepare one block and start every batch of it on the devices (JAX dispatches
    asynchronously: this returns while the devices compute); :func:`gather_block` waits for
    the results. Starting block b + 1 before gathering block b keeps the devices busy while
    the host prepares and copies (:func:`map_pixels`). ``timing`` (optional) accumulates
    the seconds spent preparing (``prepare_s``), compiling (``compile_s``) and copying and
    dispatching the batches (``dispatch_s``: on a CPU the runtime may compute a batch
    while it is dispatched, so this can hold computation too)."""
    t0 = time.perf_counter()
    inputs = program.prepare(block)
    n = block.n
    B = runner.batch_size
    t1 = time.perf_counter()
    runner.compile(_rows(inputs, slice(0, 1)) if n else inputs)
    t2 = time.perf_counter()
    pending = []
    for k, i in enumerate(range(0, n, B)):
        part = _rows(inputs, slice(i, i + B))
        m = min(B, n - i)
        pending.append((part, m, runner.dispatch(part, m, k)))
    if timing is not None:
        timing["prepare_s"] = timing.get("prepare_s", 0.0) + (t1 - t0)
        timing["compile_s"] = timing.get("compile_s", 0.0) + (t2 - t1)
        timing["dispatch_s"] = timing.get("dispatch_s", 0.0) + (time.perf_counter() - t2)
    return pending


def gather_block(program: Program, runner: BatchRunner, pending: list, on_batch=None):
    """The ``(outputs, bulk)`` of a block started by :func:`start_block`, one row per
    computed pixel. ``on_batch(outputs, n)``, if given, is called after each batch is
    gathered (its outputs after ``finish``, ``n`` real rows), in order: what the progress
    bar counts."""
    import jax

    parts = []
    for i, (part, m, h) in enumerate(pending):
        pending[i] = None  # each batch's device buffers go once copied (a block's draws are not held twice)
        parts.append(runner.gather(h, part, m))
        del h
        if on_batch is not None:
            on_batch(parts[-1], m)
    out = jax.tree.map(lambda *a: np.concatenate(a), *parts) if len(parts) > 1 else parts[0]
    return _split_bulk(out, program.bulk)


def run_block(program: Program, runner: BatchRunner, block: Block, on_batch=None):
    """Compute one block: ``(outputs, bulk)`` with one row per computed pixel (every batch
    dispatched, then gathered; see :func:`gather_block` for ``on_batch``)."""
    return gather_block(program, runner, start_block(program, runner, block), on_batch)


def run_blocks_pipelined(program: Program, runner: BatchRunner, blocks, on_batch, finished) -> dict:
    """Compute ``(box, block)`` pairs in order, block b + 1 started (prepared, copied,
    dispatched) before block b is gathered: the host's work for the next block overlaps
    the devices' work on this one. ``finished(box, block, out, bulk)`` is called in order;
    when starting a block fails, the block before it is still gathered and finished (so a
    checkpointed run keeps it) before the error propagates.

    Returns where the wall time went, in seconds: ``read_wait_s`` (waiting for ``blocks``,
    i.e. for the reader), ``prepare_s``, ``compile_s``, ``dispatch_s`` (see
    :func:`start_block`), ``device_wait_s`` (waiting for the devices' results and copying
    them back, the program's ``finish``) and ``write_s`` (``finished``: placing,
    checkpointing, streaming)."""
    timing = {"read_wait_s": 0.0, "prepare_s": 0.0, "compile_s": 0.0, "dispatch_s": 0.0, "device_wait_s": 0.0,
              "write_s": 0.0}

    def complete(held):
        t = time.perf_counter()
        out, bulk = gather_block(program, runner, held[2], on_batch)
        t1 = time.perf_counter()
        finished(held[0], held[1], out, bulk)
        timing["device_wait_s"] += t1 - t
        timing["write_s"] += time.perf_counter() - t1

    held = None
    it = iter(blocks)
    while True:
        t = time.perf_counter()
        nxt = next(it, None)
        timing["read_wait_s"] += time.perf_counter() - t
        if nxt is None:
            break
        b, block = nxt
        try:
            started = start_block(program, runner, block, timing)
        except BaseException:
            if held is not None:
                complete(held)
            raise
        if held is not None:
            complete(held)
        held = (b, block, started)
    if held is not None:
        complete(held)
    return timing


# ------------------------------------------------------------------------ assembly
def _fill(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype.kind == "c":
        return np.nan
    if dtype.kind == "i":
        return int(Status.MASKED)
    return 0


class _Maps:
    """Output arrays ``[x, y, ...]`` of the view, filled block by block."""

    def __init__(self, shape_xy):
        self.shape_xy = tuple(shape_xy)
        self.arrays: list | None = None
        self.treedef = None

    def place(self, box, index, leaves, treedef) -> None:
        bx0, bx1, by0, by1 = box
        nb = (bx1 - bx0) * (by1 - by0)
        if self.arrays is None:
            self.treedef = treedef
            self.arrays = [np.full(self.shape_xy + np.shape(v)[1:], _fill(np.asarray(v).dtype), np.asarray(v).dtype)
                           for v in leaves]
        for arr, v in zip(self.arrays, leaves):
            v = np.asarray(v)
            full = np.full((nb,) + v.shape[1:], _fill(v.dtype), v.dtype)
            full[index] = v
            arr[bx0:bx1, by0:by1] = full.reshape((bx1 - bx0, by1 - by0) + v.shape[1:])

    def values(self):
        import jax

        return jax.tree_util.tree_unflatten(self.treedef, self.arrays)


def fingerprint(cube, program: Program, block_size: int, mask=None) -> str:
    """What makes a finished block reusable: the same cube (content identity), view, program
    (and its per-pixel inputs), mask and blocks."""
    ident = cube.fingerprint() if hasattr(cube, "fingerprint") else os.path.abspath(str(getattr(cube, "path", "")))
    given = [digest(k, np.asarray(v)) for k, v in sorted(program.given.items())]
    # the fields of the outputs: a block saved by a version with other fields is not reused
    fields = [list(getattr(t, "_fields", ())) for t in program.namedtuples]
    return digest(program.name, program.key, ident, list(cube.shape), int(block_size),
                  None if mask is None else np.packbits(mask), given, fields)


# ------------------------------------------------------------------------ the loop
def map_pixels(cube, program: Program, execution: Execution | None = None, *, sink=None) -> PixelMap:
    """Run ``program`` on every pixel of ``cube`` (any reader or view) that its
    ``pixel_mask`` keeps.

    Parameters
    ----------
    cube : SpectralCube or view
    program : Program
    execution : Execution
    sink : object with ``write(box, index, bulk)``, optional
        Receives the bulk outputs of every block (``index``: flat indices of the computed
        pixels inside ``box``), in no particular order; required when the program has bulk
        fields.

    Returns
    -------
    PixelMap
    """
    ex = execution or Execution()
    t0 = time.perf_counter()
    nx, ny = int(cube.shape[0]), int(cube.shape[1])
    mask = getattr(cube, "pixel_mask", None)
    mask = None if mask is None else np.asarray(mask, bool)
    if mask is not None and mask.shape != (nx, ny):
        raise ValueError(f"the view's pixel mask has shape {mask.shape}, expected [x, y] = {(nx, ny)}")
    for k, v in program.given.items():
        if np.shape(v)[:2] != (nx, ny):
            raise ValueError(f"per-pixel input {k!r} has shape {np.shape(v)}: expected [x, y, ...] = ({nx}, {ny}, ...)")
    if program.bulk and sink is None:
        raise ValueError(f"program {program.name!r} streams {', '.join(program.bulk)}: give a sink")
    boxes = [b for b in tile((0, nx, 0, ny), ex.block_size) if selected(mask, b).size]
    if not boxes:
        raise ValueError("the mask selects no pixel of the cube")
    n_pix = nx * ny if mask is None else int(mask.sum())
    batch_size = max(1, min(int(ex.batch_size or program.batch_size or default_batch_size()), n_pix))
    ckpt = BlockCheckpoint(ex.checkpoint, fingerprint(cube, program, ex.block_size, mask)) if ex.checkpoint else None
    try:
        header = cube.header
        digests: dict = {}

        def read(b):
            block = read_block(cube, program, mask, b, header)
            if ckpt is not None:
                digests[b] = data_digest(block.spectra, block.calib)
            return block

        todo = [b for b in boxes if ckpt is None or not ckpt.has(b)]
        if ckpt is not None and len(todo) < len(boxes):
            todo = _check_finished(ckpt, boxes, todo, read, digests)
        n_batches = sum(-(-selected(mask, b).size // batch_size) for b in todo)
        maps = _Maps((nx, ny))
        n_resumed = n_pix - sum(selected(mask, b).size for b in todo)
        bar = tqdm(total=n_pix, initial=n_resumed, unit="spectra", desc=program.name, smoothing=0.1,
                   disable=not ex.progress or n_pix < 2 * batch_size)
        note = program.progress_note
        tally = [0, 0]  # the note's running (n_ok, n_total) over the pixels computed in this run

        def progressed(n, counted=None):
            if counted is not None:
                tally[0] += int(counted[0])
                tally[1] += int(counted[1])
                bar.set_postfix_str(note.text(*tally), refresh=False)
            bar.update(n)

        def on_batch(out, n):
            progressed(n, None if note is None else note.count(out))

        import jax

        def finished(b, index, out, bulk, digest):
            leaves, treedef = jax.tree_util.tree_flatten((out, bulk))
            if ckpt is not None:
                ckpt.save(b, leaves, treedef, digest)
            else:
                out_leaves, out_def = jax.tree_util.tree_flatten(out)
                maps.place(b, index, out_leaves, out_def)
                if sink is not None and bulk:
                    sink.write(b, index, bulk)

        if ex.scheduler is not None:  # the blocks as tasks of a Dask cluster, each written here once
            from lucijax.engine.cluster import run_blocks

            cluster_meta = run_blocks(ex.scheduler, cube, program, todo, mask, batch_size, finished, progressed,
                                      want_digest=ckpt is not None, compute=compute_box, make_runner=block_runner)
            n_devices = cluster_meta["n_devices"]
        else:
            cluster_meta = None
            devices = local_devices(ex.devices, n_batches, n_pix - n_resumed, program.spectra_per_device)
            n_devices = len(devices)
            runner = BatchRunner(program, batch_size, devices)
            timing = run_blocks_pipelined(program, runner, read_ahead(todo, read), on_batch,
                                          lambda b, block, out, bulk: finished(b, block.index, out, bulk,
                                                                               digests.pop(b, None)))
        bar.close()
        if ckpt is not None:  # every block from disk, one at a time (bounded memory)
            for b in boxes:
                leaves, treedef = ckpt.load(b)
                out, bulk = jax.tree_util.tree_unflatten(treedef, leaves)
                out_leaves, out_def = jax.tree_util.tree_flatten(out)
                maps.place(b, selected(mask, b), out_leaves, out_def)
                if sink is not None and bulk:
                    sink.write(b, selected(mask, b), bulk)
    finally:
        if ckpt is not None:
            ckpt.close()
    computed = np.ones((nx, ny), bool) if mask is None else mask.copy()
    meta = {"progress_note": tuple(tally)} if note is not None else {}
    if cluster_meta is not None:
        meta["cluster"] = cluster_meta
    else:
        meta["timing"] = timing
    return PixelMap(maps.values(), computed, n_resumed, time.perf_counter() - t0, batch_size, n_devices, meta)


def read_block(cube, program: Program, mask, b, header=None) -> Block:
    """The :class:`~lucijax.program.Block` of box ``b`` of ``cube``: the pixels ``mask``
    keeps, their spectra (when the program reads any), calibration wavelengths, view
    coordinates and rows of the program's ``given`` inputs."""
    idx = selected(mask, b)
    spectra = None
    if program.reads_spectra:
        spectra = cube.read_spectra(*b)
        spectra = spectra.reshape(-1, spectra.shape[-1])[idx]
    calib = cube.read_calib_map(*b)
    calib = None if calib is None else np.asarray(calib, np.float64).reshape(-1)[idx]
    gx, gy = np.meshgrid(np.arange(b[0], b[1]), np.arange(b[2], b[3]), indexing="ij")
    xy = np.stack([gx.reshape(-1)[idx], gy.reshape(-1)[idx]], axis=1).astype(np.int32)
    given = {k: np.asarray(v[b[0]:b[1], b[2]:b[3]]).reshape((-1,) + np.shape(v)[2:])[idx]
             for k, v in program.given.items()}
    return Block(b, idx, xy, spectra, calib, given, cube.header if header is None else header)


def block_runner(program: Program, batch_size: int) -> BatchRunner:
    """A :class:`BatchRunner` of ``program`` on every local device (a cluster worker's)."""
    return BatchRunner(program, batch_size, local_devices())


def compute_box(cube, program: Program, mask, box, runner: BatchRunner, want_digest: bool = False) -> dict:
    """Read and compute block ``box`` here (what a cluster worker runs for one task):
    ``index``, ``out``, ``bulk`` as :func:`run_block` gives them, the data ``digest``
    (``want_digest``) and the program's progress-note count over the block (``counted``)."""
    block = read_block(cube, program, mask, tuple(box))
    note = program.progress_note
    counted = [0, 0]

    def on_batch(out, n):
        if note is not None:
            ok, total = note.count(out)
            counted[0] += int(ok)
            counted[1] += int(total)

    out, bulk = run_block(program, runner, block, on_batch)
    return {"index": block.index, "out": out, "bulk": bulk,
            "digest": data_digest(block.spectra, block.calib) if want_digest else None,
            "counted": None if note is None else tuple(counted), "n_devices": len(runner.devices)}


def _check_finished(ckpt, boxes, todo, read, digests) -> list:
    """The blocks to compute: ``todo`` and the finished blocks whose data are no longer
    what they were computed from (each finished block is read again and checksummed)."""
    todo = set(todo)
    n_changed = 0
    for b in boxes:
        if b in todo:
            continue
        read(b)
        if ckpt.data_digest(b) != digests.pop(b):
            ckpt.discard(b)
            todo.add(b)
            n_changed += 1
    if n_changed:
        log.warning("%d finished block(s) in %s were computed from other data than the cube holds now: "
                    "computed again", n_changed, ckpt.folder)
    return [b for b in boxes if b in todo]


def map_rows(program: Program, inputs: dict, execution: Execution | None = None):
    """Run ``program`` on spectra already in memory: ``inputs`` holds the per-pixel inputs
    its ``one`` takes (e.g. ``{'y': (n, n_window), 'fwhm': (n,)}``, what ``prepare`` would
    return for a block; the program's ``given`` inputs are not used). Same batches,
    padding, devices and ``finish`` as :func:`map_pixels`; returns the outputs with one row
    per input row."""
    ex = execution or Execution(progress=False)
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    n = len(next(iter(inputs.values())))
    batch_size = max(1, min(int(ex.batch_size or program.batch_size or default_batch_size()), n))
    devices = local_devices(ex.devices, -(-n // batch_size), n, program.spectra_per_device)
    runner = BatchRunner(program, batch_size, devices)
    xy = np.stack([np.arange(n), np.zeros(n, int)], axis=1).astype(np.int32)
    block = Block((0, n, 0, 1), np.arange(n), xy, None, None, {}, None)
    p = dataclasses.replace(program, prepare=lambda b: inputs)
    out, bulk = run_block(p, runner, block)
    return out if not bulk else (out, bulk)


__all__ = ["Execution", "PixelMap", "BatchRunner", "map_pixels", "map_rows", "run_block", "start_block", "gather_block",
           "run_blocks_pipelined", "forget", "release_free_memory", "read_block", "fingerprint",
           "default_batch_size", "local_devices"]
