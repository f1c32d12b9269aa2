"""The JSON record a benchmark script keeps (``bench_gpu.py``, ``bench_gpu_profile.py``,
``bench_roofline.py``): each part written to disk as soon as it ends, so that a run cut short
(a lent GPU's time running out) keeps what it measured."""

from __future__ import annotations

import json
import time
from pathlib import Path


def log(*a):
    print(*a, flush=True)


class Report:
    """``put(part, values)`` records a part in ``path`` (JSON) and logs it with the seconds
    since the report was made (at most ``max_chars`` of it, through ``log``)."""

    def __init__(self, path: Path, max_chars: int = 3000, log=log):
        self.log = log
        self.path = Path(path)
        self.data: dict = {}
        self.max_chars = max_chars
        self.t0 = time.perf_counter()

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=float))

    def put(self, part: str, values) -> None:
        self.data[part] = values
        self.write()
        self.log(f"== {part} ({time.perf_counter() - self.t0:.0f} s): {json.dumps(values, default=float)[: self.max_chars]}")
