"""int8 on CPU: every nn.Linear (lm_head included) swapped for fbgemm's dynamic int8 linear with
per-channel weight scales. Decode on CPU is bound by memory bandwidth, and int8 weights are a
quarter of fp32's bytes. Per-channel weight scales are closer to fp32 than per-tensor ones, but the
activations are still quantized per tensor at run time, which costs quality: measure it with
`python -m benchmarks.quality --quantize int8` against the fp32 run (README, "Quantization")."""

from __future__ import annotations

import warnings
from typing import Any


def quantize_int8_cpu(model: Any, skip: tuple[str, ...] = ()) -> Any:
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice: the kernels are still fbgemm's
        quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=True)
    return model
