"""int8 static quantization with ONNX Runtime: QDQ, per-channel int8 weights, cached.

``quantize_file`` does the work (``quant_pre_process`` then ``quantize_static``);
``quantized(lab, card, method)`` is the cached entry point the suites (and the latency
helper) use. Choices, each measured on this project's machines:

- QDQ format, per-channel QInt8 weights, **QUInt8 activations** by default: with Int8
  activations ORT leaves many convs unfused and HRNet/ResNeSt run slower than fp32.
- ``quant_pre_process(auto_merge=True)``: symbolic shape inference otherwise stops on
  HRNet's dynamic batch dimension.
- Calibration methods MinMax, Percentile (99.999, what the seeds' "int8-percentile"
  models use) and Entropy. Histogram methods keep every activation of every image in
  memory unless ``CalibStridedMinMax`` is set; with it ORT calls ``set_range`` on the
  reader and folds ``stride`` images at a time into its histograms, so memory is bounded
  by one stride whatever the calibration set size. The stride is derived from a memory
  budget and the model's activation bytes per image.
- Percentile histograms are merged on numpy's uniform-bin path (ORT's merge sorts every
  pass); the ranges are bit-identical to ORT's (tests/test_quant_calibration.py) at
  about half the calibration time.
- Histograms of values (Percentile with asymmetric ranges, Entropy) are counted by
  ``histogram.histogram_of_parts``: numpy's equal-bin counts in one compiled pass, 3.4-4.4x faster
  than ``np.histogram``, which was ~70% of a calibration pass; same counts, so the same files.
  Each batch is counted where ORT left it (ORT stacks and flattens them: two copies), and a
  pass's tensors are counted on the session's threads (``host.threads_for``, ``_FanOut``).
- One calibration pass for every method (``calibrate_methods``): ORT runs the model over the
  calibration images once and each method's collector (MinMax, Percentile, Entropy) gets the
  same tensors; the ranges are cached (``int8-ranges``) and each method's file is written from
  them, byte-identical to the file of its own pass (tests/test_quant_calibration.py).
- Activation ranges asymmetric, as uint8 activations are (ORT centres Percentile ranges by
  default); Entropy keeps ORT's 128 / 128 bins, computed through the same calibrator path
  (``histogram_ranges``), bit-identical to quantize_static's own (tests).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..cache import array_digest, memoised
from ..errors import InputError
from ..onnxfile import INPUT_NAME
from .histogram import histogram_of_parts

METHODS = ("minmax", "percentile", "entropy")
# Smoke tier on the embedded set: every other image of the 200-image calibration split.
# Histogram calibration costs ~0.4 s of CPU per image on hrnet_w18_small_v1 (numpy
# histograms over every activation; 77 s for 200 images, measured); --calib-images N,
# --tier full and --imagenet (1000 images, every class) use the whole split.
SMOKE_CALIB_IMAGES = 100
DEFAULT_METHOD = "percentile"
QUANT_FILE = "model.int8.onnx"
RECORD_FILE = "quant.json"


@dataclass(frozen=True)
class QuantOptions:
    """Everything that changes the quantized file (and so the cache key)."""

    method: str = DEFAULT_METHOD
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    # Full 8-bit weights, quantize_static's default and what deployers ship. On x86 without VNNI
    # (AVX2, AVX-512F/BW) ORT's U8S8 kernels add pairs of uint8 x int8 products in saturating
    # int16 (VPMADDUBSW) and such a file computes something else there: verdict (b),
    # test_int8_kernels_match_simulation, says so and measures the 7-bit fix. reduce_range=True
    # is portable but costs the model: resnest50 percentile went from 1.64x to 2.95x the
    # noise floor's cosine distance (simulation, 200 embedded images, 2026-12-01).
    reduce_range: bool = False
    percentile: float = 99.999
    # Activation ranges as calibrated, not centred on 0 (ORT's CalibTensorRangeSymmetric;
    # None keeps ORT's per-method default, which for Percentile is centred). Activations are
    # uint8 with a zero point, i.e. asymmetric, and the calibrated range should be too: a
    # centred Percentile range is the percentile of |x|, so on a non-negative tensor it cuts
    # the whole 0.001% tail from the top, twice the 0.0005% per side of an asymmetric cut.
    # On resnest50 that narrowed the split-attention outputs' ranges by up to 12% and gave
    # centred-logit cosine distance 2.06x the noise floor, against 1.68x (smoke, 100 images).
    symmetric_ranges: bool | None = False
    # Entropy (KL) calibration histogram: `bins` over the tensor's range, candidate ranges
    # quantized to `quantized_bins` levels; ORT's defaults (quantize_static cannot pass
    # others). With 128 / 128 the KL search has one candidate per tensor, the first strided
    # pass's max |x|, plus the bins later passes add: the ranges depend on which images come
    # first (resnest50, the same 100 images in 4 orders: cosine distance 1.54x-3.67x the
    # floor). 2048 / 128, the setting of TensorRT's entropy calibrator, was measured worse
    # on resnest50 (50x, ORT searches signed histograms: 64 levels per side) and 6x slower.
    entropy_bins: int = 128
    entropy_quantized_bins: int = 128
    # Percentile histograms merged on uniform bins (see UniformBinsHistogramCollector);
    # False: ORT's own collector, same ranges, ~2x the calibration time.
    fast_percentile_histograms: bool = True
    # activations held per calibration pass (the stride is derived from it and the model's
    # activation size per image) and images per session run
    stride_budget_mb: int = 768
    batch: int = 10

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")

    def key(self) -> dict:
        return asdict(self)


@dataclass
class QuantResult:
    path: Path
    options: QuantOptions
    calib_images: int
    seconds_preprocess: float
    seconds_quantize: float
    calib_source: str = ""
    log: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.seconds_preprocess + self.seconds_quantize


class ArrayCalibrationReader:
    """Calibration batches from an NCHW float32 array, with ``set_range`` for strided passes.

    ``len()`` counts images; ``set_range(start, end)`` restricts the next pass to
    images ``start:end`` and rewinds. Every batch of a pass has the same shape (ORT's
    histogram collector stacks the batches of one pass), so ``end - start`` should be a
    multiple of ``batch``.
    """

    def __init__(self, x: np.ndarray, batch: int = 10, input_name: str = INPUT_NAME):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch = batch
        self.input_name = input_name
        self.set_range(0, len(self.x))

    def __len__(self) -> int:
        return len(self.x)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.x))
        self.pos = self.start

    def rewind(self) -> None:
        self.pos = self.start

    def get_next(self) -> dict | None:
        if self.pos >= self.end:
            return None
        chunk = self.x[self.pos:min(self.pos + self.batch, self.end)]
        self.pos += len(chunk)
        return {self.input_name: chunk}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def activation_bytes_per_image(model_path: Path) -> int:
    """Bytes of float activations one image produces (from the shape-inferred model).

    Symbolic dimensions (the batch) count as 1. This is what a calibration pass holds per
    image: ORT's calibrators keep every calibrated tensor of every image of the pass.
    """
    import onnx

    from ..onnxfile import load_checked_header, value_info_bytes

    model = load_checked_header(model_path)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    return sum(value_info_bytes(vi) or 0 for vi in [*model.graph.value_info, *model.graph.output]
               if vi.type.tensor_type.elem_type in floats)


def calibration_plan(n_images: int, bytes_per_image: int, options: QuantOptions) -> tuple[int, int, int]:
    """(images used, stride, batch): stride images per pass within the memory budget.

    ORT requires the image count to be divisible by the stride and its histogram collector
    stacks the batches of a pass, so batch divides stride and a remainder (< stride images)
    is left out.
    """
    budget = options.stride_budget_mb * 1024 * 1024
    stride = max(1, min(n_images, budget // max(bytes_per_image, 1)))
    batch = min(options.batch, stride)
    stride = (stride // batch) * batch
    used = n_images - n_images % stride
    return used, stride, batch


def preprocess_for_quantization(fp32: Path, out: Path) -> float:
    """``quant_pre_process`` (shape inference + ORT basic optimizations); returns seconds."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..onnxfile import load_checked_header

    # the harness's guard first: quant_pre_process reads the file's external data itself, so a
    # location escaping the model's folder (or a file that is no ONNX) is refused here, by name
    load_checked_header(fp32)
    t0 = time.perf_counter()
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(out), auto_merge=True, skip_symbolic_shape=False)
    except Exception as e:
        raise InputError(fp32, f"quant_pre_process failed ({type(e).__name__}: {str(e)[:300]})",
                         fix="check the fp32 model with onnx.checker.check_model (and its shapes with "
                             "onnx.shape_inference.infer_shapes); re-export it if either fails") from None
    return time.perf_counter() - t0


