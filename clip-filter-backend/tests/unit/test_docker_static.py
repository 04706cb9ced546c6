"""The Docker files, checked without Docker: docker-compose.yml (+ the GPU override), both Dockerfiles,
their .dockerignore files and the frontend's nginx.conf.

Nothing here builds or starts a container. The files are parsed (PyYAML for compose, a small parser for
the Dockerfiles and nginx.conf) and cross-checked against each other, against the repository (every
COPY source exists in its build context and is not excluded by .dockerignore) and against the backend's
Settings (every variable the compose file sets is a real setting, its `${VAR:-default}` equals the
Settings default). The two healthcheck commands are run against a throwaway local HTTP server.
`docker compose config` also validates the compose files where the compose CLI plugin is installed.

These tests need the whole repository, so .dockerignore keeps this file out of the backend image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest
import yaml

from clip_filter.core.config import Settings

ROOT = Path(__file__).resolve().parents[3]
BACKEND = ROOT / "clip-filter-backend"
FRONTEND = ROOT / "clip-filter-frontend"
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPU_FILE = ROOT / "docker-compose.gpu.yml"
NGINX_CONF = FRONTEND / "nginx.conf"

IN_CHECKOUT = BACKEND.is_dir() and FRONTEND.is_dir()
pytestmark = [
    pytest.mark.skipif(not IN_CHECKOUT, reason="needs the whole repository (not inside the backend image)"),
    pytest.mark.may_skip(reason="needs the whole repository; the backend image has only the backend"),
]

SERVICES = ("backend", "frontend", "unit-tests", "integration-tests")


# --------------------------------------------------------------------------- compose helpers

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's variable interpolation, with an explicit environment (empty: the file's own defaults)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group("braced") if match.group("braced") is not None else match.group("plain")
        for op in (":-", "-", ":?", "?", ":+", "+"):
            name, sep, default = expr.partition(op)
            if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                present = name in env and (env[name] != "" or ":" not in op)
                if op in (":-", "-"):
                    return env[name] if present else default
                if op in (":?", "?"):
                    if not present:
                        raise ValueError(f"${{{expr}}}: required variable {name} is not set")
                    return env[name]
                return default if present else ""
        return env.get(expr, "")

    return _INTERPOLATION.sub(replace, value)


def interpolation_defaults(value) -> dict[str, str]:
    """`${NAME:-default}` occurrences in a string: {NAME: default}."""
    return {m.group(1): m.group(2) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-([^}]*)\}", str(value))}


def load_yaml(path: Path) -> dict:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: not a mapping"
    return data


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose(raw_compose: dict) -> dict:
    """docker-compose.yml as Compose resolves it with no variables set on the host."""
    return interpolate(raw_compose)


@pytest.fixture(scope="module")
def gpu_override() -> dict:
    return interpolate(load_yaml(GPU_FILE))


def env_dict(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def build_of(service: dict) -> tuple[Path, Path, str | None]:
    """(context dir, Dockerfile, target) of a service's build section."""
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile"), build.get("target")


