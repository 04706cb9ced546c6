"""Device and dtype selection, model casting, and bf16 parity of image embeddings on ViT-B-32."""

from __future__ import annotations

import copy
import logging

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from clip_filter.core.errors import ClipFilterError
from clip_filter.ml import precision
from clip_filter.ml.precision import cast_model, cpu_supports_bf16, cpuinfo_has_bf16, resolve_device, resolve_dtype

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


# ---- dtype rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "device", "native_bf16", "expected"),
    [
        ("auto", CUDA, False, torch.float16),
        ("auto", torch.device("cuda:1"), True, torch.float16),
        ("auto", CPU, True, torch.bfloat16),
        ("auto", CPU, False, torch.float32),
        ("auto", MPS, True, torch.float32),
        ("fp32", CUDA, True, torch.float32),
        ("fp32", CPU, True, torch.float32),
        ("bf16", CUDA, False, torch.bfloat16),
        ("bf16", CPU, True, torch.bfloat16),
        ("bf16", CPU, False, torch.bfloat16),  # honoured (emulated), with a warning
        ("fp16", CUDA, False, torch.float16),
        ("fp16", MPS, False, torch.float16),
        ("fp16", CPU, True, torch.float32),  # refused on the CPU: falls back, with a warning
        (" BF16 ", CPU, True, torch.bfloat16),
    ],
)
def test_resolve_dtype_rules(monkeypatch, setting, device, native_bf16, expected):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native_bf16)
    assert resolve_dtype(setting, device) == expected


def test_fp16_on_cpu_warns(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="clip_filter.ml.precision"):
        assert resolve_dtype("fp16", CPU) == torch.float32
    assert "fp16" in caplog.text and "fp32" in caplog.text


def test_unknown_precision_is_an_error():
    with pytest.raises(ClipFilterError) as info:
        resolve_dtype("int8", CPU)
    assert info.value.code == "invalid_precision"


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "expected"),
    [
        ("x86_64", "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("x86_64", "flags : fpu sse avx2 amx_tile amx_bf16\n", True),
        ("x86_64", "flags : fpu sse avx2 avx512f avx512_vnni\n", False),
        ("x86_64", "flags : avx512_fp16\n", False),
        ("aarch64", "Features : fp asimd sve bf16 i8mm\n", True),
        ("aarch64", "Features : fp asimd sve svebf16\n", False),  # SVE-only bf16: not claimed
        ("aarch64", "Features : fp asimd\n", False),
        ("riscv64", "isa : rv64imafdc\n", False),
        ("x86_64", "", False),
    ],
)
def test_cpuinfo_bf16_detection(machine, cpuinfo, expected):
    assert cpuinfo_has_bf16(cpuinfo, machine) is expected


def test_cpu_supports_bf16_is_a_cached_bool():
    assert cpu_supports_bf16() in (True, False)
    assert cpu_supports_bf16() is cpu_supports_bf16()


# ---- devices ----------------------------------------------------------------------------------------------
def no_accelerators(monkeypatch, cuda_count: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count)
    monkeypatch.setattr(precision, "_mps_available", lambda: mps)


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    no_accelerators(monkeypatch)
    assert resolve_device("auto") == CPU
    no_accelerators(monkeypatch, mps=True)
    assert resolve_device("auto") == MPS
    no_accelerators(monkeypatch, cuda_count=1, mps=True)
    assert resolve_device("auto") == CUDA
    assert resolve_device(" CPU ") == CPU


def test_explicit_devices(monkeypatch):
    no_accelerators(monkeypatch, cuda_count=2, mps=True)
    assert resolve_device("cuda") == CUDA
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("mps") == MPS


@pytest.mark.parametrize(
    ("setting", "cuda_count", "mps"), [("cuda", 0, True), ("cuda:0", 0, False), ("cuda:2", 2, False), ("mps", 1, False)]
)
def test_unavailable_device_is_a_503(monkeypatch, setting, cuda_count, mps):
    no_accelerators(monkeypatch, cuda_count=cuda_count, mps=mps)
    with pytest.raises(ClipFilterError) as info:
        resolve_device(setting)
    assert info.value.code == "device_unavailable" and info.value.status == 503
    assert setting in info.value.message and "CLIP_DEVICE" in info.value.message


@pytest.mark.parametrize("setting", ["cuda:x", "tpu", "cuda:"])
def test_malformed_device_is_rejected(monkeypatch, setting):
    no_accelerators(monkeypatch, cuda_count=1)
    with pytest.raises(ClipFilterError) as info:
        resolve_device(setting)
    assert info.value.code == "invalid_device"


# ---- casting -------------------------------------------------------------------------------------------------
def test_cast_model_keeps_logit_scale_float32():
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 77, "width": 32, "heads": 2, "layers": 1},
        init_logit_bias=-10.0,
    )
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(100.0)))  # bf16 would round exp() of this to ~98.8
    model = cast_model(model.eval(), torch.bfloat16)
    assert model.logit_scale.dtype == torch.float32
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-6)
    assert model.logit_bias.dtype == torch.float32 and model.logit_bias.item() == -10.0
    assert model.transformer.get_cast_dtype() == torch.bfloat16
    others = [p.dtype for name, p in model.named_parameters() if name not in {"logit_scale", "logit_bias"}]
    assert set(others) == {torch.bfloat16}


# ---- bf16 parity on ViT-B-32 ----------------------------------------------------------------------------------
def smooth_images(count: int) -> list[Image.Image]:
    """Varied, photo-like inputs: smooth gradients and blobs at several sizes, plus flat and noisy edge cases."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(96, 360, 2))
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        channels = [
            np.sin(xx * rng.uniform(1, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(1, 9) + rng.uniform(0, 6))
            for _ in range(3)
        ]
        pixels = np.stack(channels, -1)
        pixels = (pixels - pixels.min()) / (np.ptp(pixels) + 1e-9) * 255 + rng.normal(0, 4, pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        images.append(image.filter(ImageFilter.GaussianBlur(1)))
    images.append(Image.new("RGB", (64, 64), (255, 255, 255)))
    images.append(Image.new("RGB", (320, 200), (0, 0, 0)))
    images.append(Image.new("RGB", (200, 320), (200, 30, 40)))
    images.append(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    return images


@pytest.mark.slow
def test_bf16_image_embeddings_match_fp32():
    # Runs on every CPU: without native bf16 instructions PyTorch emulates them (about 9x slower than
    # fp32: ~10 s on an AVX2-only CPU). The parity checked is that of bf16 weights and activations,
    # which both paths round alike, so a CPU without bf16 must not skip it.
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    with torch.no_grad():  # trained models have non-trivial LayerNorm weights; random init has exactly 1 and 0
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.05)
    pixels = torch.stack([preprocess(image) for image in smooth_images(12)])
    assert pixels.dtype == torch.float32 and pixels.shape == (16, 3, 224, 224)
    model_bf16 = cast_model(copy.deepcopy(model), torch.bfloat16)
    with torch.inference_mode():
        reference = model.encode_image(pixels)
        low = model_bf16.encode_image(pixels.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    cosine = F.cosine_similarity(low.float(), reference, dim=-1)
    assert cosine.min().item() >= 0.999, cosine