def quantize_file(fp32: Path | str, out: Path | str, calib: np.ndarray,
                  options: QuantOptions = QuantOptions(), preprocessed: Path | None = None,
                  ranges: Path | None = None) -> QuantResult:
    """Quantize ``fp32`` to ``out`` (QDQ), calibrating on ``calib`` (NCHW float32, preprocessed).

    ``preprocessed``: an already ``quant_pre_process``-ed copy of ``fp32`` (skips that step).
    ``ranges``: the method's activation ranges already calibrated on ``calib`` (a
    ``save_tensors_data`` file from :func:`calibrate_methods`, the shared pass): no calibration here.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32, out = Path(fp32), Path(out)
    seconds_pre = 0.0
    if preprocessed is None:
        preprocessed = out.with_name(out.stem + ".pre.onnx")
        seconds_pre = preprocess_for_quantization(fp32, preprocessed)
    if len(calib) == 0:
        raise ValueError("no calibration images")
    per_image = activation_bytes_per_image(preprocessed)
    n, stride, batch = calibration_plan(len(calib), per_image, options)
    from ..onnxfile import graph_input_name

    reader = ArrayCalibrationReader(calib[:n], batch=batch, input_name=graph_input_name(preprocessed))
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[options.method]
    # percentile keeps ORT's 2048 histogram bins; entropy's bins are set in histogram_ranges
    extra: dict[str, Any] = {"CalibStridedMinMax": stride}
    if options.method == "percentile":
        extra["CalibPercentile"] = options.percentile
    if options.symmetric_ranges is not None:
        extra["CalibTensorRangeSymmetric"] = options.symmetric_ranges
    log = io.StringIO()
    t0 = time.perf_counter()
    with _quiet(log), tempfile.TemporaryDirectory(prefix="zc-calib-") as tmp:
        cache_path = None
        if ranges is not None:
            cache_path = Path(tmp) / "ranges.json"  # a copy: quantize_static may rewrite a cache it rejects
            shutil.copyfile(ranges, cache_path)
        elif (options.method == "percentile" and options.fast_percentile_histograms) or options.method == "entropy":
            cache_path = Path(tmp) / "ranges.json"
            from onnxruntime.quantization.calibrate import save_tensors_data

            save_tensors_data(histogram_ranges(preprocessed, reader, stride, options, Path(tmp)), cache_path)
        # ORT writes '<model>-inferred.onnx' beside the model it quantizes and deletes it after:
        # two processes quantizing one cached preprocessed model (xdist workers) raced on that
        # file, so each quantizes a private copy
        private = Path(tmp) / preprocessed.name
        shutil.copyfile(preprocessed, private)
        quantize_static(
            str(private), str(out), None if cache_path else reader,
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=getattr(QuantType, options.activation_type),
            weight_type=getattr(QuantType, options.weight_type),
            calibrate_method=method,
            extra_options=extra,
            calibration_cache_path=cache_path)
    seconds = time.perf_counter() - t0
    return QuantResult(out, options, n, seconds_pre, seconds, log=log.getvalue()[-2000:],
                       extra={"stride": stride, "batch": batch, "activation_mb_per_image": round(per_image / 2**20, 1)})


def _uniform_bins_collector():
    from onnxruntime.quantization.calibrate import HistogramCollector

    class UniformBinsHistogramCollector(HistogramCollector):
        """ORT's percentile collector with its merge step on numpy's uniform-bin fast path.

        ORT re-bins every pass after the first with ``np.histogram(x, bins=<edge array>)``,
        which sorts the data: 65% of a resnest50 percentile calibration (cProfile). Its
        edges are uniform by construction (the first pass's ``num_bins`` bins, extended by
        ``np.arange`` steps of the same width), so ``bins=count, range=(first, last)``
        gives the same histogram but for values within float rounding of an edge.
        """

        def collect_absolute_value(self, name_to_arr):
            for tensor, data_arr in name_to_arr.items():
                data = np.asarray(data_arr).ravel()
                if data.size:
                    min_value, max_value = np.nanmin(data), np.nanmax(data)
                else:
                    min_value = max_value = np.array(0, dtype=data.dtype)
                data = np.absolute(data)
                if tensor not in self.histogram_dict:
                    hist, edges = np.histogram(data, bins=self.num_bins)
                    self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), min_value, max_value)
                    continue
                old_hist, edges, old_min, old_max = self.histogram_dict[tensor]
                amax = np.nanmax(data) if data.size else edges[-1]
                if amax > edges[-1]:
                    width = edges[1] - edges[0]
                    edges = np.hstack((edges, np.arange(edges[-1] + width, amax + width, width)))
                hist, _ = np.histogram(data, bins=len(edges) - 1, range=(float(edges[0]), float(edges[-1])))
                hist[: len(old_hist)] += old_hist
                self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), min(old_min, min_value),
                                               max(old_max, max_value))

    return UniformBinsHistogramCollector


def histogram_ranges(preprocessed: Path, reader: ArrayCalibrationReader, stride: int, options: QuantOptions,
                     tmp: Path):
    """Percentile or Entropy tensor ranges as ``quantize_static`` computes them with
    ``CalibStridedMinMax`` (same calibrator, same tensors, same strided passes via
    ``set_range``), with two differences: percentile histograms merge on uniform bins
    (same ranges, faster), and entropy uses ``options.entropy_bins`` /
    ``entropy_quantized_bins``, which quantize_static cannot pass. Returns ORT's ``TensorsData``:
    the one-method case of :func:`calibrate_methods`."""
    if options.method not in ("percentile", "entropy"):
        raise ValueError(f"no histogram ranges for {options.method!r}")
    return calibrate_methods(preprocessed, reader, stride, [options], tmp)[options.method]


def _collector_for(options: QuantOptions):
    """The histogram collector ORT's calibrator of ``options.method`` would make (its
    ``create_calibrator`` defaults, as ``histogram_ranges`` and quantize_static get them)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    if options.method == "percentile":
        symmetric = True if options.symmetric_ranges is None else options.symmetric_ranges
        cls = _uniform_bins_collector() if options.fast_percentile_histograms else HistogramCollector
        return cls(method="percentile", symmetric=symmetric, num_bins=2048, num_quantized_bins=2048,
                   percentile=options.percentile, scenario="same")
    symmetric = False if options.symmetric_ranges is None else options.symmetric_ranges
    return HistogramCollector(method="entropy", symmetric=symmetric, num_bins=options.entropy_bins,
                              num_quantized_bins=options.entropy_quantized_bins, percentile=99.999, scenario="same")


