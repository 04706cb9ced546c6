"""Fuzzing: a live server seeded with real objects, and the knobs that bound every fuzz run (docs/fuzzing.md).

The knobs, all optional; CI uses the defaults, which are fixed so two runs send the same requests:
- CLIP_FILTER_FUZZ_EXAMPLES: generated cases per API operation (schemathesis), default 25; the in-process
  properties (decode_image, the JSON parser), being cheaper, run 8 times as many. Raise it (e.g. 500) to fuzz
  longer locally.
- CLIP_FILTER_FUZZ_SEED: unset, runs are derandomised (the same inputs every run); set, a random run with that
  seed, so a longer local run explores new inputs and can be replayed.
- CLIP_FILTER_FUZZ_KNOWN: comma-separated operations ("POST /embeddings/texts") whose 5xx answers are reported
  as warnings instead of failures, while a fix is on its way. Empty by default: every 5xx fails.
- CLIP_FILTER_FUZZ_AUTH=keys: start the fuzzed server with API keys required (CLIP_FILTER_AUTH=keys and a
  random bootstrap admin key), and send that key; by default the loopback server needs none.
- CLIP_FILTER_FUZZ_API_KEY: a key sent as `Authorization: Bearer ...` on every fuzzed request, for an external
  server (CLIP_FILTER_TEST_BASE_URL) that requires one.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from integration.conftest import EXTERNAL_URL, LiveServer, start_server
from integration.images_for_tests import png_bytes

FUZZ_COLLECTION = "fuzz"  # the seeded collection that path parameters are steered to


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


EXAMPLES = _int_env("CLIP_FILTER_FUZZ_EXAMPLES", 25)
SEED: int | None = int(os.environ["CLIP_FILTER_FUZZ_SEED"]) if os.environ.get("CLIP_FILTER_FUZZ_SEED") else None


def operation_label(method: str, path: str) -> str:
    return f"{method.strip().upper()} {path.strip()}"


KNOWN: frozenset[str] = frozenset(
    operation_label(*part.strip().partition(" ")[::2])
    for part in os.environ.get("CLIP_FILTER_FUZZ_KNOWN", "").split(",")
    if part.strip()
)

# The hypothesis settings of the in-process properties. No deadline: speed is not what these tests check (and a
# timed assert would fail on a busy machine); the run is bounded by the example count instead. No example
# database: CI runs in a clean checkout, and a replayed failure must come from the seed, not from a local file.
FUZZ_SETTINGS = settings(
    max_examples=8 * EXAMPLES,
    derandomize=SEED is None,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


# (operation label, status) -> how many fuzzed requests got it; printed at the end of the run, so a CI log shows
# what was reached (a route that only ever answered 404 or 422 was not fuzzed much).
STATUS_COUNTS: Counter[tuple[str, int]] = Counter()


def is_error_envelope(body: object) -> bool:
    """`{"error": {"code": <non-empty str>, "message": <non-empty str>, ...}}`, the one native error shape."""
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and all(
        isinstance(error.get(key), str) and bool(error[key]) for key in ("code", "message")
    )


def foreign_error_shape(operation: dict) -> bool:
    """Protocol adapters (tag "protocol: ...") answer errors in the shape of the API they imitate (OpenAI, Weaviate,
    immich), by design; for them only "no 5xx" is checked, not the native error envelope."""
    return any(str(tag).lower().startswith("protocol:") for tag in operation.get("tags", ()))


def is_known(method: str, path: str) -> bool:
    return operation_label(method, path) in KNOWN


@dataclass
class FuzzState:
    """The real objects the fuzzer's path parameters point at; rebuilt when a fuzzed DELETE removes them."""

    server: LiveServer
    headers: dict[str, str]
    item_ids: list[int] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    ingest_root: Path | None = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.base_url, headers=self.headers, timeout=60.0)

    def seed(self) -> None:
        """(Re)create collection `fuzz`: two images and two texts (with metadata), and one finished job."""
        with self.client() as http:
            if http.get(f"/collections/{FUZZ_COLLECTION}").status_code == 200:
                http.delete(f"/collections/{FUZZ_COLLECTION}").raise_for_status()
            http.post("/collections", json={"name": FUZZ_COLLECTION, "description": "fuzzing"}).raise_for_status()
            files = [("files", (f"seed{i}.png", png_bytes(900 + i), "image/png")) for i in range(2)]
            metadata = ['{"tag": "a", "n": 1}', '{"tag": "b", "n": 2}']
            images = http.post(f"/collections/{FUZZ_COLLECTION}/items", files=files, data={"metadata": metadata})
            images.raise_for_status()
            texts = http.post(
                f"/collections/{FUZZ_COLLECTION}/items",
                json={"texts": ["a red square", "a blue circle"], "metadata": [{"tag": "a"}, None]},
            )
            texts.raise_for_status()
            self.item_ids = [r["id"] for r in images.json()["results"] + texts.json()["results"] if "id" in r]
            if len(self.item_ids) != 4:
                raise AssertionError(f"seeding the fuzz collection added {self.item_ids}, expected 4 items")
            # A path job when the server has an ingest root (ours does), else an upload job.
            job = (
                http.post(f"/collections/{FUZZ_COLLECTION}/jobs", json={"path": str(self.ingest_root)})
                if self.ingest_root is not None
                else http.post(
                    f"/collections/{FUZZ_COLLECTION}/jobs", files=[("files", ("job.png", png_bytes(951), "image/png"))]
                )
            )
            job.raise_for_status()
            job_id = job.json()["id"]
            deadline = time.monotonic() + 120
            while http.get(f"/jobs/{job_id}").json().get("state") not in ("done", "failed", "interrupted"):
                if time.monotonic() > deadline:
                    raise AssertionError(f"seed job {job_id} did not finish")
                time.sleep(0.05)
            self.job_ids = [job_id]


