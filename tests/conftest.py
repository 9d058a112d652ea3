"""The harness's own tests run nested pytest sessions in-process (pytester). pytester snapshots
``sys.modules`` and drops every module first imported inside a nested run; onnx's and ONNX
Runtime's C extensions cannot be imported a second time in one process (onnx aborts on a
duplicate nanobind enum, or its checker loses ``CheckerContext``). Importing them here, once,
before any nested run, keeps them loaded for the whole session."""
import onnx  # noqa: F401
import onnxruntime  # noqa: F401