class _MinMaxCollector:
    """ORT's MinMaxCalibrater on the tensors a histogram pass already holds: per pass each
    tensor's min and max (its ReduceMin / ReduceMax per session run, then their nanmin /
    nanmax: the same extremes), made symmetric as it does, passes merged with its
    ``merge_range`` (builtin min / max), kept as shape-(1,) arrays as it keeps them."""

    def __init__(self, symmetric: bool):
        self.symmetric = symmetric
        self.ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def collect_prepared(self, name: str, values: list[np.ndarray], min_value, max_value) -> None:
        lo, hi = np.asarray(min_value).reshape(1), np.asarray(max_value).reshape(1)
        if self.symmetric:
            m = np.nanmax([np.abs(lo), np.abs(hi)], axis=0)
            lo, hi = -m, m
        if name in self.ranges:
            old_lo, old_hi = self.ranges[name]
            lo, hi = min(old_lo, lo), max(old_hi, hi)
        self.ranges[name] = (lo, hi)


def _takes_values(collector) -> bool:
    """Whether ORT's ``HistogramCollector.collect`` would take this collector down
    ``collect_value`` (signed histograms: Entropy, and Percentile with asymmetric ranges)."""
    return isinstance(collector, _MinMaxCollector) or collector.method in ("entropy", "distribution") or (
        collector.method == "percentile" and not collector.symmetric)


