"""Throughput and latency of a runner per batch size, on random inputs (`edge-agent bench`)."""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

from agent.errors import AgentError
from agent.runtime.base import batch_size_of


def bench_runner(runner: Any, batches: List[int], seconds: float, warmup: int) -> List[Dict[str, Any]]:
    """Time `runner` (activated) on random inputs for each batch size; one row of figures per size."""
    spec = runner.first_input()
    fixed = batch_size_of(spec)
    largest = getattr(runner, "max_batch", None)
    rng = np.random.default_rng(0)
    rows: List[Dict[str, Any]] = []
    for batch in batches:
        if (fixed is not None and batch != fixed) or (largest is not None and batch > largest):
            limit = f"fixed batch {fixed}" if fixed is not None else f"at most {largest}"
            rows.append({"batch": batch, "skipped": f"the engine takes {limit}"})
            continue
        dims = [batch] + [d if isinstance(d, int) and d > 0 else None for d in spec.shape[1:]]
        if any(d is None for d in dims):
            raise AgentError(f"input '{spec.name}' has dynamic dimensions {spec.shape} besides the batch; bench needs fixed ones")
        feed = {s.name: _random_input(rng, [batch] + [int(d) for d in s.shape[1:]], s.dtype) for s in runner.inputs}
        for _ in range(max(0, warmup)):
            runner.infer(feed)
        times: List[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            started = time.perf_counter()
            runner.infer(feed)
            times.append((time.perf_counter() - started) * 1000.0)
        values = np.asarray(times)
        total_s = float(values.sum()) / 1000.0
        rows.append(
            {
                "batch": batch,
                "runs": len(times),
                "throughput": round(batch * len(times) / total_s, 2),
                "latency_p50_ms": round(float(np.percentile(values, 50)), 3),
                "latency_p95_ms": round(float(np.percentile(values, 95)), 3),
                "latency_p99_ms": round(float(np.percentile(values, 99)), 3),
                "ms_per_item": round(float(values.mean()) / batch, 3),
            }
        )
    return rows


def _random_input(rng: Any, shape: List[int], dtype: str) -> Any:
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 100, shape).astype(dtype)
