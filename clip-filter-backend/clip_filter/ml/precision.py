"""Device and numeric precision: where the model runs and in which dtype.

Rules (CLIP_DEVICE / CLIP_PRECISION):
- device "auto": the first CUDA GPU, else Apple MPS, else the CPU. An explicit device that is not there
  is an error (`device_unavailable`, 503), never a silent move to another device.
- precision "auto": fp16 on CUDA; bf16 on a CPU with native bf16 instructions (AVX512-BF16 / AMX on
  x86, the BF16 extension on Arm); fp32 otherwise, MPS included (fp16 there is opt-in).
- An explicit "fp32" / "bf16" is honoured everywhere (bf16 on a CPU without native support works but
  is emulated, so a warning is logged).
- An explicit "fp16" on the CPU falls back to fp32 with a warning: PyTorch runs it, but several times
  slower than fp32 (measured 4x on ViT-B-32) and with no accuracy benefit, so it is never what anyone
  wants; /info reports the dtype actually used.

The model is cast as a whole (`cast_model`). Inputs must then be cast to the model's dtype (image
preprocessing yields float32) and features converted back to float32 before normalising.
"""

from __future__ import annotations

import logging
import platform
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from clip_filter.core.errors import ClipFilterError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Scalars the service reads and uses in softmax: float32 in every precision (see cast_model).
FLOAT32_SCALARS = ("logit_scale", "logit_bias")


def _device_unavailable(setting: str, why: str) -> ClipFilterError:
    return ClipFilterError(
        "device_unavailable",
        f"CLIP_DEVICE={setting!r} is not available: {why}. Set CLIP_DEVICE=auto to use the best device "
        "present, or CLIP_DEVICE=cpu.",
        503,
        device=setting,
    )


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(setting: str) -> torch.device:
    """ "auto" | "cpu" | "mps" | "cuda" | "cuda:N" -> the torch device; raises `device_unavailable`."""
    value = setting.strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "mps":
        if not _mps_available():
            raise _device_unavailable(setting, "this PyTorch build or machine has no Apple MPS backend")
        return torch.device("mps")
    if value == "cuda" or value.startswith("cuda:"):
        _, colon, index_text = value.partition(":")
        if colon and not index_text.isdigit():
            raise ClipFilterError(
                "invalid_device",
                f"CLIP_DEVICE={setting!r} is not a device: use cuda or cuda:N.",
                400,
                device=setting,
            )
        if not torch.cuda.is_available():
            raise _device_unavailable(setting, "no CUDA GPU is visible to PyTorch (or this build has no CUDA)")
        index = int(index_text) if index_text else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise _device_unavailable(setting, f"only {count} CUDA device(s) are visible")
        return torch.device(value)
    raise ClipFilterError(
        "invalid_device",
        f"CLIP_DEVICE={setting!r} is not one of auto, cpu, mps, cuda, cuda:N.",
        400,
        device=setting,
    )


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (so bf16 is a real speed-up, not emulation).

    Conservative: reads the flags the Linux kernel reports; anything it cannot confirm is False.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False  # not Linux (or no procfs): do not guess
    return cpuinfo_has_bf16(cpuinfo, platform.machine())


def cpuinfo_has_bf16(cpuinfo: str, machine: str) -> bool:
    """The /proc/cpuinfo test: AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on Arm."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:  # x86 says "flags", Arm says "Features"
            flags.update(value.split())
    machine = machine.lower()
    if machine in {"x86_64", "amd64"}:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    if machine in {"aarch64", "arm64"}:
        return "bf16" in flags
    return False


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """CLIP_PRECISION ("auto" | "fp32" | "bf16" | "fp16") -> the dtype to run the model in on `device`."""
    value = setting.strip().lower()
    if value == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32  # MPS and CPUs without native bf16
    if value not in PRECISIONS:
        raise ClipFilterError(
            "invalid_precision", f"CLIP_PRECISION={setting!r} is not one of auto, fp32, bf16, fp16.", 400
        )
    dtype = PRECISIONS[value]
    if device.type == "cpu" and dtype == torch.float16:
        log.warning(
            "CLIP_PRECISION=fp16 on the CPU is several times slower than fp32; using fp32 instead "
            "(use bf16 for a faster CPU mode where the CPU supports it)."
        )
        return torch.float32
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_supports_bf16():
        log.warning("CLIP_PRECISION=bf16 on a CPU without native bf16: it works, but is emulated and may be slow.")
    return dtype


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast an open_clip model (already on its device, in eval mode) to `dtype` for inference.

    Every floating-point parameter and buffer is cast, LayerNorm included: keeping LayerNorm weights in
    fp32 only improved bf16 parity marginally (min cosine to fp32 0.99993 -> 0.99994 on ViT-B-32), and
    fp32 LayerNorm weights with fp16 inputs fail on CUDA (mixed-dtype layer_norm is CPU-only).
    logit_scale / logit_bias stay float32: they are scalars the service reports and uses in softmax,
    and bf16 would round exp(logit_scale) = 100 to about 98.8.
    """
    kept = {
        name: tensor.detach().clone()
        for name in FLOAT32_SCALARS
        if isinstance(tensor := getattr(model, name, None), torch.Tensor)
    }
    model.to(dtype)
    for name, value in kept.items():
        getattr(model, name).data = value.float()
    return model