def _collect_value_prepared(collector, tensor: str, values: list[np.ndarray], min_value, max_value) -> None:
    """ORT's ``HistogramCollector.collect_value`` for one tensor, line for line, with the
    values (the pass's batches, flat: ``_pass_values``) and their min / max computed once for
    every method of the pass (the stack, its copy and two reductions per method were half of a
    histogram method's collection)."""
    if isinstance(collector, _MinMaxCollector):
        collector.collect_prepared(tensor, values, min_value, max_value)
        return
    threshold = np.array(max(abs(min_value), abs(max_value)), dtype=values[0].dtype)
    if tensor in collector.histogram_dict:
        collector.histogram_dict[tensor] = _merge_histogram(
            collector.histogram_dict[tensor], values, min_value, max_value, threshold)
    else:
        # 0-d arrays as the range, as ORT passes them (the same float32 edges)
        hist, hist_edges = histogram_of_parts(values, collector.num_bins, (-threshold, threshold))
        collector.histogram_dict[tensor] = (hist, hist_edges, min_value, max_value, threshold)


def _merge_histogram(old_histogram: tuple, values: list[np.ndarray], new_min, new_max, new_threshold) -> tuple:
    """ORT's ``HistogramCollector.merge_histogram``, line for line, on ``histogram`` (numpy's
    counts, compiled): a wider pass re-bins on the old stride, extended by whole bins each side."""
    old_hist, old_hist_edges, old_min, old_max, old_threshold = old_histogram
    if new_threshold <= old_threshold:
        new_hist, _ = histogram_of_parts(values, len(old_hist), (-old_threshold, old_threshold))
        return new_hist + old_hist, old_hist_edges, min(old_min, new_min), max(old_max, new_max), old_threshold
    if old_threshold == 0:
        hist, hist_edges = histogram_of_parts(values, len(old_hist), (-new_threshold, new_threshold))
        hist += old_hist
    else:
        old_num_bins = len(old_hist)
        old_stride = 2 * old_threshold / old_num_bins
        half_increased_bins = int((new_threshold - old_threshold) // old_stride + 1)
        new_num_bins = old_num_bins + 2 * half_increased_bins
        new_threshold = half_increased_bins * old_stride + old_threshold
        hist, hist_edges = histogram_of_parts(values, new_num_bins, (-new_threshold, new_threshold))
        hist[half_increased_bins: new_num_bins - half_increased_bins] += old_hist
    return hist, hist_edges, min(old_min, new_min), max(old_max, new_max), new_threshold


def _pass_values(batches: list) -> tuple[list[np.ndarray], Any, Any]:
    """A tensor's values over one pass as ORT's ``collect_value`` sees them
    (``np.asarray(batches).flatten()``, its nan-aware min and max), kept as each batch's own flat
    view: the stacked copy and its flattened copy cost as much as counting a histogram. The
    extremes are the batches' extremes' (``np.fmin`` / ``np.fmax`` skip NaN as ``nanmin`` does;
    the last ``nanmin`` / ``nanmax`` warns, as ORT's, only when every value is NaN)."""
    arrays = [np.asarray(b) for b in batches]
    if len({(a.shape, a.dtype) for a in arrays}) != 1:  # what np.asarray would stack differently
        arrays = [np.asarray(batches)]
    values = [a.reshape(-1) for a in arrays]
    filled = [v for v in values if v.size]
    if not filled:
        zero = np.array(0, dtype=values[0].dtype)
        return values, zero, zero.copy()
    return (values, np.nanmin(np.array([np.fmin.reduce(v) for v in filled], dtype=values[0].dtype)),
            np.nanmax(np.array([np.fmax.reduce(v) for v in filled], dtype=values[0].dtype)))


class _FanOut:
    """Stands in for a HistogramCalibrater's collector: every pass's tensors go to each method.

    ``threads`` tensors at a time: the histogram kernel releases the GIL, and in a serial run one
    of two cores idled while a pass was counted (ORT's inference uses both). A tensor's passes
    still merge in pass order (each pass is collected whole before the next runs), and the
    collectors' tensors are put back in the model's order, so the ranges are the same, value
    and order, at any thread count."""

    def __init__(self, collectors: dict, threads: int = 1):
        self.collectors = collectors
        self.threads = max(1, threads)
        self.order: dict[str, None] = {}

    def _collect_tensor(self, item: tuple[str, list]) -> None:
        tensor, batches = item
        prepared = None
        for c in self.collectors.values():
            if not _takes_values(c):  # |x| histograms (symmetric Percentile): ORT's own code path
                c.collect_absolute_value({tensor: batches})
                continue
            if prepared is None:
                prepared = _pass_values(batches)
            _collect_value_prepared(c, tensor, *prepared)

    def collect(self, name_to_arr: dict) -> None:
        items = list(name_to_arr.items())
        self.order.update(dict.fromkeys(name for name, _ in items))
        if self.threads == 1 or len(items) < 2:
            for item in items:
                self._collect_tensor(item)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="zc-calib") as pool:
            list(pool.map(self._collect_tensor, items))  # list(): a worker's exception is raised here

    def in_model_order(self) -> None:
        """Each collector's tensors in the order the first pass listed them (threads insert them
        as they finish)."""
        for c in self.collectors.values():
            attr = "ranges" if isinstance(c, _MinMaxCollector) else "histogram_dict"
            held = getattr(c, attr)
            setattr(c, attr, {name: held[name] for name in self.order if name in held})


