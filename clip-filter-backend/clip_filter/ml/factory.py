"""The one place that turns settings (model name + pretrained source) into a ready ClipEncoder.

`CLIP_PRETRAINED` is one of:
- an open_clip pretrained tag (e.g. "openai"): downloaded once into CLIP_CACHE_DIR on a connected
  machine, then read from that cache;
- a path to a local checkpoint file, optionally verified against CLIP_CHECKPOINT_SHA256;
- "random": randomly initialised weights from a fixed seed, for tests and offline demos.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from clip_filter.core.config import Settings
from clip_filter.ml.encoder import ClipEncoder, ModelInfo
from clip_filter.ml.precision import cast_model, resolve_device, resolve_dtype
from clip_filter.ml.text import TextEmbeddingCache
from clip_filter.ml.weights import load_checkpoint_into, parameters_on_meta, without_random_init_notice

log = logging.getLogger(__name__)

# Extra architectures shipped with the package (clip-filter-tiny, for fast tests).
open_clip.add_model_config(Path(__file__).parent / "model_configs")

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class ModelLoadError(Exception):
    """The weights cannot be had. `reason` says what went wrong, `fix` what the operator can do."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "pretrained" | "checkpoint" | "random"
    value: str | None  # the tag or the checkpoint path


def random_tag(seed: int) -> str:
    """What random weights record as their `pretrained`: the seed is part of it, because two seeds are two
    different models (collections compare it and refuse to mix their embeddings)."""
    return "random" if seed == 0 else f"random-seed-{seed}"


def resolve_weights_source(settings: Settings) -> WeightsSource:
    """Decide what CLIP_PRETRAINED means, without loading anything yet."""
    value = settings.pretrained.strip()
    if value.lower() == "random":
        return WeightsSource("random", None)
    if open_clip.list_pretrained_tags_by_model(
        settings.model_name
    ) and value in open_clip.list_pretrained_tags_by_model(settings.model_name):
        return WeightsSource("pretrained", value)
    if os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(value).exists():
        return WeightsSource("checkpoint", value)
    tags = open_clip.list_pretrained_tags_by_model(settings.model_name)
    raise ModelLoadError(
        f"CLIP_PRETRAINED={value!r} is neither a pretrained tag of {settings.model_name} nor a checkpoint path.",
        f"Use one of the tags {tags or '(this model has none)'}, a path to a checkpoint file, or 'random'.",
    )


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_checkpoint(path: Path, expected_sha256: str | None) -> None:
    if not path.is_file():
        raise ModelLoadError(
            f"Checkpoint file {str(path)!r} does not exist.",
            "Set CLIP_PRETRAINED to an existing checkpoint file (mounted into the container if you use Docker).",
        )
    if expected_sha256:
        actual = sha256_of_file(path)
        if actual.lower() != expected_sha256.strip().lower():
            raise ModelLoadError(
                f"Checkpoint {str(path)!r} has sha256 {actual}, expected {expected_sha256.strip().lower()}.",
                "The file is corrupt or not the one you meant: download it again, or fix CLIP_CHECKPOINT_SHA256.",
            )


def _build_random(settings: Settings, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """open_clip's own initialisation from a fixed seed, in fp32 (so the weights are the same whatever
    precision runs them), then cast."""
    torch.manual_seed(settings.random_seed)  # random mode is deterministic
    model, _, preprocess = open_clip.create_model_and_transforms(settings.model_name, pretrained=None)
    return cast_model(model.eval().to(device), dtype), preprocess


def _locate_weights(settings: Settings, source: WeightsSource) -> tuple[str, dict[str, Any]]:
    """The checkpoint file to read, and what a pretrained tag prescribes for building the model: its
    preprocessing (mean, std, resize) and its activation."""
    assert source.value is not None  # only a random source has no value, and it reads no weights
    if source.kind == "checkpoint":
        _check_checkpoint(Path(source.value), settings.checkpoint_sha256)
        return source.value, {}
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    tag_cfg = open_clip.get_pretrained_cfg(settings.model_name, source.value)
    try:
        # Reads CLIP_CACHE_DIR first; downloads (Hugging Face hub or URL) only what is not there yet.
        path = open_clip.download_pretrained(tag_cfg, cache_dir=str(settings.cache_dir))
    except Exception as exc:
        raise ModelLoadError(
            f"Could not get the {settings.model_name}/{source.value} weights: {exc}",
            "Start the service once on a machine that can reach the model hub with the same "
            "CLIP_CACHE_DIR (a Docker volume keeps it), or set CLIP_PRETRAINED to a local checkpoint "
            "file, or CLIP_PRETRAINED=random for a test mode with meaningless scores.",
        ) from exc
    build_options = {
        "image_mean": tag_cfg.get("mean"),
        "image_std": tag_cfg.get("std"),
        "image_interpolation": tag_cfg.get("interpolation"),
        "image_resize_mode": tag_cfg.get("resize_mode"),
        # OpenAI's weights were trained with QuickGELU; open_clip only warns when the architecture name
        # (ViT-B-32 rather than ViT-B-32-quickgelu) says otherwise, and the embeddings come out wrong.
        "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)),
    }
    return path, build_options


def _build_from_weights(
    settings: Settings, source: WeightsSource, device: torch.device, dtype: torch.dtype
) -> tuple[nn.Module, Any]:
    """Build the architecture without allocating its weights, then fill it from the checkpoint directly
    in the target device and dtype (see ml/weights.py: about half the peak memory of open_clip's path)."""
    path, build_options = _locate_weights(settings, source)
    with parameters_on_meta() as built_buffers, without_random_init_notice():
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.model_name, pretrained=None, device="meta", **build_options
        )
    built_buffers.restore(model)
    load_checkpoint_into(model, path, device, dtype)
    log.info("weights read from %s", path)
    # Buffers (the causal mask) were built on the CPU in fp32: move and cast them like the parameters.
    return cast_model(model.eval().to(device), dtype), preprocess


