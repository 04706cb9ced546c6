"""Trained weights are read straight into the target dtype: same model as open_clip's path, half its peak memory.

Weights here are open_clip's random initialisation saved as checkpoint files (no genuine weights can be
downloaded here); what is tested is the loading, which does not depend on the values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from PIL import Image
from torch import nn

from clip_filter.core.config import Settings
from clip_filter.ml.factory import ModelLoadError, load_encoder
from clip_filter.ml.precision import cast_model
from clip_filter.ml.weights import parameters_on_meta

BACKEND = Path(__file__).resolve().parents[2]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def settings(model: str, pretrained: str, precision: str = "fp32", **extra) -> Settings:
    # Crop-first resizing off: these tests compare embeddings with open_clip's own preprocessing to the bit
    # (crop-first's own bounds: tests/unit/test_preprocess.py).
    return Settings(
        CLIP_MODEL=model,
        CLIP_PRETRAINED=pretrained,
        CLIP_DEVICE="cpu",
        CLIP_PRECISION=precision,
        CLIP_FILTER_CROP_FIRST_RESIZE=False,
        **extra,
    )


def save_random_checkpoint(model_name: str, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    state_dict = open_clip.create_model(model_name, pretrained=None).state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: tensor.contiguous() for key, tensor in state_dict.items()}, path)
    else:  # "legacy" in the name: PyTorch's pre-zip format, which cannot be memory-mapped
        torch.save(state_dict, path, _use_new_zipfile_serialization="legacy" not in path.name)
    return path


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray(rng.integers(0, 255, (230, 300, 3), dtype=np.uint8)) for _ in range(2)]


def open_clip_reference(model_name: str, pretrained: str, dtype: torch.dtype, **kwargs):
    """open_clip's own loading path (random init, then the checkpoint copied in), cast like the service."""
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, **kwargs)
    return cast_model(model.eval(), dtype), preprocess


def assert_same_model(encoder, reference: nn.Module, reference_preprocess) -> None:
    ours, theirs = encoder.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key
    for name, buffer in reference.named_buffers():  # incl. non-persistent ones, absent from checkpoints
        assert torch.equal(dict(encoder.model.named_buffers())[name], buffer), name
    assert encoder.model.logit_scale.dtype == torch.float32
    with torch.no_grad():
        pixels = torch.stack([reference_preprocess(image) for image in sample_images()])
        features = reference.encode_image(pixels.to(next(reference.parameters()).dtype)).float()
    np.testing.assert_array_equal(encoder.encode_images(sample_images()), F.normalize(features, dim=-1).numpy())


@pytest.mark.parametrize(
    ("precision", "file_name"),
    [("fp32", "tiny.pt"), ("bf16", "tiny.pt"), ("bf16", "tiny.safetensors"), ("bf16", "tiny-legacy.pt")],
)
def test_checkpoint_gives_the_same_model_as_open_clips_path(tmp_path, precision, file_name):
    path = str(save_random_checkpoint("clip-filter-tiny", tmp_path / file_name, seed=21))
    encoder = load_encoder(settings("clip-filter-tiny", path, precision))
    assert encoder.info.weights == "checkpoint" and encoder.info.dtype == str(DTYPES[precision]).split(".")[1]
    assert_same_model(encoder, *open_clip_reference("clip-filter-tiny", path, DTYPES[precision]))


@pytest.fixture(scope="module")
def vit_b_32_checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint("ViT-B-32", tmp_path_factory.mktemp("vitb32") / "vit-b-32.pt", seed=5)


@pytest.mark.slow
def test_vit_b_32_checkpoint_gives_the_same_model(vit_b_32_checkpoint):
    encoder = load_encoder(settings("ViT-B-32", str(vit_b_32_checkpoint), "bf16"))
    assert_same_model(encoder, *open_clip_reference("ViT-B-32", str(vit_b_32_checkpoint), torch.bfloat16))


@pytest.mark.slow
def test_resnet_checkpoint_keeps_its_batch_norm_buffers(tmp_path):
    """RN50: persistent buffers (BatchNorm statistics, an integer batch counter) come from the checkpoint."""
    path = save_random_checkpoint("RN50", tmp_path / "rn50.pt", seed=4)
    encoder = load_encoder(settings("RN50", str(path), "bf16"))
    assert encoder.model.visual.bn1.num_batches_tracked.dtype == torch.int64
    assert_same_model(encoder, *open_clip_reference("RN50", str(path), torch.bfloat16))


