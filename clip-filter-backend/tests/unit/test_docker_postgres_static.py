"""The PostgreSQL compose pieces, checked without Docker: the `postgres` service (profile), the override that
points the backend at it, the two-replica example and its nginx upstream (deploy/nginx-replicas.conf), and the
override that puts the second replica on the GPUs as docker-compose.gpu.yml puts the first."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from clip_filter.core.config import Settings

from .test_docker_static import (
    COMPOSE_FILE,
    IN_CHECKOUT,
    ROOT,
    env_dict,
    interpolate,
    interpolation_defaults,
    load_yaml,
    nginx_block,
    nginx_directives,
    parse_duration,
    published_ports,
)

POSTGRES_FILE = ROOT / "docker-compose.postgres.yml"
REPLICAS_FILE = ROOT / "docker-compose.replicas.yml"
REPLICAS_NGINX = ROOT / "deploy" / "nginx-replicas.conf"
REPLICAS_GPU_FILE = ROOT / "docker-compose.replicas-gpu.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"

pytestmark = [
    pytest.mark.skipif(not IN_CHECKOUT, reason="needs the whole repository (not inside the backend image)"),
    pytest.mark.may_skip(reason="needs the whole repository; the backend image has only the backend"),
]


def merged() -> dict:
    """docker-compose.yml + the postgres override + the replicas override, merged as Compose does for
    the keys used here (mappings merge, the override's scalars and lists win; volumes append)."""

    def merge(base, override):
        if isinstance(base, dict) and isinstance(override, dict):
            out = dict(base)
            for key, value in override.items():
                if key == "volumes" and isinstance(value, list) and isinstance(base.get(key), list):
                    out[key] = base[key] + value
                else:
                    out[key] = merge(base.get(key), value) if key in base else value
            return out
        return override

    data = load_yaml(COMPOSE_FILE)
    for path in (POSTGRES_FILE, REPLICAS_FILE):
        data = merge(data, load_yaml(path))
    return interpolate(data)


def memory_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kKmMgG]?)[bB]?", str(text).strip())
    assert match, f"not a size: {text!r}"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def test_postgres_service_is_pinned_healthy_persistent_and_in_its_profile():
    compose = interpolate(load_yaml(COMPOSE_FILE))
    service = compose["services"]["postgres"]
    assert service["image"] == "pgvector/pgvector:0.8.6-pg18"
    assert service.get("profiles") == ["postgres"], "PostgreSQL is opt-in: SQLite stays the default"
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    for key in ("interval", "timeout", "start_period"):
        parse_duration(service["healthcheck"][key])
    source, target = service["volumes"][0].split(":")[:2]
    assert source in compose["volumes"] and target == "/var/lib/postgresql", "pg18 images keep PGDATA below it"
    command = service["command"]
    settings = dict(command[i + 1].split("=", 1) for i, word in enumerate(command) if word == "-c")
    assert memory_bytes(service["shm_size"]) >= memory_bytes(settings["maintenance_work_mem"]), (
        "parallel HNSW builds need /dev/shm of at least maintenance_work_mem"
    )
    assert not published_ports(service), "the database is reached on the compose network only"