def calibrate_methods(preprocessed: Path, reader: ArrayCalibrationReader, stride: int,
                      options: list[QuantOptions], tmp: Path, threads: int = 1) -> dict[str, Any]:
    """Activation ranges (ORT ``TensorsData``) of several calibration methods from ONE pass over
    the calibration images: ORT runs the model once per strided pass and every method's
    collector gets the same tensors (MinMax, Percentile and Entropy each ran their own pass
    before). Each method's ranges are those of its own pass, value for value: the same
    calibrator session and tensors, the same strides, the same collectors
    (tests/test_quant_calibration.py compares the int8 files byte for byte)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    by_method = {o.method: o for o in options}
    if len(by_method) != len(options):
        raise ValueError(f"one options per method, got {[o.method for o in options]}")
    op_types = list(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default
    # any histogram calibrator: the session (every calibrated tensor an output) and ORT's collect_data
    calibrator = create_calibrator(preprocessed, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy)
    collectors: dict[str, Any] = {}
    for method, o in by_method.items():
        if method == "minmax":
            collectors[method] = _MinMaxCollector(False if o.symmetric_ranges is None else o.symmetric_ranges)
        else:
            collectors[method] = _collector_for(o)
    fan_out = _FanOut(collectors, threads)
    calibrator.collector = fan_out
    for start in range(0, len(reader), stride):
        reader.set_range(start, start + stride)
        calibrator.collect_data(reader)
    fan_out.in_model_order()
    out: dict[str, Any] = {}
    for method, c in collectors.items():
        if method == "minmax":
            out[method] = TensorsData(CalibrationMethod.MinMax, dict(c.ranges))
        else:
            cal = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy
            out[method] = TensorsData(cal, c.compute_collection_result())
    return out


@contextlib.contextmanager
def _quiet(sink: io.StringIO | None = None):
    """ORT's calibrators print progress and log warnings: keep them out of the test output."""
    sink = sink or io.StringIO()
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        logger.setLevel(level)


