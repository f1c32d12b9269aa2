"""The engine's blocks as tasks of a Dask distributed cluster.

:func:`lucijax.engine.map_pixels` with ``Execution(scheduler=...)`` hands every block that
is not yet in the checkpoint folder to the cluster as one task. A worker (a process or a
host with its own JAX devices) rebuilds the cube view and the program once per run from a
pickled payload (readers pickle as their path and reopen the file: the workers must see
the cube at the same path), reads its block itself, computes it with
:func:`~lucijax.engine.core.run_block` on its devices and returns the block's outputs.
The calling process writes each finished block **once** to the same
:class:`~lucijax.engine.checkpoint.BlockCheckpoint` a local run uses (it alone holds the
folder's lock), as soon as it arrives, and assembles the maps exactly as a local run does:
the maps are bit-identical to those of a one-process run.

Fault tolerance is Dask's: a worker that dies (even ``kill -9``) loses only the blocks it
was computing (results are collected as they finish, so none waits on a worker); the
scheduler runs them again on another worker (a nanny restarts the dead one). Each task
logs its start as a scheduler event, so the run can name the blocks that were re-run. A
whole run killed and started again resumes from the checkpoint folder as a local run does.

Dask is optional (``pip install 'lucijax[cluster]'``): nothing here is imported unless a
scheduler is given.

Schedulers
----------
* a ``distributed.Client`` (or a cluster object: ``LocalCluster``, ``SLURMCluster``...);
* an address ``'tcp://host:8786'`` of a running scheduler (``dask scheduler`` +
  ``dask worker``);
* ``'local:N'``: a ``LocalCluster`` of ``N`` single-threaded worker processes, each with
  its own JAX CPU devices (:func:`worker_devices`: two or more, so that two batches of its
  block run at once, as in a one-process run).

:func:`connect` opens any of them once for several fits (the command line, a survey);
:func:`jobqueue_cluster` starts workers as SLURM or PBS jobs (``dask-jobqueue``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections import OrderedDict

import numpy as np

log = logging.getLogger(__name__)

#: The scheduler event topic of block starts (one event per task attempt).
EVENT_TOPIC = "lucijax-block"
INSTALL_HINT = "pip install 'lucijax[cluster]'"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError(f"a Dask scheduler needs the 'distributed' package: {INSTALL_HINT}") from None
    return distributed


def parse_scheduler(text: str) -> tuple[str, int | str]:
    """``('local', N)`` for ``'local:N'``, else ``('address', text)`` (``tcp://``, ``tls://``,
    ``host:port``...)."""
    text = str(text).strip()
    if text.lower().startswith("local"):
        m = re.fullmatch(r"local(?::(\d+))?", text.lower())
        if m is None or (m.group(1) is not None and int(m.group(1)) < 1):
            raise ValueError(f"scheduler {text!r}: write local:N with N >= 1 worker processes")
        return "local", int(m.group(1) or (os.cpu_count() or 1))
    if not text:
        raise ValueError("empty scheduler address")
    return "address", text


def worker_devices(n_workers: int, cores: int | None = None) -> int:
    """JAX CPU devices of each of ``n_workers`` local worker processes sharing ``cores``
    (default: the cores this process may use): the cores over the workers, at least 2.

    A batch of a MAP fit is a chain of small operations that XLA's CPU runtime spreads over
    its thread pool (one pool per process, one thread per core): one batch at a time on one
    device keeps those threads handing work to each other, two batches on two devices keep
    each busy with its own. Measured on 2 cores (benchmarks/RESULTS.md, issue 17): the same
    8 blocks cost 8.5-9.6 CPU-seconds in a process with one device and 7.4-7.6 with two,
    and 2 worker processes of one device each burn ~25 % more CPU than one process of two
    devices for the same cube. Batches are the same with any number of devices, so the maps
    are too."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
    return max(2, int(cores) // max(1, int(n_workers)))


def worker_env(n_devices: int = 2) -> dict:
    """Environment of local worker processes: ``n_devices`` JAX CPU devices each, set with
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` (in effect from the worker's
    start, whatever it runs first; one in this process's ``XLA_FLAGS`` is replaced) and
    ``LUCIJAX_CPU_DEVICES`` (what :func:`lucijax.set_cpu_devices` reads there)."""
    n = int(n_devices)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    flags = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    return {"XLA_FLAGS": flags, "LUCIJAX_CPU_DEVICES": str(n)}


def local_cluster(n_workers: int, devices_per_worker: int | None = None):
    """A ``LocalCluster`` of ``n_workers`` single-threaded worker processes, each with
    ``devices_per_worker`` JAX CPU devices (default :func:`worker_devices`), no dashboard.
    The workers start with glibc's default allocator settings: the nanny's
    ``MALLOC_TRIM_THRESHOLD_`` is left out (see :func:`allocator_like_one_process`)."""
    distributed = _distributed()
    import dask

    n_devices = int(devices_per_worker or worker_devices(n_workers))
    if n_devices < 1:
        raise ValueError(f"a worker needs at least one device, got {devices_per_worker}")
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}": None}):
        return distributed.LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True,
                                        dashboard_address=None, env=worker_env(n_devices))