def test_the_override_points_the_backend_at_the_compose_postgres():
    compose = interpolate(load_yaml(COMPOSE_FILE))
    override = load_yaml(POSTGRES_FILE)
    backend = interpolate(override)["services"]["backend"]
    url = env_dict(backend)["CLIP_FILTER_DATABASE_URL"]
    assert Settings(CLIP_FILTER_DATABASE_URL=url).database_url == url
    parts = urlsplit(url)
    postgres = env_dict(compose["services"]["postgres"])
    assert (parts.hostname, parts.port, parts.path.lstrip("/")) == ("postgres", 5432, postgres["POSTGRES_DB"])
    assert (parts.username, parts.password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    assert backend["depends_on"]["postgres"]["condition"] == "service_healthy"
    raw = env_dict(override["services"]["backend"])["CLIP_FILTER_DATABASE_URL"]
    assert interpolation_defaults(raw) == interpolation_defaults(
        env_dict(load_yaml(COMPOSE_FILE)["services"]["postgres"])["POSTGRES_PASSWORD"]
    )


def test_replicas_share_the_database_the_originals_and_sit_behind_one_upstream():
    compose = merged()
    services = compose["services"]
    replicas = [name for name, s in services.items() if s.get("image") == "clip-filter-backend:latest"]
    assert replicas == ["backend", "backend-2"], replicas
    aliases = {f.validation_alias for f in Settings.model_fields.values()} | {"HF_HOME"}
    envs = [env_dict(services[name]) for name in replicas]
    for env in envs:
        assert set(env) <= aliases, set(env) - aliases
    assert envs[0] == envs[1], "replicas must run the same model and settings"
    assert envs[0]["CLIP_FILTER_DATABASE_URL"].startswith("postgresql://")
    for name in replicas:
        mounts = dict(v.split(":")[:2][::-1] for v in services[name]["volumes"])
        assert mounts[envs[0]["CLIP_FILTER_DATA_DIR"]] == "data", f"{name} must mount the shared originals volume"
        assert services[name]["healthcheck"]["test"] == services["backend"]["healthcheck"]["test"]
    frontend = services["frontend"]
    mount = next(v for v in frontend["volumes"] if v.endswith(":/etc/nginx/conf.d/default.conf:ro"))
    assert (ROOT / mount.split(":")[0]).resolve() == REPLICAS_NGINX
    assert all(frontend["depends_on"][name]["condition"] == "service_healthy" for name in replicas)

    text = REPLICAS_NGINX.read_text(encoding="utf-8")
    upstream = nginx_directives(nginx_block(text, r"upstream\s+clip_filter_backends"))
    servers = [d[1] for d in upstream if d[0] == "server"]
    assert servers == [f"{name}:5000" for name in replicas]
    api = nginx_directives(nginx_block(text, r"location\s+/api/"))
    assert ["proxy_pass", "http://clip_filter_backends"] in api
    rewrites = [d for d in api if d[0] == "rewrite"]
    assert rewrites and rewrites[0][1:] == ["^/api/(.*)$", "/$1", "break"]
    assert ["proxy_set_header", "Connection", ""] in api, "upstream keepalive needs the Connection header cleared"
    spa = nginx_directives(nginx_block(text, r"location\s+/(?=\s*\{)"))
    assert ["try_files", "$uri", "$uri/", "/index.html"] in spa


def test_long_running_services_cannot_gain_privileges():
    # Review L6: no cap_drop, no-new-privileges or pids_limit anywhere. Backends run as UID 10001 and need no
    # capability at all; nginx's master keeps the few it needs to bind port 80 and switch user.
    services = merged()["services"]
    for name in ("backend", "backend-2", "frontend"):
        service = services[name]
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert 0 < int(service.get("pids_limit", 0)) <= 4096, name
    for name in ("backend", "backend-2"):
        assert services[name].get("cap_drop") == ["ALL"] and not services[name].get("cap_add"), name


def test_the_gpu_replicas_override_reserves_for_the_second_replica_what_the_gpu_override_does_for_the_first():
    gpu = load_yaml(GPU_FILE)["services"]["backend"]["deploy"]
    override = load_yaml(REPLICAS_GPU_FILE)["services"]
    assert set(override) == {"backend-2"}, "only the second replica changes"
    assert override["backend-2"]["deploy"] == gpu
    assert "backend-2" in merged()["services"], "the override must name the replicas file's service"
    comment = " ".join(
        line.lstrip("# ").rstrip("\\ ")
        for line in REPLICAS_GPU_FILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    )
    command = comment[comment.index("docker compose") :]
    needed = (
        "docker-compose.gpu.yml",
        "docker-compose.replicas.yml",
        "docker-compose.replicas-gpu.yml",
        "--profile postgres",
    )
    for name in needed:
        assert name in command, f"the usage line lacks {name}"