# --- cached entry points ----------------------------------------------------------------

# how an external-data entry's key starts in the protobuf bytes (field 1, length 8, "location")
_EXTERNAL_LOCATION = b"\n\x08location"


def _hash_file(h, path: Path | str) -> bool:
    """Feed the file's bytes to ``h`` (mapped, read once); returns whether they name an external
    ``location``."""
    import mmap

    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            h.update(data)
            return data.find(_EXTERNAL_LOCATION) >= 0


def file_digest(path: Path | str) -> str:
    """Digest of an ONNX file by content, with its external-data files when it has any (a file
    re-exported with new weights of the same shapes keeps its ``.onnx`` bytes, and must not be
    served the old weights' cached outputs); a file without them digests as its bytes alone."""
    h = hashlib.sha256()
    if _hash_file(h, path):
        from ..onnxfile import external_data_files

        for extra in external_data_files(Path(path)):
            h.update(str(extra.name).encode())
            _hash_file(h, extra)
    return h.hexdigest()[:24]


def runtime_numerics_key(lab) -> dict:
    """What changes a runtime's outputs of the same file on the same inputs on this machine, for
    the disk keys of cached outputs (evaluation, layer report, export checks): the library
    versions, this CPU's kernel-relevant flags and the planned thread count
    (``Settings.cache_threads``, Lab.take_threads; a test's plain namespace has only ``threads``)."""
    from ..host import cpu_facts, library_versions

    cpu, settings = cpu_facts(), lab.settings
    return {"versions": memoised(lab, "quant.library_versions", "all", library_versions, lambda _: 100),
            "cpu": [cpu.arch, *cpu.isa],
            "threads": settings.cache_threads() if hasattr(settings, "cache_threads") else settings.threads}


