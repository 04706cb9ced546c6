"""The served model's names across protocols: immich's `<arch>__<tag>` (hyphens for underscores) and aliases."""

from __future__ import annotations

import pytest

from clip_filter.api.protocols.common import model_aliases, model_id, names_served_model
from clip_filter.core.config import Settings
from clip_filter.ml.encoder import ModelInfo


def info(model: str, pretrained: str, weights: str = "pretrained") -> ModelInfo:
    return ModelInfo(
        model=model,
        pretrained=pretrained,
        weights=weights,
        device="cpu",
        dtype="float32",
        dim=512,
        logit_scale=100.0,
        context_length=77,
    )


@pytest.mark.parametrize(
    ("served", "expected_id", "accepted", "refused"),
    [
        (
            info("ViT-B-32", "openai"),
            "ViT-B-32__openai",
            [
                "ViT-B-32__openai",
                "vit-b-32__OPENAI",
                "ViT-B-32/openai",
                "ViT-B-32:openai",
                "ViT-B-32",
                "immich-app/ViT-B-32__openai",
            ],
            ["ViT-B-16__openai", "ViT-B-32__laion2b_s34b_b79k", "ViT-B-32-quickgelu__openai", "openai", ""],
        ),
        (
            info("ViT-B-32", "laion2b_s34b_b79k"),
            "ViT-B-32__laion2b_s34b_b79k",
            ["ViT-B-32__laion2b-s34b-b79k", "ViT-B-32__laion2b_s34b_b79k", "ViT-B-32/laion2b_s34b_b79k"],
            ["ViT-B-32__openai", "ViT-B-32__laion2b-s34b-b88k"],
        ),
        (
            info("ViT-L-14-quickgelu", "dfn2b"),
            "ViT-L-14-quickgelu__dfn2b",
            ["ViT-L-14-quickgelu__dfn2b"],
            ["ViT-L-14__dfn2b"],
        ),
        (
            info("ViT-B-32", "/models/my-finetune.safetensors", "checkpoint"),
            "ViT-B-32__my-finetune",
            ["ViT-B-32__my-finetune", "ViT-B-32__my_finetune"],
            ["ViT-B-32__/models/my-finetune.safetensors"],
        ),
        (
            info("clip-filter-tiny", "random", "random"),
            "clip-filter-tiny__random",
            ["clip-filter-tiny__random", "clip-filter-tiny"],
            ["ViT-B-32__openai"],
        ),
    ],
)
def test_names(served, expected_id, accepted, refused):
    assert model_id(served) == expected_id and model_aliases(served)[0] == expected_id
    for name in accepted:
        assert names_served_model(name, served), name
    for name in refused:
        assert not names_served_model(name, served), name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("openai,weaviate,immich", {"openai", "weaviate", "immich"}),
        ("", set()),
        (" none ", set()),
        ("NONE", set()),
        ("immich, OpenAI", {"immich", "openai"}),
        ("weaviate,,weaviate", {"weaviate"}),
    ],
)
def test_protocols_setting(value, expected):
    assert Settings(CLIP_FILTER_PROTOCOLS=value).protocol_set == expected


def test_the_default_turns_every_protocol_on_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.delenv("CLIP_FILTER_PROTOCOLS", raising=False)
    assert Settings().protocol_set == {"openai", "weaviate", "immich"}
    with pytest.raises(ValueError, match="unknown grpc"):
        Settings(CLIP_FILTER_PROTOCOLS="openai,grpc")
