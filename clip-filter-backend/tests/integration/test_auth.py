"""Access control and browser safety over real HTTP against live servers (docs/security.md).

The auth matrix enumerates the application's own routes, so a route added later is covered without editing
this file; the expected scope of each route is written out here from the security model, independently of
`api/security.py`.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute

from clip_filter.api.main import create_app
from clip_filter.core.config import Settings

from .conftest import EXTERNAL_URL
from .images_for_tests import png_bytes

# ---- the security model, written out independently of the implementation -------------------------------------
READ_ONLY_POSTS = {
    "/image_text_similarity_best_match",
    "/similarity",
    "/embeddings/images",
    "/embeddings/texts",
    "/collections/{name}/search",
    "/collections/{name}/map/project",
    "/v1/embeddings",
    "/embeddings",
    "/vectorize",
    "/predict",
}
RANK = {"read": 0, "write": 1, "admin": 2}


def expected_scope(method: str, template: str) -> str | None:
    path = template[4:] if template.startswith("/api/") else template
    if path.startswith(("/health/", "/.well-known/")) or path in ("/ping", "/"):  # "/": the UI (or a name card)
        return None
    if (method == "DELETE" and path == "/collections/{name}") or path.endswith("/reindex") or path.startswith("/keys"):
        return "admin"
    if method in ("GET", "HEAD") or (method == "POST" and path in READ_ONLY_POSTS):
        return "read"
    return "write"


def _routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, template) of every API route of the application as built today."""
    app = create_app(Settings(data_dir=tmp_path / "routes-only", auth="off"))
    app.state.access.close()
    out = []
    for route in app.routes:
        if isinstance(route, APIRoute):
            out += [(method, route.path) for method in sorted(route.methods)]
        # FastAPI >= 0.16x includes routers lazily: each inclusion lists its routes with their full paths.
        for context in getattr(route, "effective_route_contexts", list)():
            if isinstance(context.original_route, APIRoute):
                out += [(method, context.path) for method in sorted(context.original_route.methods)]
    assert len(out) > 40, out  # the API and its /api copy: a change in how routes are listed fails loudly
    return out


def concrete(template: str, collection: str) -> str:
    path = template.replace("{name}", collection).replace("{item_id}", "1").replace("{job_id}", "no-such-job")
    return re.sub(r"\{[^}]+\}", "x", path)


