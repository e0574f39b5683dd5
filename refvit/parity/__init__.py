"""Parity toolkit for porters: record every module's output as a trace, compare two traces, find the first module
where a port diverges (docs/porting.md).

    from refvit import parity
    ref = parity.capture_transformers("path/to/model", pixel_values)   # the framework (needs torch + transformers)
    ours = parity.capture("path/to/model", pixel_values)               # refvit
    ref.save("ref.safetensors"); parity.Trace.load("ref.safetensors")
    result = parity.compare(ref, parity.load("my_port.npz"))          # walks ref's execution order
    print(parity.format_report(result)); result.first_divergence.name

Command line: `refvit trace MODEL IMAGE|x.npy --out trace.safetensors` and `refvit compare REF CANDIDATE`.
Nothing here imports torch at module level.
"""

from .capture import (arrange, capture, capture_transformers, from_arrays, from_debugger, from_golden,
                      from_hidden_states, get_param, kernels_of, load, load_input, with_kernels, with_params,
                      _set_kernels)
from .compare import (PRESETS, Comparison, apply_mapping, block_of, check_mapping, compare, format_report, load_mapping,
                      parse_tolerance)
from .names import record_points
from .onnx_capture import capture_onnx
from .torch_capture import capture_torch
from . import presets
from .report import write_html, write_plot
from .trace import Trace

capture_refvit = capture

__all__ = ["Trace", "capture", "capture_refvit", "capture_transformers", "from_arrays", "from_debugger", "from_golden",
           "from_hidden_states", "load", "load_input", "arrange", "kernels_of", "with_kernels", "with_params",
           "get_param", "capture_onnx", "capture_torch", "presets", "write_html", "write_plot", "compare",
           "format_report", "load_mapping", "check_mapping", "apply_mapping", "parse_tolerance", "block_of",
           "Comparison", "PRESETS", "record_points"]