def check_gpu_decoding(device: torch.device) -> None:
    """CLIP_FILTER_GPU_JPEG=1 is refused at start-up unless the model is on a CUDA device whose torchvision
    decodes JPEG there (ml/gpu_decode.py)."""
    from clip_filter.ml.gpu_decode import GpuJpegUnavailableError, check_gpu_jpeg

    try:
        check_gpu_jpeg(device)
    except GpuJpegUnavailableError as exc:
        raise ModelLoadError(
            f"CLIP_FILTER_GPU_JPEG=1 cannot be used: {exc}.",
            "Unset CLIP_FILTER_GPU_JPEG (JPEGs are then decoded on the CPU), or run the model on an NVIDIA GPU "
            "(CLIP_DEVICE=cuda) with a CUDA build of torchvision.",
        ) from exc


def load_encoder(settings: Settings) -> ClipEncoder:
    """Build the model, its preprocessing and tokenizer, on the chosen device and precision."""
    if settings.model_name not in open_clip.list_models():
        raise ModelLoadError(
            f"Unknown model architecture CLIP_MODEL={settings.model_name!r}.",
            "Use an open_clip architecture name such as ViT-B-32 (see open_clip.list_models()).",
        )
    from clip_filter.ml.instant import INSTANT_TAG, InstantEncoder, is_instant

    if settings.torch_threads:  # before any branch: the instant encoder's torch work obeys it too
        torch.set_num_threads(settings.torch_threads)
    if is_instant(settings) and settings.gpu_jpeg:
        check_gpu_decoding(torch.device("cpu"))  # the instant encoder runs on the CPU: refused the same way
    if is_instant(settings):  # the pipeline benchmark's model stand-in: never by accident
        if not settings.allow_test_encoder:
            raise ModelLoadError(
                f"CLIP_PRETRAINED={INSTANT_TAG} is a test-only encoder (fixed vectors, meaningless scores).",
                "Set CLIP_FILTER_ALLOW_TEST_ENCODER=1 to use it for a benchmark, or choose real weights.",
            )
        log.warning("CLIP_PRETRAINED=%s: a test-only encoder returning fixed vectors", INSTANT_TAG)
        instant = InstantEncoder(settings)
        instant.reduced_decoding = (settings.jpeg_draft, settings.reduce_large_images)
        instant.crop_first_resize = settings.crop_first_resize
        return instant
    source = resolve_weights_source(settings)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision, device)  # "auto" on CUDA: fp16
    if settings.gpu_jpeg:
        check_gpu_decoding(device)

    try:
        if source.kind == "random":
            model, preprocess = _build_random(settings, device, dtype)
        else:
            model, preprocess = _build_from_weights(settings, source, device, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip and torch report load failures as RuntimeError and friends
        raise ModelLoadError(
            f"Could not load {settings.model_name} from {source.value or 'random init'}: {exc}",
            "Check that the checkpoint matches CLIP_MODEL's architecture and is an open_clip/OpenAI checkpoint.",
        ) from exc

    tokenizer = open_clip.get_tokenizer(settings.model_name, cache_dir=str(settings.cache_dir))
    context_length = int(getattr(tokenizer, "context_length", 0) or getattr(model, "context_length", 77))
    clip: Any = model  # open_clip's CLIP: its parameters and methods come through nn.Module.__getattr__
    with torch.no_grad():
        logit_scale = float(clip.logit_scale.float().exp().item())
        # Encoding one caption is the one way to learn the dimension that works for every tower type.
        embed_dim = int(clip.encode_text(tokenizer(["a"]).to(device)).shape[-1])

    info = ModelInfo(
        model=settings.model_name,
        pretrained=settings.pretrained.strip() if source.kind != "random" else random_tag(settings.random_seed),
        weights=source.kind,
        device=str(device),
        dtype=DTYPE_NAMES.get(dtype, str(dtype)),
        dim=embed_dim,
        logit_scale=logit_scale,
        context_length=context_length,
    )
    log.info("model ready: %s", info)
    encoder = ClipEncoder(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        info=info,
        batch_size=settings.batch_size,
        text_cache=TextEmbeddingCache(settings.text_cache_size),
        tokenizer_cache_size=settings.tokenizer_cache_size,
    )
    encoder.reduced_decoding = (settings.jpeg_draft, settings.reduce_large_images)
    encoder.crop_first_resize = settings.crop_first_resize
    return encoder
