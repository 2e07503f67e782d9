"""int8 on CPU: the nn.Linear layers swapped for fbgemm's dynamic int8 linear with per-channel
weight scales. Decode on CPU is bound by memory bandwidth, and int8 weights are a quarter of fp32's
bytes. The activations are quantized per tensor at run time, which costs quality where they have
outliers: the MLP's down projection (the LLM.int8() finding). It stays fp32 by default. Measured on
the 0.5B, 24 HumanEval holes (`python -m benchmarks.quantization`): every layer int8 41 ms/token and
14/24 first lines equal to fp32's; down_proj kept fp32 54 ms/token and 21/24; fp32 136 ms/token."""

from __future__ import annotations

import warnings
from typing import Any

# Layers left in fp32: their inputs have outlier channels that per-tensor int8 flattens.
KEEP_FP32 = ("down_proj",)


def quantize_int8_cpu(model: Any, skip: tuple[str, ...] = KEEP_FP32) -> Any:
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and not any(s in name for s in skip)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice: the kernels are still fbgemm's
        quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=True)
    return model