def library_key() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def _digest_cache_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def cached_file_digest(path: Path, lab=None) -> str:
    """The file's digest, memoised in the lab by path, size and mtime (a rewritten file is read again)."""
    return memoised(lab, "quant.file_digest", _digest_cache_key(path), lambda: file_digest(path), lambda _: 100)


def fp32_source(lab, card) -> Path:
    """The fp32 ONNX the int8 model is made from / compared with: the manifest's ``onnx``,
    else the cached legacy opset-17 export of the reference model."""
    user = lab.artifacts(card).get("onnx")
    if user is not None:
        return user
    from ..export.exporter import exported

    return exported(lab, card, exporter="legacy", opset=17).path


def preprocessed(lab, fp32: Path) -> Path:
    """Cached ``quant_pre_process`` output of ``fp32`` (shared by every calibration method).
    The user's file passes the harness's external-data guard (``runtime.load_checked_header``,
    in ``preprocess_for_quantization``) before quant_pre_process reads it; a directory or an
    empty file is named before its digest is taken."""
    from ..onnxfile import require_onnx_file

    require_onnx_file(Path(fp32))
    key = {"fp32": cached_file_digest(fp32, lab), "auto_merge": True, **library_key()}

    def build(folder: Path) -> None:
        seconds = preprocess_for_quantization(fp32, folder / "model.pre.onnx")
        (folder / "pre.json").write_text(json.dumps({"seconds": seconds}))

    return lab.cache.entry("int8-pre", key, build) / "model.pre.onnx"


def quantized_result(lab, card, method: str = DEFAULT_METHOD, *, options: QuantOptions | None = None,
                     calib: np.ndarray | None = None, calib_source: str | None = None,
                     fp32: Path | None = None) -> QuantResult:
    """Cached int8 model of the card's fp32 ONNX, with its record (timings, calibration).

    Calibration set: ``lab.inputs(card, "calib")`` (the embedded calibration split, or with
    ``--imagenet`` the 1000 images with every class represented), never evaluation images.
    ``calib`` overrides it (self-tests: flat grey images); ``calib_source`` names it.
    The key holds the fp32 file's digest, the options, the calibration set and the versions.
    """
    options = options or QuantOptions(method=method)
    if options.method != method:
        options = replace(options, method=method)
    fp32 = Path(fp32) if fp32 is not None else fp32_source(lab, card)
    samples = None
    if calib is not None:
        calib_id: dict[str, Any] = {"array": array_digest(calib), "source": calib_source or "array"}
    else:
        images = lab.images("calib")
        samples = calibration_samples(lab)
        calib_id = {"images": images.digest(), "count": len(samples), "preprocess": repr(card.preprocess),
                    "source": images.origin}
    key = {"model": card.id, "fp32": cached_file_digest(fp32, lab), "options": options.key(),
           "calib": calib_id, **library_key()}

    def build(folder: Path) -> None:
        made: list[np.ndarray] = []

        def inputs() -> np.ndarray:  # decoded once, and only if needed
            if not made:
                made.append(calib if calib is not None else calibration_inputs(cast(list, samples), card))
            return made[0]

        pre = preprocessed(lab, fp32)
        ranges, shared = shared_ranges(lab, fp32, pre, inputs, calib_id, options, card.id)
        res = quantize_file(fp32, folder / QUANT_FILE, inputs(), options, preprocessed=pre, ranges=ranges)
        pre_seconds = json.loads((pre.parent / "pre.json").read_text())["seconds"]
        (folder / RECORD_FILE).write_text(json.dumps({
            "calib_images": res.calib_images, "seconds_preprocess": pre_seconds,
            # the shared pass's time counts for every file calibrated by it: each would cost that alone
            "seconds_quantize": res.seconds_quantize + shared["seconds"], "calib_source": calib_id.get("source", ""),
            "options": options.key(), "log": res.log, **res.extra,
            "calibration_shared_by": shared["methods"], "seconds_calibration": shared["seconds"]}))

    folder = lab.cache.entry("int8", key, build)
    rec = json.loads((folder / RECORD_FILE).read_text())
    return QuantResult(folder / QUANT_FILE, options, rec["calib_images"], rec["seconds_preprocess"],
                       rec["seconds_quantize"], rec.get("calib_source", ""), rec.get("log", ""),
                       {k: rec[k] for k in ("stride", "batch", "activation_mb_per_image") if k in rec})


