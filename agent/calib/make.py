"""Compute a TensorRT-format calibration table on the CPU with onnxruntime, so an operator without a GPU can
produce the portable table.

Every float tensor of the network (graph input and node outputs) is exposed as a graph output and observed over
the frames. Pass 1 records amax = max |x| per tensor. For "entropy" and "percentile" a second pass fills a
2048-bin histogram of |x| over [0, amax] per tensor, then:
- entropy: TensorRT's EntropyCalibration2 threshold, the bin edge (>= 128 bins) minimising the KL divergence
  between the clipped reference distribution and its 128-level quantization (the pytorch-quantization
  `_compute_amax_entropy` recipe, last minimum wins);
- percentile: the bin edge where the cumulative count reaches the percentile (99.99 by default).
`make_tables` computes several methods (and percentile points) from the same two passes: the histograms do not
depend on the method, so "auto" costs one calibration run, not one per candidate.
Memory stays bounded: only per-tensor maxima and histograms are kept, never activations. Frames from a one-shot
iterator are spooled to a temporary file for the second pass.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from agent.calib.graph import (
    FLOAT,
    FLOAT16,
    index_graph,
    input_independent_tensors,
    require_plain_float_model,
)
from agent.calib.table import ENTROPY2, MINMAX, CalibError, CalibTable, new_table, scale_from_amax
from agent.lazy import require

log = logging.getLogger(__name__)

METHODS = ("entropy", "minmax", "percentile")
HISTOGRAM_BINS = 2048
QUANTIZED_BINS = 128  # int8 magnitudes
# TensorRT has no percentile calibrator; such a table is applied through the EntropyCalibrator2 path (the one DLA
# takes), so that is the header it carries. The method is recorded in `calib make`'s report.
ALGORITHM_FOR_METHOD = {"entropy": ENTROPY2, "minmax": MINMAX, "percentile": ENTROPY2}
DEFAULT_PERCENTILE = 99.99
AUTO_PERCENTILES = (99.9, 99.99, 99.999)  # the points `calib make --method auto` tries besides entropy and minmax


@dataclass(frozen=True)
class Candidate:
    """One way to compute a table: a method, and for "percentile" the point to clip at."""

    method: str
    percentile: float = DEFAULT_PERCENTILE

    @property
    def label(self) -> str:
        """The name printed, recorded and accepted by `parse_candidate`: entropy, minmax, percentile:99.99."""
        return f"percentile:{self.percentile:g}" if self.method == "percentile" else self.method

    def validate(self) -> None:
        if self.method not in METHODS:
            raise CalibError(f"unknown calibration method {self.method!r}: use one of {', '.join(METHODS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise CalibError(f"percentile must be in (0, 100], got {self.percentile}")


def parse_candidate(text: str) -> Candidate:
    """A candidate from its label: entropy, minmax, percentile (at 99.99) or percentile:P."""
    method, _, point = text.strip().partition(":")
    if point and method != "percentile":
        raise CalibError(f"{text!r}: only percentile takes a point (percentile:99.9)")
    try:
        candidate = Candidate(method, float(point) if point else DEFAULT_PERCENTILE)
    except ValueError:
        raise CalibError(f"{text!r}: the percentile must be a number, e.g. percentile:99.9") from None
    candidate.validate()
    return candidate


def auto_candidates(percentiles: Sequence[float] = AUTO_PERCENTILES) -> List[Candidate]:
    """Every method the project has: entropy (TensorRT's default), minmax (the "legacy calibrator" the forums
    suggest for detectors), and percentile at each point; duplicates dropped, order kept."""
    found: Dict[str, Candidate] = {}
    for candidate in [Candidate("entropy"), Candidate("minmax")] + [Candidate("percentile", float(p)) for p in percentiles]:
        candidate.validate()
        found.setdefault(candidate.label, candidate)
    return list(found.values())


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, quantized_bins: int = QUANTIZED_BINS) -> float:
    """TensorRT-style KL calibration on a histogram of |x|: the amax to clip at.

    For every candidate i >= 128 bins: the reference P is bins[:i] with everything beyond folded into the last
    bin; Q spreads each of 128 equal chunks' mass evenly over its non-empty bins; KL(P || Q) with a zero Q
    replaced by 1e-12; the last minimum wins. Evaluated for all i at once from prefix sums (the same value as
    the loop in the evaluation's appendix, in milliseconds instead of a tenth of a second per tensor).
    """
    bins = hist.astype(np.float64).copy()
    count = len(bins)
    if count < quantized_bins or bins.sum() == 0:
        return float(edges[-1])
    bins[0] = bins[1]  # the zero bin is dominated by ReLU zeros; TensorRT's recipe ignores its height
    total = bins.sum()
    prefix = np.concatenate([[0.0], np.cumsum(bins)])  # prefix[m] = bins[:m].sum()
    prefix_nonzero = np.concatenate([[0.0], np.cumsum(bins != 0)])
    xlogx = bins * np.log(np.where(bins > 0, bins, 1.0))
    prefix_xlogx = np.concatenate([[0.0], np.cumsum(xlogx)])
    sizes = np.arange(quantized_bins, count + 1)  # candidate i
    chunk = np.arange(quantized_bins + 1)
    starts = (chunk[None, :] * sizes[:, None] + quantized_bins - 1) // quantized_bins  # first bin of each chunk
    sums = np.diff(prefix[starts], axis=1)
    nonzero = np.diff(prefix_nonzero[starts], axis=1)
    average = sums / np.maximum(nonzero, 1.0)
    log_average = np.log(np.where(average > 0, average, 1.0))
    last = bins[sizes - 1]  # always in the last chunk for i >= 128
    kept = prefix[sizes]  # mass of bins[:i]: the total of the expanded Q
    folded = last + (total - kept)  # the reference's last bin
    with np.errstate(divide="ignore", invalid="ignore"):  # kept == 0 gives 0 * -inf: those candidates are dropped below
        log_kept = np.log(kept)
        # sum over k < i-1 of bins[k] * log q[k], then the last bin's own term
        body = (sums * log_average).sum(axis=1) - last * log_average[:, -1] - (kept - last) * log_kept
        last_term = np.where(last > 0, folded * (log_average[:, -1] - log_kept), folded * np.log(1e-12))
        cross = body + np.where(folded > 0, last_term, 0.0)
    entropy_p = prefix_xlogx[sizes - 1] + folded * np.log(np.where(folded > 0, folded, 1.0))
    with np.errstate(invalid="ignore"):
        kl = (entropy_p - cross) / total - np.log(total)
    kl[(kept == 0) | ~np.isfinite(kl)] = np.inf
    if not np.isfinite(kl).any():
        return float(edges[-1])
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))
    return float(edges[sizes[best]])


def percentile_threshold(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    total = hist.sum()
    if total == 0:
        return float(edges[-1])
    cdf = np.cumsum(hist) / total
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(index + 1, len(edges) - 1)])


class _Observer:
    """Per-tensor amax, then per-tensor |x| histograms over [0, amax]."""

    def __init__(self, names: List[str]) -> None:
        self.names = names
        self.amax = np.zeros(len(names), np.float64)
        self.hist: Optional[np.ndarray] = None

    def observe_max(self, outputs: Sequence[np.ndarray]) -> None:
        for k, value in enumerate(outputs):
            if value.size:
                peak = max(float(np.max(value)), -float(np.min(value)))
                if peak != peak:  # nan: keep it, the table must show the broken tensor
                    self.amax[k] = np.nan
                elif not np.isnan(self.amax[k]):
                    self.amax[k] = max(self.amax[k], peak)

    def observe_hist(self, outputs: Sequence[np.ndarray]) -> None:
        if self.hist is None:
            self.hist = np.zeros((len(self.names), HISTOGRAM_BINS), np.int64)
        for k, value in enumerate(outputs):
            amax = self.amax[k]
            if not value.size or not np.isfinite(amax) or amax <= 0:
                continue  # all-zero or broken tensor: its amax (0, inf, nan) is the answer
            index = (np.abs(value.ravel()).astype(np.float64) * (HISTOGRAM_BINS / amax)).astype(np.int64)
            np.minimum(index, HISTOGRAM_BINS - 1, out=index)
            self.hist[k] += np.bincount(index, minlength=HISTOGRAM_BINS)

    def thresholds(self, method: str, percentile: float) -> Dict[str, float]:
        result: Dict[str, float] = {}
        for k, name in enumerate(self.names):
            amax = float(self.amax[k])
            if method == "minmax" or self.hist is None or not np.isfinite(amax) or amax <= 0:
                result[name] = amax
                continue
            edges = np.linspace(0.0, amax, HISTOGRAM_BINS + 1)
            if method == "entropy":
                result[name] = entropy_threshold(self.hist[k], edges)
            else:
                result[name] = percentile_threshold(self.hist[k], edges, percentile)
        return result


class _Spool:
    """Frames written once to a temporary file and read back in order: a second pass over a one-shot iterator
    without holding the frames in memory."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        np.save(self._file, frame, allow_pickle=False)
        self.count += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        self._file.seek(0)
        for _ in range(self.count):
            yield np.load(self._file, allow_pickle=False)


def _all_tensor_model(model_bytes: bytes) -> tuple:
    """The model with every float network tensor that depends on the frames as a graph output, and those tensor
    names in graph order (tensors computed from constants and shapes alone get no entry: graph.py says why)."""
    import onnx  # heavy (protobuf): imported only where a model is read or written
    from onnx import helper  # heavy (protobuf): imported only where a model is read or written

    model = onnx.load_from_string(model_bytes)
    require_plain_float_model(model, "calib make")
    index = index_graph(model)
    outputs = {o.name for o in model.graph.output}
    constant = input_independent_tensors(index)
    if constant:
        log.info("%d tensors depend on no frame value (shape or constant arithmetic): not calibrated", len(constant))
    names = []
    for name in index.network_tensors:
        elem = index.elem_type.get(name)
        if elem not in (FLOAT, FLOAT16) or name in constant:
            continue  # type unknown: it cannot be declared as an output, and TensorRT would not scale it either
        names.append(name)
        if name not in outputs and name not in index.graph_inputs:
            model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return model, names, index


def make_table(
    model_path: Union[str, Path],
    frames: Iterable[np.ndarray],
    method: str = "entropy",
    *,
    percentile: float = DEFAULT_PERCENTILE,
    trt_version: str = "10.3.0",
    algorithm: Optional[str] = None,
    threads: int = 0,
    progress: Optional[Callable[[str, int], None]] = None,
) -> CalibTable:
    """A TensorRT-format table for the ONNX model at `model_path` from preprocessed frames ([1,C,H,W] or [C,H,W]).
    `threads` 0 lets onnxruntime choose; `progress(pass_name, frames_done)` is called after each frame."""
    candidate = Candidate(method, percentile)
    candidate.validate()
    tables = make_tables(model_path, frames, [candidate], trt_version=trt_version, algorithm=algorithm, threads=threads, progress=progress)
    return tables[candidate.label]


def make_tables(
    model_path: Union[str, Path],
    frames: Iterable[np.ndarray],
    candidates: Sequence[Candidate],
    *,
    trt_version: str = "10.3.0",
    algorithm: Optional[str] = None,
    threads: int = 0,
    progress: Optional[Callable[[str, int], None]] = None,
) -> Dict[str, CalibTable]:
    """One table per candidate, keyed by its label in the candidates' order, from one pass over the frames for
    the maxima and (unless every candidate is minmax) one for the histograms they all share."""
    if not candidates:
        raise CalibError("no calibration method to compute")
    for candidate in candidates:
        candidate.validate()

    ort = require("onnxruntime", "computing a calibration table (calib make)")
    try:
        model_bytes = Path(model_path).read_bytes()
    except OSError as exc:
        raise CalibError(f"cannot read model {model_path}: {exc.strerror or exc}") from None
    try:
        model, names, index = _all_tensor_model(model_bytes)
    except CalibError:
        raise
    except Exception as exc:  # onnx raises DecodeError and friends for a file that is not ONNX
        raise CalibError(f"{model_path} is not a readable ONNX model: {exc}") from None
    if len(index.graph_inputs) != 1:
        raise CalibError(f"calib make feeds one input per frame; this model has {len(index.graph_inputs)} inputs: {index.graph_inputs}")
    input_name = index.graph_inputs[0]
    input_dtype = np.float16 if index.elem_type.get(input_name) == FLOAT16 else np.float32
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # observe tensors as exported
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CalibError(f"onnxruntime cannot load {model_path}: {exc}") from None
    output_names = [n for n in names if n != input_name]

    def run(frame: np.ndarray) -> List[np.ndarray]:
        batch = np.asarray(frame, dtype=input_dtype)
        if batch.ndim == 3:
            batch = batch[None]
        try:
            results = session.run(output_names, {input_name: batch})
        except Exception as exc:  # shape or type mismatch between frames and model
            raise CalibError(f"onnxruntime failed on a frame of shape {batch.shape}: {exc}") from None
        by_name = dict(zip(output_names, results))
        by_name[input_name] = batch
        return [np.asarray(by_name[n]) for n in names]

    observer = _Observer(names)
    two_pass = any(c.method != "minmax" for c in candidates)
    reusable = isinstance(frames, (list, tuple))
    done = 0
    with contextlib.ExitStack() as stack:
        spool = _Spool(stack.enter_context(tempfile.TemporaryFile(prefix="edge-agent-calib-"))) if two_pass and not reusable else None
        for frame in frames:
            observer.observe_max(run(frame))
            if spool is not None:
                spool.add(np.asarray(frame))
            done += 1
            if progress:
                progress("ranges", done)
        if done == 0:
            raise CalibError("no calibration frames: give a folder of images or a video with readable frames")
        if two_pass:
            second: Iterable[np.ndarray] = frames if spool is None else spool
            for k, frame in enumerate(second, 1):
                observer.observe_hist(run(frame))
                if progress:
                    progress("histograms", k)
    tables: Dict[str, CalibTable] = {}
    for candidate in candidates:
        amax = observer.thresholds(candidate.method, candidate.percentile)
        log.info("calibrated %d tensors over %d frames (%s)", len(amax), done, candidate.label)
        scales = {name: scale_from_amax(value) for name, value in amax.items()}
        tables[candidate.label] = new_table(scales, trt_version, algorithm or ALGORITHM_FOR_METHOD[candidate.method])
    return tables
