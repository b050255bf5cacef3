"""docker-compose.yml stays valid and in step with the services' settings and deploy/env.example.

`docker-compose config -q` runs when docker-compose is installed (apt `docker-compose`, offline);
the drift checks need nothing but the files.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ice_service.settings import IceSettings
from relay_service.settings import RelaySettings
from rtc_common.settings import load_settings
from signal_service.settings import SignalSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
TEST_OVERRIDE = ROOT / "deploy" / "compose.test.yml"
SECRETS_OVERRIDE = ROOT / "deploy" / "compose.secrets.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Fixed by the images (HOST, PORT), derived per container (INSTANCE_ID), or not a variable.
NOT_CONFIGURED = {"HOST", "PORT", "SERVICE_NAME", "INSTANCE_ID"}
# Set by docker-compose.yml itself: the stack's own stores, with their credentials.
STORE_URLS = {"REDIS_URL", "RELAY_REDIS_URL", "DIRECTORY_URL", "DIRECTORY_PASSWORD"}
# What .env must hold for docker-compose.yml to render (env.example leaves secrets empty).
SECRETS = {
    "REDIS_PASSWORD": "redis-password-0123456789",
    "MONGO_INITDB_ROOT_USERNAME": "rtc-root",
    "MONGO_INITDB_ROOT_PASSWORD": "mongo-password-0123456789",
}
PYTHON_SERVICES = ("ice-service", "signal-service", "relay-service", "directory-init")

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)


def compose(*args: str, secrets: dict[str, str] = SECRETS) -> subprocess.CompletedProcess[str]:
    # deploy/env.example as the .env, with the required secrets filled in from the environment
    # (which wins over the .env file): it must be usable as one, and a developer's own .env in
    # the checkout stays out of the test.
    env = {k: v for k, v in os.environ.items() if k not in SECRETS} | secrets
    return subprocess.run(
        ["docker-compose", "--env-file", str(ENV_EXAMPLE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def rendered(*files: Path) -> dict[str, Any]:
    args = [arg for f in files or (COMPOSE,) for arg in ("-f", str(f))]
    done = compose(*args, "config")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = yaml.safe_load(done.stdout)
    return document


@needs_compose
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, TEST_OVERRIDE]], ids=["prod", "test"])
def test_compose_config_is_valid(files: list[Path]) -> None:
    args = [arg for f in files for arg in ("-f", str(f))]
    done = compose(*args, "config", "-q")
    assert done.returncode == 0, done.stderr


@needs_compose
def test_services_and_only_the_gateway_published() -> None:
    done = compose("-f", str(COMPOSE), "--profile", "coturn", "config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "gateway",
        "ice-service",
        "signal-service",
        "relay-service",
        "directory-init",
        "redis",
        "mongo",
        "coturn",
        # docker-compose 1.29 lists every profile's services.
        "prometheus",
        "grafana",
    }
    rendered = yaml.safe_load(compose("-f", str(COMPOSE), "config").stdout)
    published = {name for name, service in rendered["services"].items() if service.get("ports")}
    # The gateway, and the monitoring profile's Prometheus and Grafana on the host's loopback
    # only (coturn uses the host's network).
    assert published == {"gateway", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        ports = rendered["services"][name]["ports"]
        assert [str(port).split(":", 1)[0] for port in ports] == ["127.0.0.1"]
        assert rendered["services"][name]["profiles"] == ["monitoring"]


@needs_compose
def test_monitoring_profile() -> None:
    done = compose("-f", str(COMPOSE), "--profile", "monitoring", "config", "--services")
    assert done.returncode == 0, done.stderr
    assert {"prometheus", "grafana"} <= set(done.stdout.split())
    rendered = yaml.safe_load(compose("-f", str(COMPOSE), "config").stdout)
    # docker-compose 1.29 renders volumes as `source:target:mode`.
    mounts = {
        target: source
        for name in ("prometheus", "grafana")
        for source, target, _mode in (v.split(":") for v in rendered["services"][name]["volumes"])
    }
    assert mounts["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "deploy" / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(ROOT / "deploy" / "grafana" / "dashboards")


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=", line)
        if match:
            names.add(match.group(1))
    return names


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))


def service_variables() -> set[str]:
    names: set[str] = set()
    for settings in (IceSettings, SignalSettings, RelaySettings):
        names |= {name.upper() for name in settings.model_fields}
    return names - NOT_CONFIGURED


def test_every_service_variable_reaches_the_containers() -> None:
    missing = service_variables() - STORE_URLS - compose_variables()
    assert not missing, f"not passed by docker-compose.yml: {sorted(missing)}"


def test_env_example_documents_every_compose_variable() -> None:
    undocumented = compose_variables() - env_example_names()
    assert not undocumented, f"not in deploy/env.example: {sorted(undocumented)}"
    unused = env_example_names() - compose_variables()
    assert not unused, f"in deploy/env.example but unused by docker-compose.yml: {sorted(unused)}"


def test_env_example_has_the_contract_defaults() -> None:
    values = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]*=", line)
    )
    expected = {
        "MONGO_DB": "rtc",
        "MONGO_FLAGS_COLLECTION": "featureflags",
        "FLAG_CACHE_SECONDS": "5",
        "FLAG_STALE_MAX_SECONDS": "300",
        "JWT_ALGORITHMS": "HS256",
        "JWT_WALLET_CLAIM": "wallet",
        "ALLOW_BEARER_AUTH": "false",
        "RTC_PROVIDER": "twilio",
        "TWILIO_TIMEOUT_SECONDS": "3",
        "TURN_CRED_TTL": "600",
        "ICE_RATE_LIMIT_PER_MIN": "10",
        "TELEMETRY_RATE_LIMIT_PER_MIN": "120",
        "SIGNAL_MAX_SDP_BYTES": "65536",
        "RELAY_TTL_SECONDS": "604800",
        "RELAY_RATE_LIMIT_PER_MIN": "600",
        "REDIS_MAXMEMORY": "512mb",
    }
    assert {k: values.get(k) for k in expected} == expected
    # Secrets are never pre-filled.
    secrets = ("JWT_SECRET", "TURN_SECRET", "TWILIO_API_SECRET", *SECRETS)
    for secret in secrets:
        assert values[secret] == "", secret


# -- deploy defaults: secrets required, stores authenticated, networks, container limits --------


def test_dotenv_is_git_ignored() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=ROOT, capture_output=True, check=False
    )
    assert done.returncode == 0, ".env (the compose stack's secrets) is not in .gitignore"


@needs_compose
def test_compose_refuses_to_render_without_the_mongo_user() -> None:
    # The passwords may be files (compose secrets): the redis and mongo containers refuse to
    # start without them (test_redis_refuses_a_password_that_breaks_the_urls).
    missing = "MONGO_INITDB_ROOT_USERNAME"
    done = compose("-f", str(COMPOSE), "config", "-q", secrets={**SECRETS, missing: ""})
    assert done.returncode != 0
    assert f"{missing} is required in .env" in done.stderr
    for name, value in SECRETS.items():
        assert value not in done.stderr + done.stdout, f"the error shows {name}"


def settings_of(env: dict[str, Any], **more: str) -> RelaySettings:
    """What a service makes of a rendered environment (rendered values, None for empty)."""
    values = {k: str(v) for k, v in env.items() if v not in (None, "")}
    return load_settings(RelaySettings, {"JWT_SECRET": "j" * 48, **values, **more})


@needs_compose
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, TEST_OVERRIDE]], ids=["prod", "test"])
def test_every_store_url_gets_the_password(files: list[Path]) -> None:
    services = rendered(*files)["services"]
    url = f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    for name in PYTHON_SERVICES:
        env = services[name]["environment"]
        # Not in the URLs (they may come from files): the services add them.
        assert env["REDIS_URL"] == env["RELAY_REDIS_URL"] == "redis://redis:6379/0", name
        settings = settings_of(env)
        assert settings.redis_url == url, name
        assert settings.effective_relay_redis_url == url, name
        if env["DIRECTORY_URL"].startswith("redis"):
            assert settings.directory_url == url, name
        else:
            user = SECRETS["MONGO_INITDB_ROOT_USERNAME"]
            password = SECRETS["MONGO_INITDB_ROOT_PASSWORD"]
            assert settings.directory_url == (
                f"mongodb://{user}:{password}@mongo:27017/?authSource=admin"
            )
    redis = services["redis"]
    # redis-cli in the container (healthcheck, `exec redis redis-cli`) authenticates with it.
    assert redis["environment"]["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]
    assert "redis-cli ping | grep -q PONG" in redis["healthcheck"]["test"][-1]


@needs_compose
def test_redis_runs_with_a_password_and_a_memory_ceiling() -> None:
    redis = rendered()["services"]["redis"]
    script = redis["command"][-1].replace("$$", "$")  # `config` escapes $ as $$
    assert redis["command"][:2] == ["sh", "-ec"]
    assert "requirepass $REDISCLI_AUTH" in script
    assert SECRETS["REDIS_PASSWORD"] not in script  # on stdin, never on a command line
    assert "--maxmemory-policy noeviction" in script
    assert '--maxmemory "$REDIS_MAXMEMORY"' in script
    assert redis["environment"]["REDIS_MAXMEMORY"] == "512mb"
    assert "--protected-mode" not in script
    assert redis["user"] == "redis"


@needs_compose
@pytest.mark.parametrize(
    ("password", "complaint"),
    [
        ("has@an-at-sign-and-more", "letters, digits and . _ ~ - only"),
        ("has:a-colon-and-more-chars", "letters, digits and . _ ~ - only"),
        ("short-pass", "at least 16 characters"),
        ("", "at least 16 characters"),
    ],
)
def test_redis_refuses_a_password_that_breaks_the_urls(password: str, complaint: str) -> None:
    # The redis container's own script, run by sh: it stops before redis-server starts.
    script = rendered()["services"]["redis"]["command"][-1].replace("$$", "$")
    done = subprocess.run(
        ["sh", "-ec", script],
        env={"PATH": os.environ["PATH"], "REDISCLI_AUTH": password, "REDIS_MAXMEMORY": "1mb"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 64, done.stderr
    assert "REDIS_PASSWORD" in done.stderr and complaint in done.stderr
    assert not password or password not in done.stderr


@needs_compose
def test_mongo_authentication_is_on() -> None:
    services = rendered()["services"]
    mongo = services["mongo"]
    # Both set: the image creates the root user and starts mongod with --auth.
    assert (
        mongo["environment"]["MONGO_INITDB_ROOT_USERNAME"] == SECRETS["MONGO_INITDB_ROOT_USERNAME"]
    )
    assert (
        mongo["environment"]["MONGO_INITDB_ROOT_PASSWORD"] == SECRETS["MONGO_INITDB_ROOT_PASSWORD"]
    )
    assert mongo["user"] == "mongodb"
    user, password = SECRETS["MONGO_INITDB_ROOT_USERNAME"], SECRETS["MONGO_INITDB_ROOT_PASSWORD"]
    expected = f"mongodb://{user}:{password}@mongo:27017/?authSource=admin"
    for name in PYTHON_SERVICES:
        assert settings_of(services[name]["environment"]).directory_url == expected, name


def networks_of(service: dict[str, Any]) -> set[str]:
    return set(service.get("networks") or {})


@needs_compose
def test_monitoring_has_its_own_network() -> None:
    document = rendered()
    services = document["services"]
    assert document["networks"]["backend"].get("internal") is True
    assert networks_of(services["prometheus"]) == {"monitoring"}
    assert networks_of(services["grafana"]) == {"monitoring"}
    # Only the services themselves share a network with both monitoring and the stores.
    for name, service in services.items():
        if {"monitoring", "backend"} <= networks_of(service):
            assert name in {"ice-service", "signal-service", "relay-service"}, name
    assert networks_of(services["redis"]) == networks_of(services["mongo"]) == {"backend"}
    assert networks_of(services["gateway"]) == {"edge"}
    # Every job Prometheus scrapes is a service on the monitoring network.
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    targets = {name for job in scrape for sd in job["dns_sd_configs"] for name in sd["names"]}
    assert targets == {"ice-service", "signal-service", "relay-service"}
    for target in targets:
        assert {"edge", "backend", "monitoring"} <= networks_of(services[target]), target


@needs_compose
@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, TEST_OVERRIDE]], ids=["prod", "test"])
def test_every_container_is_hardened_and_limited(files: list[Path]) -> None:
    services = rendered(*files)["services"]
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert not service.get("cap_add"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert any(t.startswith("/tmp:") for t in service.get("tmpfs", [])), name
        assert re.fullmatch(r"\d+[kmg]", str(service.get("mem_limit"))), name
        assert int(service.get("pids_limit", 0)) > 0, name
    # The stores start as their own user: their entrypoints would need setuid otherwise.
    assert services["redis"]["user"] == "redis"


def comment_above(name: str) -> str:
    """The comment block of deploy/env.example over the variable (and its block's others)."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"{name}=")) - 1
    while i >= 0 and re.match(r"^[A-Z][A-Z0-9_]*=", lines[i]):
        i -= 1
    comments: list[str] = []
    while i >= 0 and lines[i].startswith("#"):
        comments.insert(0, lines[i])
        i -= 1
    return " ".join(comments)


def test_env_example_marks_the_store_secrets_required() -> None:
    for name in SECRETS:
        assert "Required" in comment_above(name), name
    assert "noeviction" in comment_above("REDIS_MAXMEMORY")


# -- secrets as files (deploy/compose.secrets.yml) ----------------------------------------------

# What each container mounts: only the secrets it reads.
SERVICE_SECRETS = {"redis_password", "mongo_password", "jwt_public_key.pem", "log_pseudonym_key"}
SECRET_MOUNTS = {
    "ice-service": {*SERVICE_SECRETS, "turn_secret", "admin_token"},
    "signal-service": SERVICE_SECRETS,
    "relay-service": SERVICE_SECRETS,
    "directory-init": {"redis_password", "mongo_password"},
    "redis": {"redis_password"},
    "mongo": {"mongo_password"},
    "coturn": {"turn_secret"},
    "gateway": set(),
}  # fmt: skip


def secret_files(folder: Path) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    values = {
        "redis_password": "redis-password-from-a-file",
        "mongo_password": "mongo-password-from-a-file",
        "jwt_public_key.pem": pem,
        "log_pseudonym_key": "pseudonym-key-from-a-file-0123456789",
        "turn_secret": "turn-secret-from-a-file",
        "admin_token": "admin-token-from-a-file-0123456789abcdef",
    }
    folder.mkdir(mode=0o700)
    for name, value in values.items():
        (folder / name).write_text(value if value.endswith("\n") else value + "\n")
    return values


@needs_compose
def test_secrets_as_files(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    values = secret_files(folder)
    env = {"MONGO_INITDB_ROOT_USERNAME": "rtc-root", "SECRETS_DIR": str(folder)}
    done = compose(
        "-f", str(COMPOSE), "-f", str(SECRETS_OVERRIDE), "--profile", "coturn", "config",
        secrets={**env, "JWT_ALGORITHMS": "RS256"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = yaml.safe_load(done.stdout)
    assert {name: s["file"] for name, s in document["secrets"].items()} == {
        name: str(folder / name) for name in values
    }
    for name, service in document["services"].items():
        if name in ("prometheus", "grafana"):
            continue
        mounted = {secret["source"] for secret in service.get("secrets", [])}
        assert mounted == SECRET_MOUNTS[name], name
        environment = service.get("environment", {})
        named = {
            v.removeprefix("/run/secrets/")
            for k, v in environment.items()
            if k.endswith("_FILE") and v
        }
        assert named == mounted, name  # every mounted secret is read, and only those
        for value in values.values():
            assert value.strip() not in done.stdout  # the values stay in their files

    # What the services make of it, the files where the containers find them.
    for name in ("ice-service", "signal-service", "relay-service"):
        environment = {
            k: str(v).replace("/run/secrets", str(folder))
            for k, v in document["services"][name]["environment"].items()
            if v not in (None, "")
        }
        settings = load_settings(IceSettings, environment)
        assert settings.redis_url == f"redis://:{values['redis_password']}@redis:6379/0"
        assert settings.directory_url == (
            f"mongodb://rtc-root:{values['mongo_password']}@mongo:27017/?authSource=admin"
        )
        assert settings.jwt_public_key is not None
        assert settings.jwt_public_key.get_secret_value() == values["jwt_public_key.pem"].strip()
        assert settings.log_pseudonym_key is not None
        if name == "ice-service":
            assert settings.turn_secret is not None and settings.admin_token is not None
            assert settings.turn_secret.get_secret_value() == values["turn_secret"]
            assert settings.admin_token.get_secret_value() == values["admin_token"]


@needs_compose
@pytest.mark.parametrize(
    ("content", "env", "complaint"),
    [
        ("short-from-file\n", {}, "at least 16 characters"),  # read from the file
        (None, {}, "REDIS_PASSWORD_FILE cannot be read"),
        ("long-enough-password-0123\n", {"REDISCLI_AUTH": "x" * 20}, "are both set"),
    ],
)
def test_redis_reads_its_password_file(
    tmp_path: Path, content: str | None, env: dict[str, str], complaint: str
) -> None:
    script = rendered()["services"]["redis"]["command"][-1].replace("$$", "$")
    path = tmp_path / "redis_password"
    if content is not None:
        path.write_text(content)
    done = subprocess.run(
        ["sh", "-ec", script],
        env={
            "PATH": os.environ["PATH"], "REDIS_MAXMEMORY": "1mb", "REDISCLI_AUTH": "",
            "REDIS_PASSWORD_FILE": str(path), **env,
        },
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.returncode == 64, done.stderr
    assert complaint in done.stderr
    assert "from-file" not in done.stderr and "0123" not in done.stderr