# Options that change the calibrated ranges; the rest (types, per-channel weights,
# reduce_range) only change how the ranges are written into the int8 file.
RANGE_FIELDS = ("percentile", "symmetric_ranges", "entropy_bins", "entropy_quantized_bins",
                "fast_percentile_histograms", "stride_budget_mb", "batch")
# Part of the shared pass's key: bump it when calibrate_methods computes differently.
RANGES_VERSION = 1


def shared_methods(lab) -> tuple[str, ...]:
    """The methods one calibration pass computes: the session's (``settings.extra
    ["calibration_methods"]``, which the plugin may narrow to the selected tests'), else all
    ``METHODS``; the one asked for is always among them."""
    settings = getattr(lab, "settings", None)
    wanted = getattr(settings, "extra", {}).get("calibration_methods") if settings is not None else None
    return tuple(m for m in METHODS if m in (wanted or METHODS))


def shared_ranges(lab, fp32: Path, pre: Path, inputs, calib_id: dict, options: QuantOptions,
                  model: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The ``options.method`` ranges file of ``fp32`` on the calibration set ``calib_id``
    (``inputs()`` makes its array), from the cached shared pass (:func:`calibrate_methods`) of
    every method of ``shared_methods(lab)`` with the same range options: the first method
    quantized pays for the pass, the others read it. Returns (ranges file, the pass's record); ``model``
    (the card's id) names the entry for the progress log."""
    methods = tuple(dict.fromkeys((*shared_methods(lab), options.method)))
    family = {k: v for k, v in options.key().items() if k in RANGE_FIELDS}
    key = {"model": model, "fp32": cached_file_digest(fp32, lab), "calib": calib_id, "range_options": family,
           "methods": list(methods), "code": RANGES_VERSION, **library_key()}

    def build(folder: Path) -> None:
        from onnxruntime.quantization.calibrate import save_tensors_data

        x = inputs()
        if len(x) == 0:
            raise ValueError("no calibration images")
        n, stride, batch = calibration_plan(len(x), activation_bytes_per_image(pre), options)
        from ..host import threads_for
        from ..onnxfile import graph_input_name

        reader = ArrayCalibrationReader(x[:n], batch=batch, input_name=graph_input_name(pre))
        t0 = time.perf_counter()
        with _quiet(), tempfile.TemporaryDirectory(prefix="zc-calib-") as tmp:
            ranges = calibrate_methods(pre, reader, stride, [replace(options, method=m) for m in methods], Path(tmp),
                                       threads=threads_for(lab))
        seconds = time.perf_counter() - t0
        for m, data in ranges.items():
            save_tensors_data(data, folder / f"ranges-{m}.json")
        (folder / "pass.json").write_text(json.dumps({"seconds": seconds, "methods": list(methods),
                                                      "calib_images": n, "stride": stride, "batch": batch}))

    folder = lab.cache.entry("int8-ranges", key, build)
    return folder / f"ranges-{options.method}.json", json.loads((folder / "pass.json").read_text())


def calibration_samples(lab) -> list:
    """The calibration images: the lab's calibration split (never evaluation images); in the
    smoke tier on the embedded set, ``SMOKE_CALIB_IMAGES`` of them spread over the split."""
    samples = lab.images("calib").samples
    s = lab.settings
    if s.tier == "smoke" and not s.calib_images and not lab.uses_real_data and len(samples) > SMOKE_CALIB_IMAGES:
        idx = np.linspace(0, len(samples) - 1, SMOKE_CALIB_IMAGES).round().astype(int)
        samples = [samples[i] for i in idx]
    return samples


def calibration_inputs(samples: list, card) -> np.ndarray:
    """The card's reference preprocessing of the calibration samples (undecodable ones dropped)."""
    from ..data import load_images
    from ..transforms import reference_batch

    imgs, _, _ = load_images(samples)
    return reference_batch(imgs, card.preprocess).numpy()


def quantized(lab, card, method: str = DEFAULT_METHOD, **kw) -> Path:
    """Path of the cached int8 (QDQ) model of the card's fp32 ONNX (see ``quantized_result``)."""
    return quantized_result(lab, card, method, **kw).path
