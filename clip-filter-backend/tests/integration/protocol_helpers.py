"""What the protocol tests compare against: the native /embeddings/* routes for the same inputs."""

from __future__ import annotations

import numpy as np

TOLERANCE = 1e-6


def native_texts(http, texts: list[str]) -> np.ndarray:
    response = http.post("/embeddings/texts", json={"texts": texts})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], np.float32)


def native_images(http, images_b64: list[str]) -> np.ndarray:
    response = http.post("/embeddings/images", json={"images": images_b64})
    assert response.status_code == 200, response.text
    body = response.json()
    assert all(error is None for error in body["errors"]), body["errors"]
    return np.asarray(body["embeddings"], np.float32)


def served_model(http) -> dict:
    info = http.get("/info").json()
    return {
        "id": f"{info['model']}__{info['pretrained']}",
        "dim": info["dim"],
        "weights": info["weights"],
        "model": info["model"],
        "pretrained": info["pretrained"],
    }


def assert_same_vectors(got, expected) -> None:
    got = np.asarray(got, np.float32)
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # normalised, like the native vectors
