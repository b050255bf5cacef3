"""docker-compose.yml stays valid and in step with the services' settings and deploy/env.example.

`docker-compose config -q` runs when docker-compose is installed (apt `docker-compose`, offline);
the drift checks need nothing but the files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ice_service.settings import IceSettings
from relay_service.settings import RelaySettings
from signal_service.settings import SignalSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
TEST_OVERRIDE = ROOT / "deploy" / "compose.test.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
# Fixed by the images (HOST, PORT), derived per container (INSTANCE_ID), or not a variable.
NOT_CONFIGURED = {"HOST", "PORT", "SERVICE_NAME", "INSTANCE_ID"}

needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose is not installed"
)


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    # deploy/env.example as the .env: it must be usable as one, and a developer's own .env in
    # the checkout stays out of the test.
    return subprocess.run(
        ["docker-compose", "--env-file", str(ENV_EXAMPLE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
    missing = service_variables() - compose_variables()
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
    }
    assert {k: values.get(k) for k in expected} == expected
    # Secrets are never pre-filled.
    for secret in ("JWT_SECRET", "TURN_SECRET", "TWILIO_API_SECRET", "MONGO_INITDB_ROOT_PASSWORD"):
        assert values[secret] == "", secret
