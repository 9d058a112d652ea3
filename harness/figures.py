"""The figure-name contract: every figure a check records (``record(name=value)`` or a
CheckFailure's / Inconclusive's ``figures``), with its JSON type, unit, meaning and the report
role it feeds.

The report (``harness/report/views.py``) reads figures only through :func:`value` and
:func:`fraction` by *role*; a new check that records ``rel_max_error`` and ``noise_floor_fp64``
shows up in its suite's column without touching the report. The JSON Schema of results.json
(``fixtures/schemas/results.schema.json``) is generated from this module
(:func:`harness.report.schema.results_schema`), and a test keeps the shipped file equal to it.

Renamed figures stay readable: :data:`ALIASES` maps an older name to today's, and readers of
results.json (the report, ``zooconform budgets record``) pass each test's figures through
:func:`canonical` first. Names starting with ``x_`` are free for a user's own suites.

Types: ``num`` (a JSON number; non-finite floats arrive as the strings "inf", "-inf", "nan"),
``int``, ``text``, ``bool``, ``list``, ``dict``, ``any``. Every figure may be null (not measured).
Units: ``1`` dimensionless ratio, ``fraction`` 0-1, ``percent``, ``points`` (percentage points),
``ms``, ``s``, ``MB``, ``GFLOP/s``, ``GOP/s``, ``GMAC``, ``GFLOP``, ``M`` (millions of
parameters), ``dB``, ``count``, ``grey levels`` (0-255 pixel units), ``normalised`` (units of
the model's normalised input), ``images/s``, ``""`` (no unit: text, flags, lists of names).

This module imports nothing of the harness: the report and the schema generator load it
without torch.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TYPES = ("num", "int", "text", "bool", "list", "dict", "any")
UNITS = ("1", "fraction", "percent", "points", "ms", "s", "MB", "GFLOP/s", "GOP/s", "GMAC", "GFLOP", "M", "dB",
         "count", "grey levels", "normalised", "images/s", "")
# the report's roles: what a column or a metric reads (views.py); several figures may feed one
# role, the first present (in table order) wins
ROLES = {
    "error": "an artifact's error vs its reference (export, re-param columns; history metric <suite>.error)",
    "error_floor": "the fp64 noise floor the error is judged against",
    "agreement": "top-1 agreement of an artifact with its reference (fp32 column on embedded data, int8 column)",
    "agreement_floor": "the top-1 agreement fp32 keeps under input noise (the floor for agreement)",
    "top1": "measured top-1 of a runner on labelled images (fp32 column)",
    "top1_published": "the card's published top-1 of the claimed row",
    "runner": "which runner a top-1 belongs to (fp32 column, metric fp32.top1.<runner>)",
    "claimed_row": "the published row an accuracy test holds the model to",
    "claimed_sources": "the sources of that row",
    "int8_top1": "int8 top-1 (int8 column)",
    "top1_drop": "fp32 top-1 minus int8 top-1 (int8 column)",
    "method": "calibration method of an int8 file (int8 column, metric int8.<method>.*)",
    "kernel_ratio": "this host's int8 kernel error over the quantization error (int8 column)",
    "host_class": "the host class a host-dependent figure was measured on",
    "images": "how many images a proportion rests on (n of a metric)",
    "latency_ms": "median latency of one call (latency column, metric latency.<precision>.b<batch>.ms)",
    "budget_ms": "the latency budget it was judged against",
    "latency_cv": "robust relative spread of the latency samples",
    "latency_iqr_ms": "interquartile range of the latency samples (spread when no cv)",
    "precision": "numeric precision a latency was measured at",
    "batch": "batch size a latency was measured at",
    "provider": "ONNX Runtime execution provider of a measurement",
    "quiet": "false: measured under contention, no point on a trend",
    "params_published": "published parameter count (params column)",
    "params_measured": "measured parameter count (params column)",
    "flops_published": "published FLOPs (FLOPs column)",
    "flops_measured": "measured FLOPs under the card's convention (FLOPs column)",
    "gmacs_measured": "counted multiply-accumulates when no convention is identified (FLOPs column)",
    "weights": "which reference weights the run used (model header)",
    "budgets_line": "whether the run's absolute latency budgets applied to this host (run notes)",
}


@dataclass(frozen=True)
class Figure:
    name: str
    type: str
    unit: str
    meaning: str
    feeds: str | None = None  # a role of ROLES


@dataclass(frozen=True)
class Family:
    """Names built from a variable part (a pipeline label, a planted defect, a batch size)."""

    pattern: str  # a full-match regular expression
    type: str
    unit: str
    meaning: str

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


# name | type | unit | feeds | meaning
_TABLE = """
# --- shared by several checks -----------------------------------------------------------------
rel_max_error | num | 1 | error | max |artifact - reference| / max |reference| over the judged images
noise_floor | num | 1 | error_floor | the floor an error is judged against: noise_floor_fp64 or an in-run bf16/fp16 floor
noise_floor_kind | text | | | which floor that is (fp64 noise floor; bf16 noise floor: torch bf16 vs fp64, this run)
noise_floor_fp64 | num | 1 | error_floor | rel_max_error of the fp32 reference vs its fp64 run: what no fp32 artifact beats
tolerance | num | 1 | | the rel_max_error allowed (a multiple of the floor, fixtures/tolerances.toml)
error_over_floor | num | 1 | | rel_max_error / noise_floor_fp64
min_cosine | num | 1 | | lowest cosine similarity of artifact and reference logits over the images
top1_agreement | num | fraction | agreement | share of images whose top-1 class equals the reference's
noise_floor_top1_agreement | num | fraction | agreement_floor | fp32's top-1 agreement with itself under input noise
eval_images | int | count | images | images of the eval split the figures rest on
n_images | int | count | images | images the export comparison ran on
images | int | count | images | images evaluated (accuracy)
host_class | text | | host_class | the host class (harness/host.py) a host-dependent figure was measured on
model | text | | | registry id of the model measured
weights | text | | weights | which reference weights were used (published checkpoint, seeded init, ...)
file | text | | | path of the artifact measured
artifact | text | | | what the artifact is (zooconform export of ..., the user's file ...)
opset_written | int | | | opset the ONNX file declares
runtime | text | | | the runtime that ran the artifact (harness/runtimes: ort-cpu, openvino, ...)
effective_precision | text | | | the precision the runtime actually computed in
runtime_settings | any | | | the runtime's session settings
# --- files judged through the bridge (harness/bridge.py: outputs of a runtime the suite cannot import)
worst_file | text | | | the output file of the largest error
worst_rel_error | num | 1 | | its relative error
worst_allowed | num | 1 | | the error allowed for that image
worst_error_over_floor | num | 1 | | its error over the floor, in tolerance multiples
floor_images_measured | int | count | | images whose fp64 floor was measured
min_cosine_file | text | | | the file of lowest cosine similarity
images_off | int | count | | images over their allowed error
files_off | list | | | the first of them
judged | text | | | what was judged
declared_precision | text | | | what the runtime behind the bridge declared (fp32; fp16: fp16-stored weights)
error_over_fp16_weights_floor | num | 1 | | worst error over its image's fp16-weights floor (prepare: weights rounded to fp16)
# --- card: params, FLOPs, preprocessing config (harness/cardchecks.py) -----------------------
params_m_published | num | M | params_published | parameters the card publishes for the row
params_m_measured | num | M | params_measured | parameters counted on the model
params_rel_diff | num | 1 | | (measured - published) / published parameters
params_allowed_m | num | M | | allowed |measured - published| parameters
params_form | text | | | the model form counted: train or deploy
flops_g_published | num | GFLOP | flops_published | FLOPs the card publishes for the row
flops_g_measured | num | GFLOP | flops_measured | FLOPs counted under the card's convention (null: convention not identified)
flops_rel_diff | num | 1 | | (measured - published) / published FLOPs
flops_convention | text | | | how the card counts FLOPs (macs_gib, macs_1e9, ...)
gmacs_measured | num | GMAC | gmacs_measured | multiply-accumulates counted by torch's FlopCounterMode
published_over_gmacs | num | 1 | | published FLOPs / counted GMACs: the convention's factor
input_size | int | | | input side length of the row
distinct_top1_classes | int | count | | distinct top-1 classes the reference predicts on the eval images
finding | text | | | what differs between the card and timm's pretrained config
fusion_upsample_card | text | | | HRNet fusion upsampling the card states
fusion_upsample_built | list | | | upsampling modes found in the built model
# --- fp32 accuracy (harness/accuracy.py) ------------------------------------------------------
runner | text | | runner | the runner measured (torch reference, ONNX Runtime, ...)
top1_pct | num | percent | top1 | top-1 of the runner on the labelled images
top5_pct | num | percent | | top-5 of the runner on the labelled images
published_top1_pct | num | percent | top1_published | the claimed row's published top-1
published_top5_pct | num | percent | | the claimed row's published top-5
reference_top1_pct | num | percent | | top-1 of the reference on the same images
reference_top5_pct | num | percent | | top-5 of the reference on the same images
top1_delta_pt | num | points | | top-1 minus published (or reference) top-1
top1_allowed_pt | num | points | | allowed |top-1 delta|: tolerance + subset widening
top1_widening_pt | num | points | | 95% binomial half-width added for a subset of ImageNet val
top5_delta_pt | num | points | | top-5 minus published top-5
top5_allowed_pt | num | points | | allowed |top-5 delta|
top5_widening_pt | num | points | | binomial widening of the top-5 tolerance
claimed_row | text | | claimed_row | the published row the model is held to
claimed_sources | list | | claimed_sources | the sources of the claimed row
claimed_seed | text | | | the seed name of the claimed row
claimed_how | text | | | why that row was claimed
skipped_images | int | count | | images that could not be read
skipped_first | list | | | the first skipped images
flipped_images | int | count | | images whose top-1 differs from the reference's
flipped_first | list | | | the first flipped images
data | text | | | where the images came from
# --- export (harness/export/checks.py, ortopt.py) ------------------------------------------------
opset_requested | int | | | opset asked of the exporter
exporter | text | | | torch exporter used: legacy (TorchScript) or dynamo
export_seconds | num | s | | time the export took
export_cached | bool | | | the file came from the artifact cache
export_warnings | text | | | warnings the exporter emitted
onnx_ir_version | int | | | ONNX IR version of the file
onnx_mb | num | MB | | file size
onnx_nodes | int | count | | nodes in the graph
onnx_external_data | list | | | external-data files the model references
declared_inputs | list | | | graph inputs with their shapes
declared_outputs | list | | | graph outputs with their shapes
batch_dim | text | | | name of the symbolic batch dimension
batch_dynamic | bool | | | the batch dimension is symbolic
batch_fixed | int | | | the fixed batch size, when not dynamic
batch_sizes | list | | | batch sizes compared
batch_tolerance | num | 1 | | allowed relative difference between batch sizes
cosine_min_allowed | num | 1 | | lowest cosine similarity allowed
output_scale | num | 1 | | max |reference logits|: the scale rel_max_error divides by
worst_image | any | | | the image with the largest error (index or name)
fusion_upsample | text | | | HRNet fusion upsampling exported
optimized_vs_unoptimized_rel_error | num | 1 | error | rel_max_error of ORT's optimized graph vs ORT_DISABLE_ALL
ort_transformer_responsible | text | | | the ORT graph transformer whose disabling removes the error
rel_error_with_it_disabled | num | 1 | | rel_max_error with that transformer disabled
divergence_mode | text | | | how the first diverging layer was located (scope, ...)
divergence_hint | text | | | what the diverging node is likely to be
diverging_node | text | | | first ONNX node whose output leaves the layer tolerance
diverging_op | text | | | its op type
diverging_module | text | | | the torch module it came from
diverging_module_type | text | | | that module's class
diverging_layer_error | num | 1 | | relative error of that layer's output
diverging_layer_floor | num | 1 | | fp64 noise floor of that layer's output
diverging_layer_tolerance | num | 1 | | tolerance of that layer
last_matching_module | text | | | last torch module whose output still matches
layers_compared | int | count | | layers compared to locate the divergence
# fp16 ONNX (harness/export/fp16.py)
fp16_rel_max_error | num | 1 | | rel_max_error of the fp16 ONNX file vs the fp32 file, ORT CPU
fp16_rounding_floor | num | 1 | | rel_max_error of the fp32 file with weights and input rounded to fp16, run in fp32
fp16_tolerance | num | 1 | | the fp16 rel_max_error allowed: [export] fp16_floor_multiple x fp16_rounding_floor
fp16_error_over_floor | num | 1 | | fp16_rel_max_error / fp16_rounding_floor
fp16_min_cosine | num | 1 | | lowest cosine similarity of fp16 and fp32 logits over the images
fp16_top1_agreement | num | fraction | | share of images where the fp16 and fp32 files agree on top-1
fp16_io_types | text | | | element types of the fp16 file's input and output (float -> float: keep_io_types)
fp16_float_initializers | int | count | | initializers the fp16 file still stores as fp32
fp16_onnx_mb | num | MB | | fp16 file size
# --- int8 (harness/quant/checks.py, qdq_report.py) ---------------------------------------------
calibration | text | | method | calibration method (minmax, percentile, entropy, user)
mode | text | | | how int8 was judged: labelled (top-1 drop) or noise-floor (agreement)
judged_on | text | | | the figures the verdict rests on
agreement_not_judged | text | | | why top-1 agreement is reported, not judged (too few distinct fp32 top-1 classes)
int8_judged_as | text | | | which execution of the int8 file was judged (kernels or QDQ float simulation)
int8_format | text | | | QDQ or QOperator
int8_source | text | | | where the int8 file came from
int8_activation_type | text | | | activation element type (uint8, int8)
int8_weight_type | text | | | weight element type
int8_weight_max_abs | int | | | largest |quantized weight| (127, or 63 with reduce_range)
int8_integer_ops | text | | | integer ops in the graph (QLinearConv, ...)
fp32_top1_pct | num | percent | | fp32 top-1 on the labelled eval images
fp32_top5_pct | num | percent | | fp32 top-5
int8_top1_pct | num | percent | int8_top1 | int8 top-1 on the same images
int8_top5_pct | num | percent | | int8 top-5
top1_drop_points | num | points | top1_drop | fp32 top-1 minus int8 top-1
max_top1_drop_points | num | points | | allowed drop
required_int8_top1_pct | num | percent | | lowest int8 top-1 that passes
binomial_widening_points | num | points | | 95% binomial half-width allowed for a subset
centred_cosine | num | 1 | | centred cosine similarity of int8 and fp32 logits (median over images)
noise_floor_centred_cosine | num | 1 | | centred cosine fp32 keeps under matched input noise
agreement_vs_floor | num | 1 | | top1_agreement / noise_floor_top1_agreement
cosine_distance_vs_floor | num | 1 | | (1 - centred_cosine) / (1 - noise_floor_centred_cosine)
fp32_distinct_top1 | int | count | | distinct fp32 top-1 classes on the eval images
eval_origin | text | | | where the eval images came from
calib_images | int | count | | calibration images
calib_origin | text | | | where the calibration images came from
calib_source | text | | | calibration data source
calib_batch | int | count | | calibration batch size
calib_stride | int | count | | calibration stride
calib_classes | int | count | | distinct classes among calibration images
classes_available | int | count | | distinct classes available
calib_activation_mb_per_image | num | MB | | activation memory calibration holds per image
seconds_quantize | num | s | | time to quantize
seconds_quant_preprocess | num | s | | time of ORT's quantization pre-processing
seconds_eval_fp32 | num | s | | time to evaluate fp32
seconds_eval_int8 | num | s | | time to evaluate int8
int8_flips | int | count | | images whose top-1 int8 changes
int8_flips_also_under_noise | int | count | | of those, images fp32 under input noise flips too (near-ties)
int8_only_flips | int | count | | images only int8 flips
int8_only_flip_list | list | | | those images with their fp32 top-2 margins
noise_flip_fp32_margin_median | num | 1 | | median fp32 top-2 margin of the images noise flips
kernel_vs_simulation_cosine_distance | num | 1 | | centred-cosine distance of ORT's int8 kernels vs the QDQ float simulation
simulation_vs_fp32_cosine_distance | num | 1 | | centred-cosine distance of the QDQ simulation vs fp32
kernels_vs_fp32_cosine_distance | num | 1 | | centred-cosine distance of the int8 kernels vs fp32
noise_floor_cosine_distance | num | 1 | | centred-cosine distance fp32 shows under matched input noise
kernel_error_over_quantization_error | num | 1 | kernel_ratio | kernel_vs_simulation / simulation_vs_fp32 distance
kernel_vs_simulation_top1_agreement | num | fraction | | top-1 agreement of kernels and simulation
kernel_images | int | count | | images the kernel comparison ran on
host_u8s8_saturates | bool | | | this host's U8S8 kernels may saturate (AVX2 without VNNI)
logits_sqnr_db | num | dB | | SQNR of int8 vs fp32 logits
min_weight_sqnr_db | num | dB | | lowest per-tensor weight SQNR
min_activation_sqnr_db | num | dB | | lowest per-tensor activation SQNR
median_activation_sqnr_db | num | dB | | median activation SQNR
worst_weights | list | | | the weights of lowest SQNR (tensor, node, dB)
worst_activations | list | | | the activations of lowest SQNR
sqnr_by_depth | list | | | activation SQNR by depth in the graph
qdq_activation_pairs | int | count | | QuantizeLinear/DequantizeLinear pairs on activations
quantized_weights | int | count | | quantized weight tensors
pairs_without_float_tensor | int | count | | QDQ pairs whose float tensor is not in the fp32 graph
report_images | int | count | | images the layer report ran on
int8_by_source_kind | dict | | | per source kind of the eval images: images, agreement and cosine vs their floor, in_domain
judged_kinds | text | | | the source kinds the int8 verdict was judged on (a user file: photographs; else every kind)
out_of_domain_images | int | count | | eval images of kinds outside a user int8 file's deployment domain (reported, not judged)
out_of_domain_departure | text | | | the line saying a user int8 file departs beyond its floor only on out-of-domain kinds
# --- latency (harness/latency/checks.py, timing.py, budgets.py) ------------------------------
precision | text | | precision | fp32 or int8 (or fp16)
batch | int | count | batch | batch size of one call
provider | text | | provider | ONNX Runtime execution provider
latency_kind | text | | | absolute (a budget), throughput or ratio
median_ms | num | ms | latency_ms | median latency of one call
q1_ms | num | ms | | first quartile
q3_ms | num | ms | | third quartile
iqr_ms | num | ms | latency_iqr_ms | interquartile range
p90_ms | num | ms | | 90th percentile
min_ms | num | ms | | fastest call
median_ci_ms | list | ms | | distribution-free interval of the median
median_ci_coverage | num | fraction | | coverage of that interval
cv | num | 1 | latency_cv | robust spread: IQR / 1.349 / median
cv_classic | num | 1 | | stdev / mean
n_judged | int | count | | calls judged
cpu_per_wall | num | 1 | | CPU time / wall time of a throughput run
cpu_per_wall_median | num | 1 | | median CPU time / wall time of a call
cpu_per_wall_p10 | num | 1 | | 10th percentile of it
run_delay_share | num | fraction | | share of wall time the threads waited to run
run_delay_share_median | num | fraction | | median of it over calls
clean_share | num | fraction | | share of calls without contention
neighbour_cpu_share | num | fraction | | CPU share other processes used meanwhile
threads | int | count | | intra-op threads
intra_op_threads | int | count | | intra-op threads of each session
warmup | int | count | | warm-up calls
rounds | int | count | | recorded calls
attempts | int | count | | attempts made (re-measured while not quiet)
attempt_noise | list | | | why each attempt before the kept one was discarded (its noise)
chosen_attempt | int | | | the attempt kept
attempt_medians_ms | list | ms | | median of each attempt
attempt_images_per_s | list | images/s | | throughput of each attempt
quiet | bool | | quiet | the kept attempt was quiet
noise | text | | | what made an attempt noisy
verdict | text | | | how the latency was judged (quiet: median, ...)
per_image_ms | num | ms | | median per image of a batch
gflop_per_call | num | GFLOP | | work of one call
achieved_gflops | num | GFLOP/s | | work / median time
gmacs_per_image | num | GMAC | | multiply-accumulates per image
peak_gflops | num | GFLOP/s | | this host's measured fp32 peak
peak_quiet | bool | | | the peak was measured quietly
roofline_ratio | num | 1 | | achieved / peak GFLOP/s
roofline_note | text | | | a note on the roofline (int8 work against the fp32 peak)
budget_ms | num | ms | budget_ms | the budget judged against
budget_key | text | | | the budget's key in the profile
budget_profile | text | | | the profile the budget comes from
budget_provisional | bool | | | the budget is provisional (not yet recorded on its host)
budget_recorded_ms | num | ms | | the budget before rescaling
budget_scale | num | 1 | | the rescaling factor (recorded peak / this host's peak)
budget_scale_note | text | | | how the budget was rescaled
over_budget_rel | num | 1 | | (median - budget) / budget
first_median_ms | num | ms | | median of the first measurement, before re-measuring
remeasure | text | | | why it was re-measured
remeasure_note | text | | | what the re-measurement showed
remeasured_median_ms | num | ms | | median of the re-measurement
remeasured_quiet | bool | | | the re-measurement was quiet
host_recheck | text | | | after a reproduced quiet over-budget figure: the peak at the start and now, and whether the host changed
host_recheck_fp32_peak_gflops | num | GFLOP/s | | this host's fp32 peak re-measured after a reproduced over-budget figure
host_recheck_int8_peak_gops | num | GOP/s | | this host's int8 peak re-measured after a reproduced over-budget figure
host_recheck_peaks_quiet | bool | | | the re-measured peaks were quiet
samples_used | int | count | | samples the verdict rests on: recorded calls (absolute) or blocks per side (ratio)
samples_max | int | count | | the plan's maximum of those (rounds, blocks): what a measurement takes without an early stop
looks | int | count | | looks the sequential stopping rule took in the kept attempt
stop_reason | text | | | why it stopped: decided (budget outside), tight (narrow), recorded (no budget: 1st quiet look), max
look_level | num | fraction | | confidence level of each look (stop_level split over the planned looks, Bonferroni)
contended_looks | int | count | | looks not allowed to stop: a contended call since the previous look, or not quiet so far
stop_interval_ms | list | ms | | the median's interval at the per-look level when the measurement stopped early
stop_blocks_interval | list | 1 | | the block ratios' interval at the per-look level when the comparison stopped early
calls_total | int | count | | recorded calls over all attempts of an absolute measurement
blocks_total | int | count | | blocks per side over all attempts of an interleaved comparison
block_calls | list | count | | calls per block and side of a comparison: [unrecorded, recorded] ([0, 1]: long calls)
images_per_s | num | images/s | | throughput
throughput_budget_ips | num | images/s | | throughput budget
throughput_budget_recorded_ips | num | images/s | | throughput budget before rescaling
throughput_budget_scale_note | text | | | how it was rescaled
instances | int | count | | concurrent sessions of a throughput run
calls_per_instance | int | count | | calls each session made
processes | int | count | | processes used
window_s | num | s | | wall time of the throughput window
call_p50_ms | num | ms | | median call time within the throughput run
call_p90_ms | num | ms | | 90th percentile call time within it
call_cv | num | 1 | | spread of those calls
ratio | num | 1 | | median of the per-block time ratios numerator / denominator
ratio_blocks | int | count | | blocks the ratio rests on
ratio_blocks_range | list | 1 | | distribution-free interval of the block ratios' median
ratio_range_coverage | num | fraction | | coverage of that interval
cpu_ratio | num | 1 | | the same ratio in CPU time
cpu_ratio_blocks_range | list | 1 | | its interval
ratio_limit | num | 1 | | the largest ratio allowed
ratio_limit_key | text | | | where that limit is set
ratio_limit_host_class | text | | | host class the limit is set for
ratio_limit_per_class | bool | | | the limit is specific to the host class
numerator | text | | | what the ratio's numerator measures
denominator | text | | | what its denominator measures
profile | text | | | the applied budget profile
profile_how | text | | | how the profile was chosen (detected, --profile)
budgets_line | text | | budgets_line | one line: whether absolute budgets apply to this host
budgets_applicable | bool | | | the profile's budgets apply to this host
applicability | text | | | why or why not
rescale_budgets | bool | | | --rescale-budgets was given
profile_peak_rel_tolerance | num | 1 | | allowed relative difference of this host's peak from the profile's
host_fp32_peak_gflops | num | GFLOP/s | | this host's fp32 peak
host_int8_peak_gops | num | GOP/s | | this host's int8 peak
host_peak_threads | int | count | | threads the peaks were measured with
host_peaks_quiet | bool | | | the peaks were measured quietly
profile_host_class | text | | | host class the profile was recorded on
profile_fp32_peak_gflops | num | GFLOP/s | | the profile's recorded fp32 peak
profile_int8_peak_gops | num | GOP/s | | the profile's recorded int8 peak
profile_threads | int | count | | threads the profile was recorded with
# --- preprocessing (harness/preprocess/checks.py) ----------------------------------------------
config | text | | | the deploy-side preprocessing config under test
config_source | text | | | where it came from
card_config | text | | | the card's reference preprocessing
card_pipeline | text | | | the card's pipeline as steps
timm_pipeline | text | | | timm's eval transform as steps
timm_transform | text | | | timm's eval transform as it prints
timm_config_note | text | | | what differs in timm's config
timm_as_config_max_grey_levels | num | grey levels | | largest pixel difference: timm's transform vs the reference's
differing_keys | list | | | config keys that differ from the card
restoring_keys | list | | | keys whose restoring removes the difference
size | int | | | input side length
max_grey_levels | num | grey levels | | largest pixel difference from the reference
mean_grey_levels | num | grey levels | | mean pixel difference
max_normalised | num | normalised | | largest difference in normalised input units
mean_normalised | num | normalised | | mean difference in normalised units
allowed_grey_levels | num | grey levels | | largest pixel difference allowed
parity_images | int | count | | images compared
natural_images | int | count | | natural (not synthetic) images among them
effect_images | int | count | | images the effect on predictions was measured on
logit_change_median | num | 1 | | median relative logit change the difference causes
noise_floor_logit_change_median | num | 1 | | the same under input noise of +-noise_floor_grey_levels
noise_floor_grey_levels | num | grey levels | | size of that noise
agreement_halfwidth | num | fraction | | binomial half-width of the agreement
effect_vs_noise_floor | text | | | within or beyond the noise floor
distinct_top1_reference | int | count | | distinct top-1 classes of the reference on those images
square_identical | bool | | | eCenterCrop equals Resize+CenterCrop on square images
square_images | int | count | | square images compared
square_side | int | | | their side length
square_max_normalised | num | normalised | | largest difference on them
# --- re-parameterization (harness/reparam/checks.py) -------------------------------------------
onnx | text | | | the deploy-form ONNX file
deploy_checkpoint | text | | | the user's deploy checkpoint
blocks | int | count | | RepVGG blocks
training_blocks | int | count | | blocks of the training form
blocks_compared | int | count | | blocks compared
blocks_differing | int | count | | blocks whose fused weights differ
blocks_only_in_one | list | | | blocks found in one form only
blocks_over_tolerance | int | count | | blocks whose error exceeds the tolerance
worst_block | text | | | block with the largest error
worst_block_error_over_floor | num | 1 | | its error / floor
first_bad_block | text | | | first block over tolerance
worst_kernel_rel | num | 1 | | largest relative kernel difference of two fusions
worst_bias_rel | num | 1 | | largest relative bias difference
logits_rel_max_error | num | 1 | | rel_max_error of the logits
logits_diff_over_floor | num | 1 | | that / the floor
top1_agreement_not_judged | num | fraction | | top-1 agreement (recorded, not judged)
bn_max_abs_running_mean | num | 1 | | largest |running_mean| of the BNs (0: fusion bugs would not show)
bn_max_abs_running_var_minus_1 | num | 1 | | largest |running_var - 1|
ort_vs_torch_deploy_rel | num | 1 | | rel_max_error of the deploy ONNX in ORT vs torch's deploy form
params_m_timm_deploy | num | M | | parameters of timm's deploy form
params_m_independent | num | M | | parameters of the independent fusion
deploy_gmacs_timm | num | GMAC | | GMACs of timm's deploy form
deploy_gmacs_independent | num | GMAC | | GMACs of the independent fusion
# --- runtimes (harness/runtimes, harness/export/crossruntime.py) -------------------------------
runtime_a | text | | | the first runtime of a cross-runtime comparison (the first --runtime)
runtime_b | text | | | the runtime compared with it
runtime_a_settings | any | | | runtime A's session settings
runtime_b_settings | any | | | runtime B's session settings
runtime_a_precision | text | | | the precision runtime A computed in (read back)
runtime_b_precision | text | | | the precision runtime B computed in (read back)
runtime_a_vs_torch_rel | num | 1 | | rel_max_error of runtime A vs the torch reference
runtime_b_vs_torch_rel | num | 1 | | rel_max_error of runtime B vs the torch reference
runtime_departing | text | | | of two disagreeing runtimes, the one further from the torch reference
worst_channels | list | | | output channels (classes) where two runtimes differ most
determinism_threads | int | count | | the N of the determinism gate's 1 vs N threads
determinism_bound | num | 1 | | largest run-to-run spread allowed: max(noise_floor, rel_min)
spread_max | num | 1 | | largest run-to-run spread of the determinism gate
"""

FAMILIES: tuple[Family, ...] = (
    Family(r"(card|timm)_(crop_pct|crop_size|input_size|interpolation|mean|std|resize_short)", "any", "",
           "one preprocessing field of the card (card_) or of timm's pretrained config (timm_)"),
    Family(r"batch\d+_vs_batch\d+_rel", "num", "1", "rel error of batch-N rows vs the same images at the first batch"),
    Family(r"(num|den)_(file|batch|p50_ms|iqr_ms|p90_ms|cv|cpu_per_wall_median|clean_share|gmacs_per_image|"
           r"conv_nodes|achieved_gflops|roofline_ratio)", "any", "",
           "a latency ratio's numerator (num_) or denominator (den_) measurement: the figure of the same name"),
    Family(r"[a-z0-9_]+?_(max_grey_levels|mean_grey_levels|max_normalised|mean_normalised|natural_max_normalised|"
           r"natural_mean_normalised|worst_image)", "any", "",
           "the difference statistic of one preprocessing pipeline (label first) from the reference"),
    Family(r"control_[A-Za-z0-9_]+?_(error_over_floor|top1_agreement|blocks_over_tolerance)", "num", "",
           "what the fusion check measures on a planted fusion bug (control): it must fail loudly"),
    Family(r"[a-z]+_(convs|not_3x3|branch_or_bn_modules)", "any", "",
           "a deploy form's (label first) conv count, non-3x3 convs and leftover branch/BN modules"),
    Family(r"reduce_range_(kernel_vs_simulation_cosine_distance|simulation_vs_fp32_cosine_distance|"
           r"kernels_vs_fp32_cosine_distance|noise_floor_cosine_distance|kernel_error_over_quantization_error|"
           r"kernel_vs_simulation_top1_agreement)", "num", "1", "the kernel figure of the same name, reduce_range=True"),
    Family(r"spread_(same_session|fresh_session|threads_1_vs_\d+)", "num", "1",
           "run-to-run spread (rel_max_error) of one determinism comparison: a session twice, two fresh sessions, "
           "1 vs N threads"),
    Family(r"bit_identical_(same_session|fresh_session|threads_1_vs_\d+)", "bool", "",
           "whether that determinism comparison was bit-identical"),
    Family(r"x_[A-Za-z0-9_]+", "any", "", "a user suite's own figure (not read by the report)"),
)

# older name -> today's (results.json and history written before the rename stay readable)
ALIASES: dict[str, str] = {
    "fp64_noise_floor": "noise_floor_fp64",
    "floor_top1_agreement": "noise_floor_top1_agreement",
    "floor_centred_cosine": "noise_floor_centred_cosine",
    "fp32_top1": "fp32_top1_pct",
    "fp32_top5": "fp32_top5_pct",
    "int8_top1": "int8_top1_pct",
    "int8_top5": "int8_top5_pct",
    "required_int8_top1": "required_int8_top1_pct",
}


def _parse(table: str) -> dict[str, Figure]:
    out: dict[str, Figure] = {}
    for line in table.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, typ, unit, feeds, meaning = (p.strip() for p in line.split("|", 4))
        if name in out:
            raise ValueError(f"figure {name!r} declared twice")
        if typ not in TYPES or unit not in UNITS or (feeds and feeds not in ROLES):
            raise ValueError(f"figure {name!r}: type {typ!r}, unit {unit!r} or role {feeds!r} not declared")
        out[name] = Figure(name, typ, unit, meaning, feeds or None)
    return out


FIGURES: dict[str, Figure] = _parse(_TABLE)

# role -> its figures, table order (the first present wins)
FEEDS: dict[str, tuple[str, ...]] = {
    role: tuple(f.name for f in FIGURES.values() if f.feeds == role) for role in ROLES}


class UnknownFigure(ValueError):
    """A figure name the contract does not declare."""


def lookup(name: str) -> Figure | Family | None:
    """The declaration of ``name`` (an old name resolves to today's), or None."""
    name = ALIASES.get(name, name)
    if name in FIGURES:
        return FIGURES[name]
    for fam in FAMILIES:
        if fam.matches(name):
            return fam
    return None


def is_known(name: str) -> bool:
    return lookup(name) is not None


def validate(names: Iterable[str], *, strict: bool) -> list[str]:
    """The names the contract does not declare (or that are old names); raise :class:`UnknownFigure`
    when ``strict`` (the self-tests), else warn (a production run keeps its figures)."""
    unknown = [n for n in names if lookup(n) is None]
    renamed = [n for n in names if n in ALIASES]
    if not unknown and not renamed:
        return []
    what = []
    if unknown:
        what.append(f"figure name(s) {unknown} not declared in harness/figures.py (declare them, or use an x_ prefix)")
    if renamed:
        what.append("renamed figure(s): " + ", ".join(f"{n} -> {ALIASES[n]}" for n in renamed))
    text = "; ".join(what)
    if strict:
        raise UnknownFigure(text)
    warnings.warn(text, stacklevel=3)
    return unknown + renamed


def canonical(figures: Mapping[str, Any] | None) -> dict[str, Any]:
    """A test's figures under today's names (older results.json files use older names)."""
    out: dict[str, Any] = {}
    for k, v in (figures or {}).items():
        new = ALIASES.get(k)
        if new is None:
            out[k] = v
        else:
            out.setdefault(new, v)
    return out


def feeding(role: str) -> tuple[str, ...]:
    if role not in ROLES:
        raise KeyError(f"no report role {role!r} (harness/figures.py ROLES)")
    return FEEDS[role]


def value(figures: Mapping[str, Any] | None, role: str) -> tuple[str, Any] | tuple[None, None]:
    """The first figure of ``figures`` that feeds ``role``: (name, value), or (None, None)."""
    figs = figures or {}
    for name in feeding(role):
        if name in figs:
            return name, figs[name]
    return None, None


def unit_of(name: str) -> str:
    d = lookup(name)
    return d.unit if d is not None else ""


# --- structured fields of a test record ----------------------------------------------------
# results.json's per-test fields beside the figures, written when the test is collected (the
# plugin), so that no reader parses node ids or guesses a family from a model id.
TEST_FIELDS = {
    "model": "registry id of the model the test is parametrized over",
    "family": "the model's family (hrnet, resnest, repvgg)",
    "suite": "suite file stem (test_export)",
    "check": "test function name (test_export_matches_torch)",
    "row": "published row the test is parametrized over: <sources>-<seed>-<name>",
    "precision": "numeric precision parametrized over (fp32, int8, fp16)",
    "batch": "batch size parametrized over",
    "runtime": "runtime or execution provider parametrized over",
    "method": "calibration method parametrized over",
    "case": "the export case parametrized over (exporter and opset)",
}


def legacy_fields(test: Mapping[str, Any], models: Iterable[str]) -> dict[str, Any]:
    """The structured fields of a record written before they existed (it has no ``check``): read
    once from its node id, ``suites/test_card.py::test_x[<model>-<row>]``, so that an older
    results.json still renders. A record that has the fields gets nothing from here."""
    if test.get("check"):
        return {}
    path, _, name = str(test.get("nodeid", "")).partition("::")
    out: dict[str, Any] = {"suite": test.get("suite") or path.rsplit("/", 1)[-1].removesuffix(".py"),
                           "check": name.split("[", 1)[0]}
    case = name[name.index("[") + 1:-1] if name.endswith("]") and "[" in name else ""
    model = test.get("model") or max((m for m in models if case == m or case.startswith(m + "-")), key=len,
                                      default=None)
    if model:
        out["model"] = model
        if out["suite"] == "test_card" and case.startswith(f"{model}-"):
            out["row"] = case[len(model) + 1:]
    return out


def test_fields(params: Mapping[str, Any], *, suite: str, check: str) -> dict[str, Any]:
    """The structured fields of one collected test, from its parametrization (``callspec.params``)."""
    out: dict[str, Any] = {"suite": suite, "check": check}
    card = params.get("model_card")
    if card is not None:
        out["model"] = getattr(card, "id", str(card))
        if getattr(card, "family", None):
            out["family"] = card.family
    row = params.get("published_row")
    if row is not None and hasattr(row, "sources"):
        out["row"] = f"{'+'.join(row.sources)}-{row.seed}-{row.name}"
    for key in ("precision", "batch", "method", "runtime"):
        v = params.get(key)
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            out[key] = v
    gpu = params.get("gpu_case")
    if isinstance(gpu, (tuple, list)) and len(gpu) >= 3:
        out["runtime"], out["precision"], out["batch"] = str(gpu[0]), str(gpu[1]), int(gpu[2])
    case = params.get("case")
    if case is not None and getattr(case, "id", None):
        out["case"] = str(case.id)
    if "opset" in params and isinstance(params["opset"], int):
        out["case"] = f"opset{params['opset']}"
    return out