#: The variable Dask's nanny sets in every worker it spawns (65536 by default).
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
#: glibc's ``mallopt`` parameters and the values its dynamic threshold grows to on 64-bit
#: systems (``DEFAULT_MMAP_THRESHOLD_MAX``, and twice that for trimming).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_allocator_checked = False


def allocator_like_one_process() -> bool:
    """Undo, in this worker process, what Dask's nanny does to glibc's allocator.

    The nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``. Setting any trim
    threshold switches off glibc's dynamic mmap threshold, so every buffer over 128 KiB that
    XLA allocates for a batch is a fresh ``mmap`` and is returned to the system when freed: a
    block of 48x48 spectra then costs ~300,000 page faults instead of ~5,000 and 20 % more CPU
    time (benchmarks/RESULTS.md, issue 17). Where the variable is set (a worker started by
    ``dask worker``, dask-jobqueue, or a ``LocalCluster`` started elsewhere), this sets the
    thresholds the dynamic rule reaches (mmap above 32 MiB, trim above 64 MiB) with
    ``mallopt``; elsewhere, or without glibc, it does nothing. Once per process; True when it
    changed the settings."""
    global _allocator_checked
    if _allocator_checked:
        return False
    _allocator_checked = True
    if TRIM_VARIABLE not in os.environ or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) == 1)
    except (OSError, AttributeError):  # not glibc
        return False
    if ok:
        log.info("worker %d: %s=%s overridden: glibc mmap threshold %d MiB, trim threshold %d MiB", os.getpid(),
                 TRIM_VARIABLE, os.environ[TRIM_VARIABLE], _MMAP_THRESHOLD_MAX >> 20, 2 * _MMAP_THRESHOLD_MAX >> 20)
    return ok


def jobqueue_cluster(kind: str, *, cores: int = 1, memory: str = "4GB", walltime: str = "01:00:00",
                     processes: int = 1, queue: str | None = None, account: str | None = None,
                     job_extra_directives=(), prologue=(), **kwargs):
    """A ``dask-jobqueue`` cluster whose workers are batch jobs: ``kind`` 'slurm' or 'pbs';
    each job asks for ``cores`` cores, ``memory`` and ``walltime`` and runs ``processes``
    worker processes (one per GPU on a GPU node). Scale it with ``cluster.scale(jobs=J)``.
    ``prologue``: shell lines run before the workers start (``module load``, a venv)."""
    _distributed()
    try:
        import dask_jobqueue
    except ImportError:
        raise ValueError(f"--cluster needs the 'dask-jobqueue' package: {INSTALL_HINT}") from None
    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}
    if kind not in classes:
        raise ValueError(f"cluster kind must be one of {sorted(classes)}, got {kind!r}")
    if int(cores) < 1 or int(processes) < 1:
        raise ValueError(f"a job needs cores >= 1 and processes >= 1, got {cores} and {processes}")
    opts = dict(cores=int(cores), memory=str(memory), walltime=str(walltime), processes=int(processes),
                job_extra_directives=list(job_extra_directives), job_script_prologue=list(prologue),
                scheduler_options={"dashboard_address": ":0"}, **kwargs)
    if queue:
        opts["queue"] = queue
    if account:
        opts["account"] = account
    return classes[kind](**opts)


