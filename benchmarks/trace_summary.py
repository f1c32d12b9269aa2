"""Summaries of a ``jax.profiler`` Perfetto trace, shared by the benchmark scripts
(``bench_gpu_profile.py``, ``bench_roofline.py``)."""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path


def top_events(trace_dir: Path, n: int = 15, skip: tuple = ()) -> dict:
    """Device events of a Perfetto trace summed by name (falls back to every XLA op event
    when the trace has no device process, as on a CPU); events whose name starts with one of
    ``skip`` are left out (on a CPU: Python frames ``$...``, the executor's envelope)."""
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if not files:
        return {"error": "no perfetto_trace.json.gz written"}
    with gzip.open(files[-1], "rt") as fh:
        trace = json.load(fh)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in names.items() if "GPU" in name or "device" in name.lower() or "TPU" in name}
    total = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        if device and e["pid"] not in device:
            continue
        if skip and str(e.get("name", "")).startswith(skip):
            continue
        total[e["name"]] += float(e["dur"])
        count[e["name"]] += 1
    s = sum(total.values())
    return {"processes": sorted(set(names[p] for p in device)) if device else sorted(set(names.values())),
            "device_busy_us": s,
            "top": [{"name": k[:120], "us": v, "share": v / s if s else float("nan"), "calls": count[k]}
                    for k, v in total.most_common(n)]}