def create_key(server, name: str, scope: str, *collections: str) -> str:
    args = [sys.executable, "-m", "clip_filter", "keys", "create", name, "--scope", scope]
    for collection in collections:
        args += ["--collection", collection]
    done = subprocess.run(args, env=server.env, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert re.fullmatch(r"cfk_[A-Za-z0-9_-]{43}", key), key  # 32 random bytes, url-safe
    return key


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The status and the stable code, in the native envelope or in a protocol adapter's own error shape."""
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    body = response.json()
    error = body.get("error")
    if isinstance(error, dict):  # native {"error": {code, message, fix}}, or OpenAI's {message, type, param, code}
        assert error["code"] == code and error["message"], (response.request.url, error)
        assert error.get("fix") or error.get("type"), (response.request.url, error)
    elif isinstance(error, str):  # Weaviate's inference container: {"error": "message (code)"}
        assert error.endswith(f"({code})"), (response.request.url, body)
    else:  # immich: {"detail": message, "code": code}
        assert body.get("code") == code and body.get("detail"), (response.request.url, body)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(server_factory):
    """A server that requires keys (CLIP_FILTER_AUTH=keys on loopback), with its bootstrap admin key."""
    bootstrap = secrets.token_hex(32)
    server = server_factory({"CLIP_FILTER_AUTH": "keys", "CLIP_FILTER_BOOTSTRAP_KEY": bootstrap})
    server.extra["bootstrap"] = bootstrap
    return server


# ---- the matrix -------------------------------------------------------------------------------------------------
def test_every_route_by_key_scope_and_collection(keyed, tmp_path):
    keys = {
        "read": create_key(keyed, "r", "read"),
        "write": create_key(keyed, "w", "write"),
        "admin": create_key(keyed, "a", "admin"),
        "other": create_key(keyed, "o", "admin", "elsewhere"),  # admin, but for another collection
        "own": create_key(keyed, "own", "write", "matrix"),  # write, for the collection in the paths
    }
    with keyed.client() as http:
        outcomes = []
        for method, template in _routes(tmp_path):
            path = concrete(template, "matrix")  # does not exist: allowed requests end in 404/422, nothing is changed
            needed = expected_scope(method, template)
            body = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
            cases = {None: "ok" if needed is None else 401}
            for who in ("read", "write", "admin"):
                cases[who] = "ok" if needed is None or RANK[who] >= RANK[needed] else 403
            limited_out = "{name}" in template or (method == "POST" and template.removeprefix("/api") == "/collections")
            cases["other"] = "ok" if needed is None else (403 if limited_out else "ok")
            cases["own"] = (
                "ok"
                if needed is None
                else (403 if RANK[needed] > RANK["write"] or (limited_out and "{name}" not in template) else "ok")
            )
            for who, expected in cases.items():
                headers = bearer(keys[who]) if who else {}
                response = http.request(method, path, headers=headers, **body)
                got = response.status_code
                ok = got not in (401, 403) if expected == "ok" else got == expected
                outcomes.append((ok, method, template, who, expected, got, response.text[:200]))
                if expected in (401, 403) and got == expected:
                    assert_error(response, expected, "unauthorized" if expected == 401 else "forbidden")
                if expected == 401:
                    assert response.headers["www-authenticate"].lower().startswith("bearer")
        failures = [o for o in outcomes if not o[0]]
        assert not failures, "\n".join(map(str, failures))
        # The public routes really are among those enumerated, and so are the protected ones.
        assert {t for _, m, t, *_ in outcomes if expected_scope(m, t) is None} >= {"/health/live", "/health/ready"}
        assert {t for _, m, t, *_ in outcomes} >= {"/collections/{name}", "/api/collections/{name}/items"}


def test_keys_work_end_to_end_and_revocation_is_immediate(keyed):
    admin = bearer(keyed.extra["bootstrap"])
    with keyed.client() as http:
        for name in ("mine", "theirs"):
            assert http.post("/collections", json={"name": name}, headers=admin).status_code == 201
        reader = create_key(keyed, "reader", "read", "mine")
        writer = create_key(keyed, "writer", "write")
        # X-API-Key works as well as Bearer; a limited key lists only its collections.
        listed = http.get("/collections", headers={"X-API-Key": reader}).json()["collections"]
        assert [c["name"] for c in listed] == ["mine"]
        listed = http.get("/api/collections", headers=bearer(writer)).json()["collections"]
        assert sorted(c["name"] for c in listed) == ["mine", "theirs"]
        added = http.post("/collections/mine/items", json={"texts": ["a cat"]}, headers=bearer(writer))
        assert added.status_code == 200, added.text
        hits = http.post("/collections/mine/search", json={"text": "a cat"}, headers=bearer(reader))
        assert hits.status_code == 200 and hits.json()["results"], hits.text
        refused = http.post("/collections/mine/items", json={"texts": ["x"]}, headers=bearer(reader))
        assert_error(refused, 403, "forbidden")
        assert_error(http.get("/collections/theirs/items", headers=bearer(reader)), 403, "forbidden")
        assert_error(http.delete("/collections/mine", headers=bearer(writer)), 403, "forbidden")
        assert_error(http.get("/collections", headers=bearer("cfk_" + "x" * 43)), 401, "unauthorized")
        assert_error(http.get("/collections", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "unauthorized")

        done = subprocess.run(
            [sys.executable, "-m", "clip_filter", "keys", "revoke", "reader"],
            env=keyed.env,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert_error(http.get("/collections/mine", headers=bearer(reader)), 401, "unauthorized")
        assert http.get("/collections/mine", headers=bearer(writer)).status_code == 200
        # /info says keys are required.
        assert http.get("/info", headers=bearer(writer)).json()["auth"] == {
            "mode": "keys",
            "keys_required": True,
            "cors_origins": [],
        }
        # The key store holds hashes only: no secret is anywhere in its files.
        for path in keyed.data_dir.glob("keys.sqlite3*"):
            data = path.read_bytes()
            assert writer.encode() not in data and keyed.extra["bootstrap"].encode() not in data


def test_keys_list_never_shows_secrets(keyed):
    key = create_key(keyed, "listed", "read")
    done = subprocess.run(
        [sys.executable, "-m", "clip_filter", "keys", "list"],
        env=keyed.env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "listed" in done.stdout and "bootstrap" in done.stdout, done.stderr
    assert key not in done.stdout and key[4:20] not in done.stdout


# ---- startup: keys needed on a non-loopback bind ---------------------------------------------------------------
def _serve_until_exit(server_factory, env: dict[str, str]):
    server = server_factory(env, wait=None)
    server.process.wait(timeout=120)
    return server


def test_a_non_loopback_bind_without_keys_refuses_to_start(server_factory):
    server = _serve_until_exit(server_factory, {"CLIP_FILTER_HOST": "0.0.0.0"})
    assert server.process.returncode == 1
    log = server.log()
    assert "API keys are required" in log and "clip-filter keys create" in log and "CLIP_FILTER_AUTH=off" in log
    assert "Traceback" not in log
    # A bootstrap key too short to be a secret is refused too.
    server = _serve_until_exit(server_factory, {"CLIP_FILTER_HOST": "0.0.0.0", "CLIP_FILTER_BOOTSTRAP_KEY": "secret"})
    assert server.process.returncode == 1 and "at least 32" in server.log()


def test_a_non_loopback_bind_with_a_bootstrap_key_file_requires_it(server_factory, tmp_path):
    secret = secrets.token_urlsafe(32)
    (tmp_path / "key").write_text(secret + "\n")  # as a compose secret file would hold it
    server = server_factory({"CLIP_FILTER_HOST": "0.0.0.0", "CLIP_FILTER_BOOTSTRAP_KEY_FILE": str(tmp_path / "key")})
    with server.client() as http:
        assert_error(http.get("/collections"), 401, "unauthorized")
        assert http.get("/collections", headers=bearer(secret)).status_code == 200
        assert http.get("/health/live").status_code == 200
        # A wildcard bind with keys answers any Host name (a rebound DNS name gains nothing without a key).
        assert http.get("/collections", headers={**bearer(secret), "Host": "clip.example.org"}).status_code == 200


def test_auth_off_on_a_wildcard_bind_starts_with_a_warning_and_says_so(server_factory):
    server = server_factory({"CLIP_FILTER_HOST": "0.0.0.0", "CLIP_FILTER_AUTH": "off"})
    with server.client() as http:
        info = http.get("/info").json()
        assert info["auth"]["mode"] == "off" and info["auth"]["keys_required"] is False
        assert http.get("/collections").status_code == 200
        # Without keys, a wildcard bind still answers only loopback names (DNS rebinding).
        assert_error(http.get("/collections", headers={"Host": "rebound.example"}), 421, "invalid_host")
    assert "CLIP_FILTER_AUTH=off" in server.log()


# ---- loopback default: no keys, but browser-safe -----------------------------------------------------------------
@pytest.fixture
def local(server):
    """The shared server as the tests start it (loopback, defaults); not an external (compose) one."""
    if EXTERNAL_URL:
        pytest.skip("checks the loopback defaults; CLIP_FILTER_TEST_BASE_URL points at an external server")
    with server.client() as http:
        yield http


def test_loopback_default_needs_no_key_and_ignores_one_that_is_sent(local):
    assert local.get("/info").json()["auth"] == {"mode": "auto", "keys_required": False, "cors_origins": []}
    assert local.get("/collections").status_code == 200
    # Clients that always send a key (the OpenAI SDK) keep working when keys are off.
    assert local.get("/collections", headers=bearer("anything")).status_code == 200


def test_a_body_without_json_content_type_is_refused_and_nothing_is_created(local):
    name = f"nocontenttype-{secrets.token_hex(3)}"
    body = f'{{"name": "{name}"}}'.encode()
    # The review's repro: `curl -X POST -d '{"name":...}'` (no Content-Type, or the form type curl sends).
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}):
        request = local.build_request("POST", "/collections", content=body, headers=headers)
        assert request.headers.get("content-type") == headers.get("content-type")  # none at all in the first
        assert_error(local.send(request), 415, "unsupported_media_type")
    for path in ("/collections/x/items", "/embeddings/texts", "/api/collections"):
        assert_error(
            local.post(path, content=b'{"texts": ["a"]}', headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
    assert local.get(f"/collections/{name}").status_code == 404
    assert local.post("/collections", json={"name": name}).status_code == 201


def test_cors_is_closed_by_default(local):
    # The review's repro: a cross-origin DELETE preflight was answered with allow-origin *.
    for method in ("DELETE", "POST"):
        response = local.options(
            "/collections/c", headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": method}
        )
        assert "access-control-allow-origin" not in response.headers
        assert response.status_code >= 400
    response = local.get("/info", headers={"Origin": "http://elsewhere.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_cross_site_writes_are_refused(local):
    name = f"victim-{secrets.token_hex(3)}"
    assert local.post("/collections", json={"name": name}).status_code == 201
    evil = {"Origin": "http://evil.example"}
    assert_error(local.delete(f"/collections/{name}", headers=evil), 403, "cross_site_request")
    assert_error(local.post("/collections", json={"name": name + "x"}, headers=evil), 403, "cross_site_request")
    # multipart is a CORS-safelisted type: a form POST from another site needs no preflight. Refused.
    form = {"files": ("a.png", png_bytes(1), "image/png")}
    assert_error(local.post(f"/collections/{name}/items", files=form, headers=evil), 403, "cross_site_request")
    assert_error(
        local.post(f"/collections/{name}/items", files=form, headers={"Sec-Fetch-Site": "cross-site"}),
        403,
        "cross_site_request",
    )
    assert_error(
        local.post(f"/collections/{name}/items", files=form, headers={"Origin": "null"}), 403, "cross_site_request"
    )
    # Another port of the same host is another origin (Sec-Fetch-Site would say same-site).
    port = int(local.base_url.port) + 1
    other_port = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-site"}
    assert_error(local.post(f"/collections/{name}/items", files=form, headers=other_port), 403, "cross_site_request")
    assert local.get(f"/collections/{name}").json()["item_count"] == 0
    # The same origin (the UI) and clients that send no Origin (curl, SDKs) are served.
    same = {"Origin": str(local.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert local.post(f"/collections/{name}/items", files=form, headers=same).status_code == 200
    assert local.delete(f"/collections/{name}").status_code == 204


def test_a_spoofed_host_is_not_served(local):
    # The review's repro (DNS rebinding): a foreign Host name was served.
    assert_error(local.get("/collections", headers={"Host": "evil.example"}), 421, "invalid_host")
    assert_error(local.get("/info", headers={"Host": "evil.example:5000"}), 421, "invalid_host")
    for host in ("localhost", f"localhost:{local.base_url.port}", "127.0.0.1", "[::1]:5000"):
        assert local.get("/collections", headers={"Host": host}).status_code == 200, host
    assert local.get("/health/live", headers={"Host": "evil.example"}).status_code == 200  # probes use any name


def test_security_headers_and_originals_served_safely(server_factory, tmp_path):
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "index.html").write_text("<!doctype html><title>ui</title>")
    server = server_factory({"CLIP_FILTER_UI_DIR": str(ui)})
    with server.client() as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        api = http.get("/info")
        assert api.headers["x-content-type-options"] == "nosniff"
        assert api.headers["content-security-policy"].startswith("default-src 'none'")

        assert http.post("/collections", json={"name": "served"}).status_code == 201
        added = http.post("/collections/served/items", json={"texts": ["<script>alert(1)</script>"]}).json()
        text_url = added["results"][0]["item"]["content_url"]
        files = {"files": ("pic.png", png_bytes(3), "image/png")}
        added = http.post("/collections/served/items", files=files).json()
        image_url = added["results"][0]["item"]["content_url"]

        text = http.get(text_url)
        assert text.status_code == 200 and not text.headers["content-type"].startswith("text/html")
        assert text.headers["content-disposition"].startswith("attachment")
        assert text.headers["content-security-policy"].startswith("sandbox")
        assert text.headers["x-content-type-options"] == "nosniff"
        image = http.get(image_url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert not image.headers.get("content-disposition", "inline").startswith("attachment")
        assert image.headers["content-security-policy"].startswith("sandbox")
        assert image.content == png_bytes(3)


def test_a_cors_allow_list_and_allowed_hosts(server_factory):
    server = server_factory(
        {"CLIP_FILTER_CORS_ORIGINS": "http://app.example", "CLIP_FILTER_ALLOWED_HOSTS": "clip.example.org,127.0.0.1"}
    )
    with server.client() as http:
        good = http.options(
            "/collections",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert good.status_code == 200 and good.headers["access-control-allow-origin"] == "http://app.example"
        bad = http.options(
            "/collections", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert bad.headers.get("access-control-allow-origin") is None
        created = http.post("/collections", json={"name": "cors"}, headers={"Origin": "http://app.example"})
        assert created.status_code == 201 and created.headers["access-control-allow-origin"] == "http://app.example"
        assert http.get("/collections", headers={"Host": "clip.example.org:8443"}).status_code == 200
        assert_error(http.get("/collections", headers={"Host": "localhost"}), 421, "invalid_host")
