"""The pycuda buffer path, apart from TensorRT so it runs on any NVIDIA GPU: the device's primary context,
page-locked host buffers paired with device buffers, one stream, asynchronous copies.

The TensorRT runner uses it; `python -m agent.runtime.cuda_buffers --selftest` proves it on a real GPU without
TensorRT (a round trip through the GPU with a small kernel, printed as JSON).

Why the primary context: TensorRT uses the CUDA runtime, which works in the device's primary context; a
context pycuda made on its own would be a second one, and pointers from one are not valid in the other.
Why push/pop around every use: a CUDA context is current per thread, and the pipeline calls `infer` from its
own thread, not the one that activated the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from agent.lazy import deferred, require
from agent.runtime.base import RunnerError

if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: the idle agent imports this module but must not load numpy (agent.lazy.deferred)
    np = deferred("numpy")

FEATURE = "the CUDA buffer path (TensorRT runner)"


def nbytes_of(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense array of this shape and dtype (0 for an empty shape element)."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise RunnerError(f"shape {tuple(shape)} still has a dynamic dimension; set the input shapes first")
        count *= int(dim)
    return count * np.dtype(dtype).itemsize


def grown_capacity(current: int, needed: int) -> int:
    """New capacity for a buffer that must hold `needed` bytes: unchanged if it fits, else doubled until it
    fits (at least 256 bytes), so a growing batch reallocates a few times, not on every frame."""
    if needed <= current:
        return current
    capacity = max(256, current)
    while capacity < needed:
        capacity *= 2
    return capacity


def pycuda_module(name: str = "pycuda.driver") -> Any:
    """`pycuda.driver` (or `pycuda.compiler`), failing with how to get pycuda, or why it cannot load here."""
    require("pycuda", FEATURE)
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pycuda is there but libcuda is not (no driver on this machine)
        raise RunnerError(f"{FEATURE}: cannot load {name} ({exc}); is the NVIDIA driver installed?") from None


class CudaContext:
    """The primary context of one GPU, made current on the calling thread only inside `active()`."""

    def __init__(self, device_index: int = 0) -> None:
        self.cuda = pycuda_module("pycuda.driver")
        try:
            self.cuda.init()
            self.device = self.cuda.Device(device_index)
            self._context = self.device.retain_primary_context()
        except Exception as exc:  # pycuda raises pycuda._driver.Error subclasses (LogicError, RuntimeError)
            raise RunnerError(f"cannot open CUDA device {device_index}: {exc}") from None
        self.device_index = device_index

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        self._context.push()
        try:
            yield self.cuda
        finally:
            self.cuda.Context.pop()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def describe(self) -> Dict[str, Any]:
        major, minor = self.device.compute_capability()
        return {
            "device": self.device.name(),
            "index": self.device_index,
            "compute_capability": f"{major}.{minor}",
            "memory_mb": int(self.device.total_memory() // (1024 * 1024)),
            "driver_version": int(self.cuda.get_driver_version()),
        }

    def release(self) -> None:
        detach = getattr(self._context, "detach", None)
        if detach is not None:
            try:
                detach()
            except Exception:  # already released by interpreter shutdown
                pass


@dataclass
class HostDeviceBuffer:
    """A page-locked host buffer and a device buffer of the same capacity, reused from call to call."""

    name: str
    host: Any  # numpy uint8 array in page-locked memory
    device: Any  # pycuda DeviceAllocation
    capacity: int

    @classmethod
    def allocate(cls, cuda: Any, name: str, nbytes: int) -> HostDeviceBuffer:
        capacity = grown_capacity(0, nbytes)
        try:
            host = cuda.pagelocked_empty(capacity, np.uint8)
            device = cuda.mem_alloc(capacity)
        except Exception as exc:
            raise RunnerError(f"cannot allocate {capacity} bytes of host/device memory for '{name}': {exc}") from None
        return cls(name, host, device, capacity)

    def ensure(self, cuda: Any, nbytes: int) -> None:
        """Grow (reallocate) so `nbytes` fit; contents are not kept."""
        if nbytes <= self.capacity:
            return
        self.free()
        fresh = HostDeviceBuffer.allocate(cuda, self.name, grown_capacity(self.capacity, nbytes))
        self.host, self.device, self.capacity = fresh.host, fresh.device, fresh.capacity

    @property
    def device_ptr(self) -> int:
        return int(self.device)

    def view(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """The start of the host buffer seen as an array of `shape` and `dtype` (no copy)."""
        size = nbytes_of(shape, dtype)
        return np.asarray(self.host[:size]).view(np.dtype(dtype)).reshape(tuple(int(d) for d in shape))

    def stage(self, cuda: Any, array: np.ndarray) -> int:
        """Copy `array` into the page-locked buffer (on the CPU, now); returns the bytes staged."""
        self.ensure(cuda, array.nbytes)
        np.copyto(self.view(array.shape, array.dtype), array, casting="no")
        return int(array.nbytes)

    def to_device(self, cuda: Any, nbytes: int, stream: Any) -> None:
        """Host -> device of the first `nbytes` staged, asynchronously on `stream`."""
        cuda.memcpy_htod_async(self.device, self.host[:nbytes], stream)

    def upload(self, cuda: Any, array: np.ndarray, stream: Any) -> None:
        """Stage `array` in the page-locked buffer, then host -> device asynchronously on `stream`."""
        self.to_device(cuda, self.stage(cuda, array), stream)

    def download(self, cuda: Any, shape: Sequence[int], dtype: Any, stream: Any) -> np.ndarray:
        """Device -> page-locked host asynchronously; the returned view is valid after the stream syncs."""
        size = nbytes_of(shape, dtype)
        self.ensure(cuda, size)
        cuda.memcpy_dtoh_async(self.host[:size], self.device, stream)
        return self.view(shape, dtype)

    def free(self) -> None:
        if self.device is not None:
            try:
                self.device.free()
            except Exception:  # freeing after the context is gone
                pass
        self.device = None
        self.host = None
        self.capacity = 0


# The self-test --------------------------------------------------------------------------------------------

_KERNEL = """
__global__ void scale_add(float *data, const float scale, const float offset, const int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) data[i] = data[i] * scale + offset;
}
"""


def _compile_kernel() -> Tuple[Optional[Any], str]:
    """The scale_add kernel, or None and why (nvcc missing, say), so the test falls back to a memcpy."""
    try:
        compiler = pycuda_module("pycuda.compiler")
        module = compiler.SourceModule(_KERNEL)
        return module.get_function("scale_add"), ""
    except Exception as exc:  # CompileError, or nvcc not on PATH
        return None, " ".join(str(exc).split())[:300]


def selftest(megabytes: float = 64.0, device_index: int = 0, repeats: int = 5) -> Dict[str, Any]:
    """Allocate pinned + device buffers, send an array through the GPU on one stream (H2D, kernel or D2D
    copy, D2H), check the values and time the copies with CUDA events."""
    report: Dict[str, Any] = {"ok": False, "test": "cuda_buffers"}
    pycuda = require("pycuda", FEATURE)
    report["pycuda"] = str(getattr(pycuda, "VERSION_TEXT", "?"))
    context = CudaContext(device_index)
    report.update(context.describe())
    count = max(1024, int(megabytes * 1024 * 1024) // 4)
    source = np.arange(count, dtype=np.float32) % 1000.0
    with context.active() as cuda:
        stream = context.stream()
        inbound = HostDeviceBuffer.allocate(cuda, "in", source.nbytes)
        outbound = HostDeviceBuffer.allocate(cuda, "out", source.nbytes)
        kernel, why = _compile_kernel()
        scale, offset = (2.0, 1.0) if kernel is not None else (1.0, 0.0)
        report["kernel"] = "scale_add" if kernel is not None else f"none (device-to-device copy instead: {why})"
        h2d_ms: List[float] = []
        d2h_ms: List[float] = []
        stage_ms: List[float] = []
        result = np.empty(0, np.float32)
        view = result
        for _ in range(repeats):
            start, mid, before_d2h, end = (cuda.Event() for _ in range(4))
            tick = time.perf_counter()
            staged = inbound.stage(cuda, source)  # CPU copy into pinned memory: timed apart from the DMA
            stage_ms.append((time.perf_counter() - tick) * 1000.0)
            start.record(stream)
            inbound.to_device(cuda, staged, stream)
            mid.record(stream)
            if kernel is not None:
                block = 256
                grid = (count + block - 1) // block
                kernel(inbound.device, np.float32(scale), np.float32(offset), np.int32(count), block=(block, 1, 1), grid=(grid, 1), stream=stream)
                cuda.memcpy_dtod_async(outbound.device, inbound.device, source.nbytes, stream)
            else:
                cuda.memcpy_dtod_async(outbound.device, inbound.device, source.nbytes, stream)
            before_d2h.record(stream)
            view = outbound.download(cuda, source.shape, source.dtype, stream)
            end.record(stream)
            stream.synchronize()
            result = view.copy()
            h2d_ms.append(mid.time_since(start))
            d2h_ms.append(end.time_since(before_d2h))
        expected = source * np.float32(scale) + np.float32(offset)
        max_error = float(np.max(np.abs(result - expected)))
        view = np.empty(0, np.float32)  # drop the last view of pinned memory while the context is current
        inbound.free()
        outbound.free()
    context.release()
    best_h2d, best_d2h = min(h2d_ms), min(d2h_ms)
    report.update(
        {
            "bytes": int(source.nbytes),
            "repeats": repeats,
            "max_abs_error": max_error,
            "h2d_ms": round(best_h2d, 3),
            "d2h_ms": round(best_d2h, 3),
            "stage_ms": round(min(stage_ms), 3),
            "h2d_gb_s": round(source.nbytes / (best_h2d * 1e6), 2) if best_h2d > 0 else None,
            "d2h_gb_s": round(source.nbytes / (best_d2h * 1e6), 2) if best_d2h > 0 else None,
            "ok": max_error == 0.0,
        }
    )
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.cuda_buffers", description=__doc__.split("\n")[0])
    parser.add_argument("--selftest", action="store_true", help="round-trip an array through the GPU and print JSON")
    parser.add_argument("--mb", type=float, default=64.0, help="array size in MiB (default 64)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    args = parser.parse_args(argv)
    if not args.selftest:
        parser.print_help()
        return 2
    started = time.perf_counter()
    try:
        report = selftest(args.mb, args.device)
    except Exception as exc:  # report any failure as JSON: this runs once on a lent GPU, the message matters
        report = {"ok": False, "test": "cuda_buffers", "error": f"{type(exc).__name__}: {exc}"}
    report["seconds"] = round(time.perf_counter() - started, 3)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report.get("ok") else 1


if __name__ == "__main__":  # pragma: no cover - run on a GPU machine
    sys.exit(main())