def hub_cache_with(checkpoint: Path, cache: Path, repo: str) -> Path:
    """A Hugging Face hub cache holding `checkpoint` as the repo's open_clip weights, as a download leaves it."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    os.link(checkpoint, snapshot / "open_clip_pytorch_model.bin")
    return cache


@pytest.mark.slow
def test_the_default_openai_tag_is_read_from_the_cache_as_open_clip_builds_it(
    vit_b_32_checkpoint, tmp_path, monkeypatch
):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")
    cache = hub_cache_with(vit_b_32_checkpoint, tmp_path / "cache", repo)
    encoder = load_encoder(settings("ViT-B-32", "openai", CLIP_CACHE_DIR=str(cache)))
    assert (encoder.info.weights, encoder.info.pretrained) == ("pretrained", "openai")
    # OpenAI's weights need QuickGELU: the reference is open_clip's ViT-B-32-quickgelu on the same cache
    # (plain ViT-B-32 would build nn.GELU and only warn).
    assert isinstance(encoder.model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    reference = open_clip_reference("ViT-B-32-quickgelu", "openai", torch.float32, cache_dir=str(cache))
    assert_same_model(encoder, *reference)


def test_a_tags_preprocessing_comes_with_its_weights(tmp_path, monkeypatch):
    """A tag whose preprocessing differs from the architecture's default (squash, other mean and std)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    tag_cfg = {
        "url": "",
        "hf_hub": "clip-filter/tiny-squashed/",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.25, 0.3),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "clip-filter-tiny", {"squashed": tag_cfg})
    checkpoint = save_random_checkpoint("clip-filter-tiny", tmp_path / "tiny.pt", seed=8)
    cache = hub_cache_with(checkpoint, tmp_path / "cache", "clip-filter/tiny-squashed")
    encoder = load_encoder(settings("clip-filter-tiny", "squashed", CLIP_CACHE_DIR=str(cache)))
    reference, preprocess = open_clip_reference("clip-filter-tiny", "squashed", torch.float32, cache_dir=str(cache))
    default_preprocess = open_clip.create_model_and_transforms("clip-filter-tiny", pretrained=None)[2]
    image = sample_images()[0]
    assert not torch.allclose(preprocess(image), default_preprocess(image))  # the tag does change the pixels
    assert_same_model(encoder, reference, preprocess)


def test_checkpoint_with_missing_or_misshapen_tensors_is_refused(tmp_path):
    path = save_random_checkpoint("clip-filter-tiny", tmp_path / "tiny.pt", seed=3)
    state = torch.load(path)
    incomplete = dict(state)
    del incomplete["visual.conv1.weight"]
    torch.save(incomplete, tmp_path / "incomplete.pt")
    misshapen = {**state, "text_projection": state["text_projection"][:, :3].clone()}
    torch.save(misshapen, tmp_path / "misshapen.pt")
    with pytest.raises(ModelLoadError, match=r"visual\.conv1\.weight"):
        load_encoder(settings("clip-filter-tiny", str(tmp_path / "incomplete.pt")))
    with pytest.raises(ModelLoadError, match="text_projection"):
        load_encoder(settings("clip-filter-tiny", str(tmp_path / "misshapen.pt")))


def test_meta_construction_hooks_are_removed_even_after_a_failure():
    # The failure must come from inside the context, after some construction: hence a multi-statement block.
    with pytest.raises(ValueError, match="building failed"), parameters_on_meta() as built:  # noqa: PT012
        inside = nn.Sequential(nn.Linear(4, 4))
        inside.register_buffer("mask", torch.ones(2))
        raise ValueError("building failed")
    assert inside[0].weight.is_meta and not inside.mask.is_meta
    assert built.by_module[inside]["mask"] is inside.mask
    assert not nn.Linear(4, 4).weight.is_meta


MEASURE_LOAD = """
import json, sys, torch
import open_clip
from clip_filter.core.config import Settings
from clip_filter.ml.factory import load_encoder

def rss_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

way, path, precision = sys.argv[1:]
before = rss_mb("VmRSS")
if way == "service":
    load_encoder(Settings(CLIP_MODEL="ViT-B-32", CLIP_PRETRAINED=path, CLIP_DEVICE="cpu", CLIP_PRECISION=precision))
else:
    open_clip.create_model_and_transforms("ViT-B-32", pretrained=path)
print(json.dumps({"peak_above_imports_mb": rss_mb("VmHWM") - before}))
"""


@pytest.mark.slow
def test_checkpoint_load_peak_is_about_the_model_in_its_own_dtype(vit_b_32_checkpoint):
    fp32_mb = sum(t.numel() * t.element_size() for t in torch.load(vit_b_32_checkpoint).values()) / 2**20
    safetensors = save_random_checkpoint("ViT-B-32", vit_b_32_checkpoint.with_suffix(".safetensors"), seed=5)

    def peak(way: str, path: Path, precision: str = "fp32") -> float:
        run = subprocess.run(
            [sys.executable, "-c", MEASURE_LOAD, way, str(path), precision],
            cwd=BACKEND,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return json.loads(run.stdout.strip().splitlines()[-1])["peak_above_imports_mb"]

    # Model in its dtype (fp32 605 MB, bf16 302 MB for ViT-B-32) plus about one tensor (the largest: 97 MB).
    assert peak("service", vit_b_32_checkpoint) < 1.3 * fp32_mb
    assert peak("service", vit_b_32_checkpoint, "bf16") < 0.75 * fp32_mb
    assert peak("service", safetensors, "bf16") < 0.75 * fp32_mb
    # The contrast: open_clip's path holds the random init and the checkpoint side by side.
    assert peak("open_clip", vit_b_32_checkpoint) > 1.7 * fp32_mb
