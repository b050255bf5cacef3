"""docs/reference.md matches the code, and the docs link only to files of this repository.

No process is started: the settings classes, the OpenAPI files and the error table are read
as they are.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest
import rtc_common
from ice_service.settings import IceSettings
from relay_service.settings import RelaySettings
from rtc_common.errors import STATUS_BY_CODE
from rtc_common.settings import CommonSettings
from signal_service.settings import SignalSettings


def _repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "services").is_dir():
            return parent
    raise AssertionError("no repository root above this test")


REPO = _repo_root()
REFERENCE = REPO / "docs" / "reference.md"
OPENAPI_FILES = (
    REPO / "services" / "ice" / "ice_service" / "openapi.json",
    REPO / "services" / "relay" / "relay_service" / "openapi.json",
)
SERVICES: dict[str, type[CommonSettings]] = {
    "ice": IceSettings,
    "signal": SignalSettings,
    "relay": RelaySettings,
}
# Variables in the table that no service settings class reads: the gateway image and
# `rtcctl local prepare`, the coturn image, docker-compose.yml and its .env, the local stack
# (make run/up), rtcctl itself.
NON_SERVICE_VARIABLES = frozenset(
    {
        # gateway
        "GATEWAY_RATE_LIMIT", "GATEWAY_RATE_BURST", "GATEWAY_CONN_LIMIT",
        "GATEWAY_MAX_BODY_SIZE", "GATEWAY_RELAY_MAX_BODY_SIZE", "GATEWAY_MAX_HEADER_SIZE",
        "GATEWAY_CLIENT_HEADER_TIMEOUT", "GATEWAY_CLIENT_BODY_TIMEOUT", "GATEWAY_SEND_TIMEOUT",
        "GATEWAY_REAL_IP_FROM", "GATEWAY_DEMO", "GATEWAY_AFFINITY_KEY", "GATEWAY_RESOLVE_SECONDS",
        "GATEWAY_WORKERS", "GATEWAY_LISTEN", "ICE_UPSTREAM", "SIGNAL_UPSTREAM", "RELAY_UPSTREAM",
        "GATEWAY_RUN_DIR", "GATEWAY_WEB_ROOT", "GATEWAY_TEMPLATE", "NGINX",
        # coturn
        "TURN_SECRET_PREVIOUS", "TURN_SECRET_PREVIOUS_FILE", "TURN_REALM", "TURN_PORT",
        "TURN_TLS_PORT", "TURN_MIN_PORT",
        "TURN_MAX_PORT", "TURN_EXTERNAL_IP", "TURN_LISTENING_IP", "TURN_RELAY_IP",
        "TURN_TLS_CERT", "TURN_TLS_KEY", "TURN_ALLOWED_PEER_IPS", "TURN_DENY_PRIVATE_PEERS",
        "TURN_ALLOW_LOOPBACK_PEERS", "TURN_TCP_RELAY", "TURN_USER_QUOTA", "TURN_TOTAL_QUOTA",
        "TURN_MAX_BPS", "TURN_CONFIG_DIR", "TURN_RUN_DIR", "TURNSERVER", "TURN_CLI_IP",
        "TURN_CLI_PORT",
        # compose
        "GATEWAY_PORT", "GATEWAY_BIND", "RTC_IMAGE_PREFIX", "RTC_IMAGE_TAG", "REDIS_IMAGE",
        "MONGO_IMAGE", "REDIS_MAXMEMORY", "MONGO_INITDB_ROOT_USERNAME",
        "MONGO_INITDB_ROOT_PASSWORD", "DIRECTORY_INIT_FLAGS", "DIRECTORY_INIT_WAIT_SECONDS",
        "SERVICE_MEM_LIMIT", "GATEWAY_MEM_LIMIT", "REDIS_MEM_LIMIT", "MONGO_MEM_LIMIT",
        "COTURN_MEM_LIMIT", "PROMETHEUS_MEM_LIMIT", "GRAFANA_MEM_LIMIT", "PROMETHEUS_IMAGE",
        "GRAFANA_IMAGE", "MONITORING_BIND", "PROMETHEUS_PORT", "GRAFANA_PORT",
        "PROMETHEUS_RETENTION", "GRAFANA_ADMIN_PASSWORD",
        # local stack, rtcctl
        "RTC_RUN_DIR", "RTC_GATEWAY_PORT", "RTC_REDIS_PORT", "RTC_TURN_PORT",
        "RTC_SIGNAL_INSTANCES", "MONITORING", "RTC_PROMETHEUS_PORT", "RTC_DOCTOR_TOKEN",
        "CHAOS_SECONDS",
    }
)  # fmt: skip
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
VARIABLE = re.compile(r"`([A-Z][A-Z0-9_]*)`")


# -- reading the docs ---------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## ` heading)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/reference.md has no '## {heading}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in `text`, as lists of cells."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|[-| :]+\|", line):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return [row for row in rows if row and row[0] not in ("Variable", "Code", "Route")]


def env_table() -> dict[str, str]:
    """Variable -> the "Read by" cell of its row in the environment table."""
    readers: dict[str, str] = {}
    for row in table_rows(section(REFERENCE.read_text(), "Environment variables")):
        assert len(row) == 4, f"an environment row needs 4 cells: {row}"
        names = VARIABLE.findall(row[0])
        assert names, f"a row without a `VARIABLE`: {row}"
        for name in names:
            assert name not in readers, f"{name} is in the table twice"
            readers[name] = row[2]
    return readers


# -- reading the code ---------------------------------------------------------------------------


def settings_modules() -> list[ModuleType]:
    names = ["ice_service.settings", "signal_service.settings", "relay_service.settings"]
    # rtc_common.settings and any other settings module of the common library (rtc_common.ice).
    names += [
        info.name
        for info in pkgutil.walk_packages(rtc_common.__path__, "rtc_common.")
        if "settings" in info.name.rpartition(".")[2]
    ]
    return [importlib.import_module(name) for name in names]


def settings_classes() -> set[type[CommonSettings]]:
    classes: set[type[CommonSettings]] = set(SERVICES.values())
    for module in settings_modules():
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, CommonSettings):
                classes.add(value)
    return classes


def variables_of(cls: type[CommonSettings]) -> set[str]:
    return {name.upper() for name in cls.model_fields}


# -- environment variables ------------------------------------------------------------------


def test_every_settings_field_is_in_the_env_table() -> None:
    documented = env_table()
    missing = {
        f"{name} ({cls.__module__}.{cls.__name__})"
        for cls in settings_classes()
        for name in variables_of(cls)
        if name not in documented
    }
    assert not missing, f"settings fields missing from docs/reference.md: {sorted(missing)}"


def test_every_env_table_variable_is_read_by_something() -> None:
    fields = set().union(*(variables_of(cls) for cls in settings_classes()))
    unknown = set(env_table()) - fields - NON_SERVICE_VARIABLES
    assert not unknown, (
        f"in docs/reference.md but neither a settings field nor a listed non-service variable:"
        f" {sorted(unknown)} (a removed variable, a typo, or add it to NON_SERVICE_VARIABLES)"
    )
    overlap = NON_SERVICE_VARIABLES & fields
    assert not overlap, f"settings fields listed as non-service variables: {sorted(overlap)}"


def test_env_table_names_the_services_that_read_each_variable() -> None:
    wrong = []
    for name, cell in env_table().items():
        said = set(re.findall(r"\b(ice|signal|relay)\b", cell))
        actual = {service for service, cls in SERVICES.items() if name in variables_of(cls)}
        if name in NON_SERVICE_VARIABLES:
            continue
        if said != actual:
            wrong.append(f"{name}: table says {sorted(said)}, code reads it in {sorted(actual)}")
    assert not wrong, "\n".join(wrong)


def test_every_env_example_variable_is_in_the_env_table() -> None:
    example = (REPO / "deploy" / "env.example").read_text()
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.M))
    assert names, "deploy/env.example lists no variable"
    missing = names - set(env_table())
    assert not missing, f"in deploy/env.example, not in docs/reference.md: {sorted(missing)}"


# -- routes and errors ----------------------------------------------------------------------


def openapi_operations() -> set[str]:
    operations: set[str] = set()
    for path in OPENAPI_FILES:
        document = json.loads(path.read_text())
        for route, item in document["paths"].items():
            operations.update(f"{m.upper()} {route}" for m in item if m in HTTP_METHODS)
    return operations


def test_every_openapi_route_is_documented() -> None:
    routes = section(REFERENCE.read_text(), "HTTP routes")
    operations = openapi_operations()
    assert len(operations) > 10
    missing = {op for op in operations if f"`{op}`" not in routes}
    assert not missing, f"OpenAPI operations missing from docs/reference.md: {sorted(missing)}"


def test_every_error_code_is_in_the_error_table() -> None:
    rows = table_rows(section(REFERENCE.read_text(), "Error codes"))
    statuses = {row[0].strip("`"): row[1] for row in rows if len(row) >= 2}
    problems = [
        f"{code}: {status}, table says {statuses.get(code)!r}"
        for code, status in STATUS_BY_CODE.items()
        if not statuses.get(code, "").startswith(str(status))
    ]
    assert not problems, "error codes of rtc_common.errors vs docs/reference.md:\n" + "\n".join(
        problems
    )


# -- links ----------------------------------------------------------------------------------


def doc_files() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    files += sorted((REPO / "clients").glob("*/README.md"))
    if (REPO / "CONTRIBUTING.md").exists():
        files.append(REPO / "CONTRIBUTING.md")
    return files


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file, plus explicit `<a id>`s."""
    found: set[str] = set(re.findall(r'<a id="([^"]+)"', path.read_text()))
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|href=\"([^\"]+)\"")


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text and "shared/spec" not in text, (
        f"{path.name} points at a file outside the repository"
    )
    problems = []
    for match in LINK.finditer(re.sub(r"```.*?```", "", text, flags=re.S)):
        target = match.group(1) or match.group(2)
        if re.match(r"(https?|mailto):", target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(REPO):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no such heading")
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_readme_keeps_the_test_command() -> None:
    # CI and newcomers read it from there.
    assert "make test" in (REPO / "README.md").read_text()