def parse_duration(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def published_ports(service: dict) -> list[tuple[str, str]]:
    """[(host port, container port)] from the short or long port syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port["target"])))
        else:
            spec = str(port).split("/")[0]
            pieces = spec.split(":")
            out.append((pieces[-2] if len(pieces) >= 2 else "", pieces[-1]))
    return out


# --------------------------------------------------------------------------- Dockerfile parser


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    operands: list[str]
    raw: str
    json_form: bool


@dataclass
class Stage:
    index: int
    name: str | None
    image: str
    parent: Stage | None
    instructions: list[Instruction] = field(default_factory=list)

    def chain(self) -> list[Stage]:
        return ([*self.parent.chain()] if self.parent else []) + [self]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for stage in self.chain() for i in stage.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction))
        return values

    def workdir(self) -> str:
        path = PurePosixPath("/")
        for instruction in self.all("WORKDIR"):
            path = path / instruction.operands[0]
        return str(path)

    def user(self) -> str:
        found = self.last("USER")
        return found.operands[0] if found else "root"

    def command(self) -> list[str]:
        found = self.last("CMD")
        if found is None:
            return []
        return found.operands if found.json_form else ["/bin/sh", "-c", found.raw]

    def copies(self) -> list[tuple[Instruction, str]]:
        """Every COPY/ADD up the chain with the working directory it ran in."""
        out, path = [], PurePosixPath("/")
        for stage in self.chain():
            for instruction in stage.instructions:
                if instruction.keyword == "WORKDIR":
                    path = path / instruction.operands[0]
                elif instruction.keyword in ("COPY", "ADD"):
                    out.append((instruction, str(path)))
        return out


def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue  # comments (also inside continuations) and blank lines inside continuations
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_env(instruction: Instruction) -> dict[str, str]:
    tokens = shlex.split(instruction.raw, posix=True)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def parse_dockerfile(path: Path) -> list[Stage]:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        json_form = rest.startswith("[")
        flags: dict[str, str] = {}
        if json_form:
            operands = json.loads(rest)
        else:
            tokens = shlex.split(rest, posix=True) if keyword not in ("RUN", "CMD", "ENTRYPOINT") else rest.split()
            while tokens and tokens[0].startswith("--"):
                name, _, value = tokens.pop(0)[2:].partition("=")
                flags[name] = value
            operands = tokens
        raw = rest
        if keyword in ("RUN", "CMD", "ENTRYPOINT", "HEALTHCHECK", "ENV") and not json_form:
            raw = re.sub(r"^(--\S+\s+)*", "", rest)
        instruction = Instruction(keyword, flags, operands, raw, json_form)
        if keyword == "ARG" and not stages:
            name, _, default = operands[0].partition("=")
            global_args[name] = default
            continue
        if keyword == "FROM":
            image = interpolate(operands[0], global_args)
            name = operands[2] if len(operands) >= 3 and operands[1].upper() == "AS" else None
            parent = next((s for s in stages if s.name and s.name.lower() == image.lower()), None)
            stages.append(Stage(len(stages), name, image, parent))
            continue
        assert stages, f"{path.name}: {keyword} before the first FROM"
        stages[-1].instructions.append(instruction)
    assert stages, f"{path.name}: no FROM"
    return stages


def stage_named(stages: list[Stage], name: str | None) -> Stage:
    if name is None:
        return stages[-1]
    for stage in stages:
        if stage.name and stage.name.lower() == name.lower():
            return stage
    raise AssertionError(f"no stage {name!r} (stages: {[s.name for s in stages]})")


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns(context: Path) -> list[tuple[bool, str]]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = str(PurePosixPath("/" + pattern)).lstrip("/") or "."
        patterns.append((negate, pattern))
    return patterns


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def is_ignored(relative: str, patterns: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches too."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, pattern in patterns:
        regex = _pattern_regex(pattern)
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


# --------------------------------------------------------------------------- nginx.conf


def nginx_block(text: str, header_regex: str) -> str:
    match = re.search(header_regex + r"\s*\{", text)
    assert match, f"nginx.conf: no block matching {header_regex!r}"
    depth, start = 1, match.end()
    for pos in range(start, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[start:pos]
    raise AssertionError("nginx.conf: unbalanced braces")


def nginx_directives(block: str) -> list[list[str]]:
    block = re.sub(r"#[^\n]*", "", block)
    block = re.sub(r"\{[^{}]*\}", ";", block)  # drop nested blocks (one level is all nginx.conf uses)
    out: list[list[str]] = []
    current: list[str] = []
    for token in re.findall(r'"[^"]*"|\'[^\']*\'|;|[^\s;]+', block):  # a quoted value may hold ';' (a CSP)
        if token == ";":
            if current:
                out.append(current)
            current = []
        else:
            current.append(token[1:-1] if len(token) > 1 and token[0] in "\"'" and token[-1] == token[0] else token)
    if current:
        out.append(current)
    return out


def nginx_size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", text).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def nginx_seconds(text: str) -> float:
    if re.fullmatch(r"\d+", text):
        return float(text)
    scale = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", text))


# =========================================================================== compose: structure


def test_compose_has_the_four_services_and_test_profiles(compose: dict):
    services = compose.get("services") or {}
    for name in SERVICES:
        assert name in services, f"docker-compose.yml: service {name!r} missing"
    for name in ("backend", "frontend"):
        assert not services[name].get("profiles"), f"{name} must run by default (no profile)"
    for name in ("unit-tests", "integration-tests"):
        assert services[name].get("profiles") == ["test"], f"{name} belongs to the 'test' profile only"
    assert "version" not in compose, "the top-level 'version' key is obsolete in Compose v2"


def test_build_contexts_and_dockerfiles_exist(compose: dict):
    for name in SERVICES:
        context, dockerfile, _ = build_of(compose["services"][name])
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    assert build_of(compose["services"]["backend"])[0] == BACKEND
    assert build_of(compose["services"]["frontend"])[0] == FRONTEND


def test_every_build_target_is_a_stage(compose: dict):
    for name in SERVICES:
        _, dockerfile, target = build_of(compose["services"][name])
        stages = parse_dockerfile(dockerfile)
        if target is not None:
            stage_named(stages, target)  # raises with the stage list when missing
    _, _, backend_target = build_of(compose["services"]["backend"])
    _, _, unit_target = build_of(compose["services"]["unit-tests"])
    _, _, integration_target = build_of(compose["services"]["integration-tests"])
    assert unit_target and unit_target == integration_target, "both test services use the test stage"
    assert backend_target != unit_target, "the backend must not run the test image"


def published_addresses(service: dict) -> list[str]:
    """The host address of each published port ("" when it has none, i.e. every interface)."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append(str(port.get("host_ip", "")))
        else:
            pieces = str(port).split("/")[0].split(":")
            out.append(":".join(pieces[:-2]) if len(pieces) >= 3 else "")
    return out


def test_ports(compose: dict, raw_compose: dict):
    backend = published_ports(compose["services"]["backend"])
    assert ("5000", "5000") in backend, f"backend must publish 5000:5000 by default, has {backend}"
    frontend = published_ports(compose["services"]["frontend"])
    assert [host for host, _ in frontend] == ["8080"], f"frontend must publish host port 8080, has {frontend}"
    # Loopback only by default (the review found every interface published); exposing is one variable away.
    for name in ("backend", "frontend"):
        assert published_addresses(compose["services"][name]) == ["127.0.0.1"], compose["services"][name]["ports"]
        exposed = interpolate(raw_compose, {"CLIP_FILTER_PUBLISH_HOST": "0.0.0.0"})["services"][name]
        assert published_addresses(exposed) == ["0.0.0.0"]
    listen = [d[1] for d in nginx_directives(nginx_block(NGINX_CONF.read_text(), r"server")) if d[0] == "listen"]
    assert frontend[0][1] in [port.split(":")[-1] for port in listen], (
        f"frontend publishes container port {frontend[0][1]}, nginx listens on {listen}"
    )


def test_backend_healthcheck_waits_for_the_model(compose: dict, raw_compose: dict):
    check = compose["services"]["backend"].get("healthcheck")
    assert check, "backend needs a healthcheck"
    command = check["test"]
    text = " ".join(command) if isinstance(command, list) else command
    assert "/health/ready" in text, "the healthcheck must hit /health/ready (200 only once the model is loaded)"
    assert ":5000/" in text
    assert "curl" not in text and "wget" not in text, "python:*-slim has neither curl nor wget"
    if isinstance(command, list):
        assert command[0] in ("CMD", "CMD-SHELL")
    # A first start downloads the model: the start period must be generous (and a valid duration).
    assert parse_duration(check.get("start_period", "0s")) >= 5 * 60
    for key in ("interval", "timeout"):
        parse_duration(check[key])
    overridable = interpolation_defaults(raw_compose["services"]["backend"]["healthcheck"].get("start_period", ""))
    for value in overridable.values():
        assert parse_duration(value) >= 5 * 60


def test_volumes_are_declared_and_match_the_settings(compose: dict):
    backend = compose["services"]["backend"]
    declared = compose.get("volumes") or {}
    mounts = {}
    for volume in backend.get("volumes", []):
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        assert source in declared, f"backend volume {source!r} is not declared under top-level volumes"
        mounts[target] = source
    env = env_dict(backend)
    for variable in ("CLIP_CACHE_DIR", "CLIP_FILTER_DATA_DIR"):
        assert env.get(variable) in mounts, f"{variable}={env.get(variable)!r} is not on a volume ({mounts})"
    assert mounts[env["CLIP_CACHE_DIR"]] != mounts[env["CLIP_FILTER_DATA_DIR"]]


def test_backend_environment_is_real_settings_with_matching_defaults(compose: dict, raw_compose: dict):
    aliases = {f.validation_alias: f for f in Settings.model_fields.values()}
    raw_env = env_dict(raw_compose["services"]["backend"])
    env = env_dict(compose["services"]["backend"])
    extra = {"HF_HOME"}  # huggingface_hub's own cache, kept inside the model volume
    for name, raw_value in raw_env.items():
        assert name in aliases or name in extra, f"backend sets {name}, which is no setting (typo?)"
        for variable, default in interpolation_defaults(raw_value).items():
            assert variable == name, f"{name} takes its value from ${{{variable}}}: use the same name"
            field_default = aliases[name].default
            assert default == str(field_default), (
                f"{name}: compose default {default!r} differs from the Settings default {field_default!r}"
            )
    assert env["CLIP_FILTER_HOST"] == "0.0.0.0", "inside a container the server must listen on all addresses"
    assert env.get("CLIP_FILTER_PORT", "5000") == "5000"
    for name in ("CLIP_MODEL", "CLIP_PRETRAINED"):
        assert interpolation_defaults(raw_env.get(name, "")), f"{name} must be overridable: ${{{name}:-...}}"
    settings = Settings(**{k: v for k, v in env.items() if k in aliases})  # the defaults validate
    assert settings.model_name == "ViT-B-32" and settings.pretrained == "openai"
    test_env = interpolate(raw_compose, {"CLIP_MODEL": "clip-filter-tiny", "CLIP_PRETRAINED": "random"})
    tiny = env_dict(test_env["services"]["backend"])
    assert (tiny["CLIP_MODEL"], tiny["CLIP_PRETRAINED"]) == ("clip-filter-tiny", "random")


def test_backend_gets_its_bootstrap_key_from_a_secret_file(compose: dict, raw_compose: dict):
    backend = compose["services"]["backend"]
    env = env_dict(backend)
    assert env["CLIP_FILTER_HOST"] == "0.0.0.0" and env.get("CLIP_FILTER_AUTH", "auto") == "auto"
    settings = Settings(CLIP_FILTER_HOST=env["CLIP_FILTER_HOST"], CLIP_FILTER_AUTH=env.get("CLIP_FILTER_AUTH", "auto"))
    assert settings.auth_required, "the containerised backend must require keys (it binds every address)"
    assert "CLIP_FILTER_BOOTSTRAP_KEY" not in env, "no key in the environment: a secret file"
    secret = env["CLIP_FILTER_BOOTSTRAP_KEY_FILE"]
    names = [s if isinstance(s, str) else s["source"] for s in backend.get("secrets", [])]
    assert len(names) == 1 and secret == f"/run/secrets/{names[0]}", (names, secret)
    declared = compose["secrets"][names[0]]
    assert declared["file"].endswith("secrets/api-key")
    assert interpolate(raw_compose, {"CLIP_FILTER_API_KEY_FILE": "/k"})["secrets"][names[0]]["file"] == "/k"
    assert "secrets/" in (ROOT / ".gitignore").read_text().splitlines(), "the key file must never be committed"
    tests = compose["services"]["integration-tests"]
    assert env_dict(tests)["CLIP_FILTER_TEST_API_KEY_FILE"] == secret
    assert names == [s if isinstance(s, str) else s["source"] for s in tests.get("secrets", [])]


@pytest.mark.parametrize("conf", [NGINX_CONF, ROOT / "deploy" / "nginx-replicas.conf"], ids=["ui", "replicas"])
def test_nginx_bounds_slow_and_greedy_clients(conf: Path):
    # Review L6: 600 s send timeouts with unbuffered uploads let a trickling client hold a backend connection.
    text = conf.read_text(encoding="utf-8")
    api = nginx_directives(nginx_block(text, r"location\s+/api/"))
    for name in ("client_body_timeout", "proxy_send_timeout", "send_timeout"):
        values = [nginx_seconds(d[1]) for d in api if d[0] == name]
        assert values and max(values) <= 60, f"{conf.name}: {name} must drop a stalled client within 60 s"
    zones = re.findall(r"^limit_conn_zone\s+\$binary_remote_addr\s+zone=(\w+):\d+m;", text, re.MULTILINE)
    limits = [d for d in api if d[0] == "limit_conn"]
    assert zones and limits and limits[0][1] == zones[0] and 0 < int(limits[0][2]) <= 64, (zones, limits)
    assert ["limit_conn_status", "429"] in api


def test_nginx_sends_security_headers_and_the_host_with_its_port():
    text = NGINX_CONF.read_text(encoding="utf-8")
    api = nginx_directives(nginx_block(text, r"location\s+/api/"))
    assert ["proxy_set_header", "Host", "$http_host"] in api, "the backend compares Origin with Host:port"
    for location in (r"location\s+/(?=\s*\{)", r"location\s+/assets/"):
        headers = {d[1].lower(): d[2] for d in nginx_directives(nginx_block(text, location)) if d[0] == "add_header"}
        assert headers.get("x-content-type-options") == "nosniff", location
        assert headers.get("x-frame-options") == "DENY", location
        csp = headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp, csp


def test_frontend_waits_for_a_healthy_backend(compose: dict):
    depends = compose["services"]["frontend"].get("depends_on")
    assert isinstance(depends, dict) and depends.get("backend", {}).get("condition") == "service_healthy"


def test_integration_tests_target_the_running_backend(compose: dict):
    service = compose["services"]["integration-tests"]
    depends = service.get("depends_on")
    assert isinstance(depends, dict), "integration-tests: depends_on needs the long form with a condition"
    assert depends.get("backend", {}).get("condition") == "service_healthy"
    assert env_dict(service).get("CLIP_FILTER_TEST_BASE_URL") == "http://backend:5000"
    assert "CI" not in env_dict(service), "CI=true would turn the tests that need their own server into failures"


def test_test_services_run_test_paths_that_exist(compose: dict):
    for name, folder in (("unit-tests", "tests/unit"), ("integration-tests", "tests/integration")):
        service = compose["services"][name]
        context, dockerfile, target = build_of(service)
        stage = stage_named(parse_dockerfile(dockerfile), target)
        command = service.get("command") or stage.command()
        command = shlex.split(command) if isinstance(command, str) else command
        assert "pytest" in " ".join(command), f"{name} must run pytest, runs {command}"
        paths = [arg for arg in command if arg.startswith("tests")]
        assert paths == [folder], f"{name} must run {folder}, runs {command}"
        assert (context / folder).is_dir() and any((context / folder).glob("test_*.py"))
        # The image holds the tests and pyproject.toml (pytest's settings and markers) in the working directory.
        workdir = PurePosixPath(stage.workdir())
        copied = set()
        for instruction, cwd in stage.copies():
            if "from" in instruction.flags:
                continue
            *sources, dest = instruction.operands
            dest_path = PurePosixPath(cwd) / dest
            for source in sources:
                into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
                copied.add(dest_path / PurePosixPath(source).name if into_dir else dest_path)
        assert workdir / "pyproject.toml" in copied, f"{name}: pyproject.toml is not copied into {workdir}"
        assert workdir / "tests" in copied, f"{name}: tests/ is not copied into {workdir}"


def test_gpu_override_reserves_nvidia_gpus_for_the_backend_only(compose: dict, gpu_override: dict):
    services = gpu_override.get("services") or {}
    assert set(services) == {"backend"}, "the GPU override only changes the backend"
    devices = services["backend"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and str(d.get("count")) == "all"
        for d in devices
    ), devices
    for name, service in compose["services"].items():
        reservations = ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        assert not reservations.get("devices"), f"docker-compose.yml reserves devices for {name}: CPU hosts fail"
        assert not service.get("runtime"), f"{name}: runtime in the base file needs the NVIDIA toolkit"


# =========================================================================== Dockerfiles


@pytest.mark.parametrize("context", [BACKEND, FRONTEND], ids=["backend", "frontend"])
def test_every_copy_source_exists_in_its_context(context: Path):
    stages = parse_dockerfile(context / "Dockerfile")
    names = {s.name.lower() for s in stages if s.name} | {str(s.index) for s in stages}
    patterns = dockerignore_patterns(context)
    for stage in stages:
        for instruction in stage.instructions:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            source_stage = instruction.flags.get("from")
            if source_stage is not None:
                assert source_stage.lower() in names or ":" in source_stage or "/" in source_stage, (
                    f"{instruction.keyword} --from={source_stage}: no such stage"
                )
                continue  # produced by a build stage (or another image), not the context
            *sources, _ = instruction.operands
            assert sources, f"{instruction.keyword} {instruction.raw}: no source"
            for source in sources:
                if re.match(r"^[a-z]+://", source):
                    continue  # ADD from a URL
                relative = str(PurePosixPath(source))
                matches = [p for p in context.glob(relative) if p.exists()] if relative != "." else [context]
                assert matches, f"{context.name}/Dockerfile: {instruction.keyword} source {source!r} does not exist"
                if relative != ".":
                    assert not is_ignored(relative, patterns), (
                        f"{context.name}/Dockerfile copies {source!r}, which .dockerignore excludes"
                    )


def test_dockerignore_keeps_local_state_out():
    backend = dockerignore_patterns(BACKEND)
    for path in (".venv/bin/python", "clip_filter/__pycache__/x.pyc", ".pytest_cache/v", ".env"):
        assert is_ignored(path, backend), f"backend .dockerignore lets {path} into the build context"
    for path in ("clip_filter/cli.py", "tests/unit/test_scoring.py", "pyproject.toml", "requirements.lock"):
        assert not is_ignored(path, backend), f"backend .dockerignore excludes {path}"
    assert is_ignored("tests/unit/test_docker_static.py", backend)
    frontend = dockerignore_patterns(FRONTEND)
    for path in ("node_modules/vite/package.json", "dist/index.html", ".env"):
        assert is_ignored(path, frontend), f"frontend .dockerignore lets {path} into the build context"
    for path in ("package.json", "package-lock.json", "nginx.conf", "src/main.tsx", "index.html"):
        assert not is_ignored(path, frontend), f"frontend .dockerignore excludes {path}"


def test_backend_runtime_stage(compose: dict):
    _, dockerfile, target = build_of(compose["services"]["backend"])
    stages = parse_dockerfile(dockerfile)
    runtime = stage_named(stages, target)
    assert stages[-1] is runtime, "the runtime stage comes last, so a plain `docker build` builds it"
    assert runtime.image.startswith("python:3.") or runtime.parent is not None
    env = runtime.env()
    assert env.get("CLIP_FILTER_HOST") == "0.0.0.0"
    assert env.get("CLIP_FILTER_PORT", "5000") == "5000"
    assert runtime.user() not in ("root", "0", "0:0"), "the server must not run as root"
    assert runtime.command()[:2] == ["clip-filter", "serve"], runtime.command()
    assert "5000" in [p.split("/")[0] for i in runtime.all("EXPOSE") for p in i.operands]
    # The volume mount points exist and belong to the user (a new named volume copies that ownership).
    user = runtime.user().split(":")[0]
    runs = " ".join(i.raw for i in runtime.all("RUN"))
    for variable in ("CLIP_CACHE_DIR", "CLIP_FILTER_DATA_DIR"):
        folder = env[variable]
        assert re.search(rf"chown\s+(-R\s+)?{re.escape(user)}(:\S+)?\s+[^&;]*{re.escape(folder)}\b", runs), (
            f"{folder} ({variable}) is not chowned to {user}"
        )
    # Dependencies from the lock before the source (layer caching), with pip's cache mounted.
    copies = [(i.operands[:-1], n) for n, (i, _) in enumerate(runtime.copies())]
    lock_at = next(n for sources, n in copies if "requirements.lock" in sources)
    code_at = next(n for sources, n in copies if any(s.rstrip("/").endswith("clip_filter") for s in sources))
    assert lock_at < code_at, "requirements.lock must be copied (and installed) before the code"
    pip_runs = [i for i in runtime.all("RUN") if "pip install" in i.raw]
    assert pip_runs and all("type=cache" in i.flags.get("mount", "") for i in pip_runs)
    assert any("requirements.lock" in i.raw for i in pip_runs)
    assert runtime.last("HEALTHCHECK") is not None


def test_backend_package_builds_from_its_own_folder():
    """The image is built from clip-filter-backend/ alone, and setuptools refuses files outside the project:
    a `readme = "../README.md"` breaks both the image build and `pip install -e` (with the file present)."""
    text = (BACKEND / "pyproject.toml").read_text(encoding="utf-8")  # no tomllib: Python 3.10 is supported
    match = re.search(r'^readme\s*=\s*(?:"([^"]+)"|\{[^}]*\bfile\s*=\s*"([^"]+)")', text, flags=re.MULTILINE)
    readme_path = match and (match.group(1) or match.group(2))
    if readme_path:
        resolved = (BACKEND / readme_path).resolve()
        assert BACKEND in resolved.parents, f"pyproject readme {readme_path!r} lies outside clip-filter-backend/"
        assert not is_ignored(readme_path, dockerignore_patterns(BACKEND))


def test_backend_test_stage(compose: dict):
    _, dockerfile, target = build_of(compose["services"]["unit-tests"])
    stage = stage_named(parse_dockerfile(dockerfile), target)
    assert any(".[test]" in i.raw for i in stage.all("RUN")), "the test stage installs the [test] extras"
    assert stage.user() not in ("root", "0", "0:0")


def test_frontend_dockerfile_builds_with_node_20_and_serves_with_nginx(compose: dict):
    _, dockerfile, target = build_of(compose["services"]["frontend"])
    stages = parse_dockerfile(dockerfile)
    final = stage_named(stages, target)
    assert final.image.startswith("nginx"), final.image
    dist_copies = [i for i, _ in final.copies() if "from" in i.flags]
    assert dist_copies, "the nginx stage copies the build output from the node stage"
    build = stage_named(stages, dist_copies[0].flags["from"])
    assert build.image.startswith("node:20"), build.image
    runs = " ".join(i.raw for i in build.all("RUN"))
    assert "npm ci" in runs and "npm run build" in runs
    assert dist_copies[0].operands[0].rstrip("/").endswith("/dist")
    assert dist_copies[0].operands[-1].rstrip("/") == "/usr/share/nginx/html"
    conf = [i for i, _ in final.copies() if i.operands[0] == "nginx.conf"]
    assert conf and conf[0].operands[-1].startswith("/etc/nginx/conf.d/")
    package = json.loads((FRONTEND / "package.json").read_text(encoding="utf-8"))
    assert "build" in package.get("scripts", {}), "package.json needs a build script"


# =========================================================================== nginx.conf


def test_nginx_proxies_api_to_the_backend_with_the_prefix_stripped():
    text = NGINX_CONF.read_text(encoding="utf-8")
    server = nginx_directives(nginx_block(text, r"server"))
    api = nginx_directives(nginx_block(text, r"location\s+/api/"))
    variables = {d[1]: d[2] for d in api if d[0] == "set"}
    passes = [d[1] for d in api if d[0] == "proxy_pass"]
    assert len(passes) == 1, passes
    target = passes[0]
    uses_variable = "$" in target
    for name, value in variables.items():
        target = target.replace(name, value)
    match = re.fullmatch(r"http://backend:5000(/.*)?", target)
    assert match, f"/api/ must be proxied to http://backend:5000, is {passes[0]} -> {target}"
    rewrites = [d for d in api if d[0] == "rewrite"]
    if match.group(1):
        # proxy_pass with a URI replaces the matched location prefix: /api/x -> /x
        assert match.group(1) == "/" and not uses_variable and not rewrites
    else:
        assert rewrites and rewrites[0][1:3] == ["^/api/(.*)$", "/$1"], "strip /api with a rewrite"
        assert rewrites[0][3:] == ["break"]
    if uses_variable:
        assert any(d[0] == "resolver" for d in server + api), "a proxy_pass with a variable needs a resolver"
    sizes = [nginx_size(d[1]) for d in server + api if d[0] == "client_max_body_size"]
    assert sizes and min(sizes) >= Settings().max_request_bytes, "uploads up to the backend's own request limit"
    read = [nginx_seconds(d[1]) for d in server + api if d[0] == "proxy_read_timeout"]
    assert read and min(read) >= 300, "proxy_read_timeout must be generous (>= 300s): answers may take long"
    spa = nginx_directives(nginx_block(text, r"location\s+/(?=\s*\{)"))
    assert ["try_files", "$uri", "$uri/", "/index.html"] in spa, "unknown paths fall back to the single-page app"


# =========================================================================== behaviour


class _Health(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):  # noqa: N802
        code = type(self).status if self.path == "/health/ready" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _healthcheck_exit_codes(argv_for_port) -> dict[int, int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        codes = {}
        for status in (200, 503):
            _Health.status = status
            argv, env = argv_for_port(server.server_address[1])
            codes[status] = subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode
        return codes
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_commands_pass_only_when_ready(compose: dict):
    """Run both healthchecks (compose's and the Dockerfile's) against a local server: 200 -> 0, 503 -> not 0."""
    command = compose["services"]["backend"]["healthcheck"]["test"]
    assert command[0] == "CMD" and command[1] == "python"

    def compose_argv(port):
        return [sys.executable, *[a.replace(":5000/", f":{port}/") for a in command[2:]]], dict(os.environ)

    codes = _healthcheck_exit_codes(compose_argv)
    assert codes[200] == 0 and codes[503] != 0, codes

    runtime = stage_named(parse_dockerfile(BACKEND / "Dockerfile"), build_of(compose["services"]["backend"])[2])
    healthcheck = runtime.last("HEALTHCHECK")
    cmd_at = healthcheck.raw.index("CMD")
    argv = json.loads(healthcheck.raw[cmd_at + 3 :].strip())
    assert argv[0] == "python"

    def dockerfile_argv(port):
        return [sys.executable, *argv[1:]], {**os.environ, "CLIP_FILTER_PORT": str(port)}

    codes = _healthcheck_exit_codes(dockerfile_argv)
    assert codes[200] == 0 and codes[503] != 0, codes


def _compose_cli_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.may_skip(reason="needs the docker compose CLI plugin (no Docker engine); CI machines may lack it")
@pytest.mark.skipif(not _compose_cli_available(), reason="`docker compose` (the CLI plugin) is not installed")
@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]], ids=["cpu", "gpu"]
)
def test_docker_compose_config_validates(files: list[str]):
    argv = ["docker", "compose", "--profile", "test"]
    for name in files:
        argv += ["-f", str(ROOT / name)]
    result = subprocess.run([*argv, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# =========================================================================== run_tests.bat


def test_run_tests_bat_mirrors_the_shell_script():
    """Windows' run_tests.bat: CRLF (cmd misreads labels in LF files), npm through CALL (npm is npm.cmd: a
    bare `npm` line would end the script), the same stages and compose services as run_tests.sh."""
    data = (ROOT / "run_tests.bat").read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n"), "run_tests.bat needs CRLF line endings"
    lines = [line.strip() for line in data.decode("ascii").splitlines()]
    code = [line for line in lines if line and not line.lower().startswith("rem ")]
    npm_lines = [line for line in code if re.search(r"(^|\s)npm\s", line) and not line.startswith("call :log")]
    assert npm_lines and all(re.match(r"call\s+npm\s", line) for line in npm_lines if not line.startswith("where ")), (
        npm_lines
    )
    text = "\n".join(code)
    for needle in (
        "npm ci",
        "npm run build",
        "npm test",
        "npm run e2e",
        "-m pytest",
        "CHROMIUM_PATH",
        "requirements.lock",
        "--docker",
        "run --rm unit-tests",
        "run --rm integration-tests",
        "up -d --wait backend",
        "CLIP_PRETRAINED=random",
        "CLIP_MODEL=clip-filter-tiny",
        '"%~2"=="5"',
    ):
        assert needle in text, f"run_tests.bat: {needle!r} missing"
    labels = {line[1:].split()[0].lower() for line in code if line.startswith(":") and not line.startswith("::")}
    for target in re.findall(r"(?:goto|call)\s+:(\w+)", text, flags=re.IGNORECASE):
        assert target.lower() in labels | {"eof"}, f"run_tests.bat jumps to :{target}, which is not defined"