def _api_key(server: LiveServer) -> str | None:
    return os.environ.get("CLIP_FILTER_FUZZ_API_KEY") or server.extra.get("api_key")


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A tiny-random server of the fuzzer's own (or CLIP_FILTER_TEST_BASE_URL's), with an ingest root.

    Never skipped: if it cannot start, the fixture raises and every fuzz test fails.
    """
    if EXTERNAL_URL:
        yield LiveServer(EXTERNAL_URL.rstrip("/"), Path("/nonexistent"), {})
        return
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "ingest"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(png_bytes(960))
    (root / "sub" / "b.png").write_bytes(png_bytes(961))
    (root / "notes.txt").write_text("a note")
    env = {"CLIP_FILTER_INGEST_ROOTS": str(root)}
    key = None
    if os.environ.get("CLIP_FILTER_FUZZ_AUTH", "").strip().lower() == "keys":
        key = secrets.token_urlsafe(32)
        env |= {"CLIP_FILTER_AUTH": "keys", "CLIP_FILTER_BOOTSTRAP_KEY": key}
    live = start_server(base / "data", env)
    if key:
        live.extra["api_key"] = key
    live.extra["ingest_root"] = root
    yield live
    live.stop()


@pytest.fixture(scope="session")
def fuzz_headers(fuzz_server: LiveServer) -> dict[str, str]:
    """Headers every fuzzed request carries: the API key, when one is configured."""
    key = _api_key(fuzz_server)
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="session")
def fuzz_state(fuzz_server: LiveServer, fuzz_headers: dict[str, str]) -> FuzzState:
    state = FuzzState(fuzz_server, fuzz_headers, ingest_root=fuzz_server.extra.get("ingest_root"))
    state.seed()
    return state


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Compatibility shim: schemathesis 4.32's pytest integration reads `node._nodeid`, which pytest 9.2 replaced by
    `node._id` (the public `nodeid` is unchanged). Give the fuzz tests' nodes the old attribute; schemathesis only
    uses it to name each operation's subtest. Remove when schemathesis supports pytest 9.2."""
    if not hasattr(item, "_nodeid"):
        item._nodeid = item.nodeid  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATUS_COUNTS:
        return
    per_operation: dict[str, Counter[int]] = {}
    for (label, status), count in STATUS_COUNTS.items():
        per_operation.setdefault(label, Counter())[status] += count
    terminalreporter.section("fuzzed requests per operation (status: count)")
    for label in sorted(per_operation, key=lambda text: text.split(" ", 1)[::-1]):
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(per_operation[label].items()))
        terminalreporter.write_line(f"{label:55} {statuses}")