@contextlib.contextmanager
def connect(scheduler, *, timeout: float = 30.0):
    """A ``distributed.Client`` for ``scheduler`` (see the module docstring), closed at the
    end (with the cluster this call started, if any); a ``Client`` given is yielded as it
    is and left open."""
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    cluster = None
    if isinstance(scheduler, str):
        kind, value = parse_scheduler(scheduler)
        if kind == "local":
            cluster = local_cluster(value)
            target = cluster
        else:
            target = value
    else:  # a cluster object (LocalCluster, SLURMCluster...)
        target = scheduler
    try:
        try:
            client = distributed.Client(target, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ValueError(f"could not reach the Dask scheduler at {target} ({err})") from None
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------ worker side
#: Runs this worker process has rebuilt: token -> (cube, program, mask, runner).
_RUNS: OrderedDict = OrderedDict()
_MAX_RUNS = 2


def _payload(blob: bytes) -> bytes:
    """The task every block task depends on: the pickled run, recomputable if lost."""
    return blob


def _worker_run(blob: bytes, token: str, batch_size: int, make_runner):
    state = _RUNS.get(token)
    if state is not None:
        _RUNS.move_to_end(token)
        return state
    import pickle

    allocator_like_one_process()
    cube, program, mask, cache_dir = pickle.loads(blob)
    if cache_dir:
        import jax

        if not jax.config.jax_compilation_cache_dir:
            from lucijax.config import enable_compilation_cache

            enable_compilation_cache(cache_dir)
    state = (cube, program, mask, make_runner(program, batch_size))
    while len(_RUNS) >= _MAX_RUNS:
        _RUNS.popitem(last=False)
    _RUNS[token] = state
    return state


def _compute_block(blob: bytes, token: str, box, batch_size: int, want_digest: bool, compute, make_runner) -> dict:
    """One block on this worker (``compute``: :func:`lucijax.engine.core.compute_box`): its
    outputs (one row per computed pixel) and what the calling process needs to write and
    report it."""
    from distributed import get_worker

    worker = get_worker()
    worker.log_event(EVENT_TOPIC, {"token": token, "box": tuple(box), "worker": worker.address, "pid": os.getpid()})
    cube, program, mask, runner = _worker_run(blob, token, batch_size, make_runner)
    t0 = time.perf_counter()
    res = compute(cube, program, mask, tuple(box), runner, want_digest)
    res.update(box=tuple(box), worker=worker.address, pid=os.getpid(), seconds=time.perf_counter() - t0)
    return res


# ------------------------------------------------------------------------ client side
def _box_text(b) -> str:
    return f"{b[0]}:{b[1]},{b[2]}:{b[3]}"


def run_blocks(scheduler, cube, program, todo, mask, batch_size: int, finished, progressed, *,
               want_digest: bool = False, compute, make_runner) -> dict:
    """Compute the blocks ``todo`` of ``cube`` on a Dask cluster: each task calls
    ``compute(cube, program, mask, box, runner, want_digest)`` on a worker, with the
    ``make_runner(program, batch_size)`` that worker built once for the run (the engine
    passes :func:`~lucijax.engine.core.compute_box` and
    :func:`~lucijax.engine.core.block_runner`).

    ``finished(box, index, out, bulk, digest)`` is called in this process once per block,
    as it arrives (the engine writes it to the checkpoint or places it into the maps);
    ``progressed(n, counted)`` after it (the progress bar). Returns what the run did:
    ``n_devices`` (over the workers that computed blocks), ``workers``, ``blocks``,
    ``rerun`` (boxes computed more than once: their first worker was lost),
    ``task_seconds`` (summed compute time of the blocks on the workers).
    """
    import cloudpickle

    distributed = _distributed()
    todo = [tuple(int(v) for v in b) for b in todo]
    meta = {"n_devices": 0, "workers": 0, "blocks": len(todo), "rerun": [], "task_seconds": 0.0}
    if not todo:
        return meta
    import jax

    blob = cloudpickle.dumps((cube, program, mask, jax.config.jax_compilation_cache_dir or None))
    token = uuid.uuid4().hex[:12]
    devices: dict = {}
    with connect(scheduler) as client:
        payload = client.submit(_payload, blob, key=f"lucijax-run-{token}", pure=False)
        futures = {client.submit(_compute_block, payload, token, b, int(batch_size), bool(want_digest), compute,
                                 make_runner, key=f"lucijax-block-{token}-{b[0]}-{b[2]}", pure=False): b for b in todo}
        try:
            for future in distributed.as_completed(list(futures)):
                res = future.result()
                futures.pop(future)
                future.release()  # nothing of a finished block stays on a worker
                finished(res["box"], res["index"], res["out"], res["bulk"], res["digest"])
                devices[res["worker"]] = res["n_devices"]
                meta["task_seconds"] += res["seconds"]
                progressed(int(np.size(res["index"])), res["counted"])
        except BaseException:
            client.cancel(list(futures) + [payload])
            raise
        finally:
            del futures
        payload.release()
        starts: dict = {}
        for _, msg in client.get_events(EVENT_TOPIC):
            if isinstance(msg, dict) and msg.get("token") == token:
                starts.setdefault(tuple(msg["box"]), []).append(msg["worker"])
    rerun = sorted(b for b, w in starts.items() if len(w) > 1)
    if rerun:
        log.warning("%d block(s) re-run after their worker was lost: %s", len(rerun),
                    "; ".join(f"{_box_text(b)} (started on {', '.join(starts[b][:-1])}, done on {starts[b][-1]})"
                              for b in rerun))
    meta.update(n_devices=int(sum(devices.values())), workers=len(devices), rerun=rerun)
    return meta


__all__ = [
    "EVENT_TOPIC",
    "allocator_like_one_process",
    "connect",
    "jobqueue_cluster",
    "local_cluster",
    "parse_scheduler",
    "run_blocks",
    "worker_devices",
    "worker_env",
]
