"""Schemathesis against each HTTP service's own OpenAPI document, through the real gateway.

The documents are loaded from where the gateway serves them; every operation the gateway routes
(`/api/...`) is called with generated requests (valid and invalid ones) carrying a valid Bearer
token: no 5xx, and every answer (status, content type, headers, body) conforms to the document.
Example counts are modest so that the module runs in seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from rtc_gateway import GatewayLimits
from rtc_testkit.contract import make_token
from rtc_testkit.processes import Gateway
from rtc_testkit.stack import StackSpec, start_stack
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = 25  # per operation
A, B = "0xa11ce5c4e3a", "0xb0b5c4e3a"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # The services are under test here, not the gateway's per-address limits.
    spec = StackSpec(
        ice=1,
        relay=1,
        env={"ALLOWED_ORIGINS": "http://app.example"},
        contacts=((A, B),),
        gateway_limits=GatewayLimits.off(),
    )
    with start_stack(spec, tmp_path_factory.mktemp("schemathesis")) as stack:
        yield stack.gateway


def operations(gateway: Gateway, document: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(gateway.url + document)
    found: list[Any] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # Err: a broken operation in the document
        found.append(result.ok())
    # /healthz, /readyz, /metrics are the services' own ports: the gateway does not route them.
    return [op for op in found if op.path.startswith("/api/")]


@pytest.mark.parametrize(
    "document", ["/api/v1/rtc/openapi.json", "/api/v1/relay/openapi.json"], ids=["ice", "relay"]
)
def test_service_conforms_to_its_openapi_document(gateway: Gateway, document: str) -> None:
    ops = operations(gateway, document)
    assert len(ops) >= 4, [op.label for op in ops]
    seen: dict[str, set[int]] = {}
    for operation in ops:
        run_operation(gateway, document, operation, seen.setdefault(operation.label, set()))
    # The runs were not all refusals: some requests got through to the handlers.
    assert any(code < 300 for codes in seen.values() for code in codes), seen


def run_operation(gateway: Gateway, document: str, operation: Any, statuses: set[int]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case: Any) -> None:
        # A wallet per call: ICE's per-wallet limit (10 a minute) must not turn every answer
        # into a 429; the relay sender is a contact of B so enqueue can get past its checks.
        wallet = A if "relay" in document else "0x" + uuid.uuid4().hex[:12]
        headers = {"Authorization": f"Bearer {make_token(wallet)}"}
        response = case.call(base_url=gateway.url, headers=headers)
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        # Enqueue has rules JSON Schema cannot state (convId is the canonical pair of the sender
        # and `to`, `to` is a mutual contact and not the sender): a schema-valid body may be a
        # 400 or 403 by design, so only there "schema-valid data is accepted" is not checked.
        excluded = [positive_data_acceptance] if case.path.endswith("/enqueue") else []
        case.validate_response(response, headers=headers, excluded_checks=excluded)

    check()
