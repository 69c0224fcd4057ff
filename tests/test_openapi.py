"""Every error response of every endpoint is declared, as application/problem+json."""

from __future__ import annotations


async def test_every_error_is_declared_with_the_problem_model(client):
    schema = (await client.get("/openapi.json")).json()
    assert "Problem" in schema["components"]["schemas"]
    problem_props = schema["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "code", "requestId", "errors"} <= set(
        problem_props
    )
    operations = [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items()]
    assert operations
    for path, method, operation in operations:
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert errors, f"{method} {path} declares no error"
        for status, response in errors.items():
            assert list(response["content"]) == ["application/problem+json"], (path, status)
            ref = response["content"]["application/problem+json"]["schema"]["$ref"]
            assert ref.endswith("/Problem")


async def test_send_declares_every_row_of_the_table(client):
    schema = (await client.get("/openapi.json")).json()
    responses = schema["paths"]["/api/mms/send"]["post"]["responses"]
    assert {"200", "400", "413", "422", "500", "502", "503", "504"} <= set(responses)
    codes = set()
    for response in responses.values():
        for example in (
            response.get("content", {}).get("application/problem+json", {}).get("examples", {})
        ):
            codes.add(example)
    assert {
        "validation_error",
        "payload_too_large",
        "plivo_rejected",
        "upstream_auth_failed",
        "upstream_error",
        "upstream_rate_limited",
        "upstream_unavailable",
        "upstream_timeout",
    } <= codes


async def test_send_declares_its_body_key_header_and_security(client):
    """Derived from the route's dependencies and models, though the body is read by hand."""
    schema = (await client.get("/openapi.json")).json()
    send = schema["paths"]["/api/mms/send"]["post"]
    body = send["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SendRequest"}
    assert {"to", "media_urls", "text"} <= set(
        schema["components"]["schemas"]["SendRequest"]["properties"]
    )
    assert [p["name"] for p in send["parameters"]] == ["Idempotency-Key", "Prefer"]
    assert send["security"] == [{"bearer": []}, {"apiKey": []}]
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {
        **schemes["apiKey"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    for path, method in (("/api/mms", "get"), ("/api/mms/{messageUuid}", "get")):
        assert schema["paths"][path][method]["security"] == send["security"]
    callback = schema["paths"]["/api/mms/status"]["post"]["requestBody"]["content"]
    form = callback["application/x-www-form-urlencoded"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert schema["components"]["schemas"][form]["required"] == ["MessageUUID", "Status"]
