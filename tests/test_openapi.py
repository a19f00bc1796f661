"""The OpenAPI document lists every status each operation can answer; /docs works offline."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from quart.typing import TestClientProtocol as Client

READ = {401, 429, 503}
WRITE = {400, 401, 409, 413, 415, 422, 429, 503}
EXPECTED: dict[tuple[str, str], set[int]] = {
    ("get", "/healthz"): {200},
    ("get", "/readyz"): {200, 503},
    ("post", "/users"): {201, 400, 409, 413, 415, 422, 429, 503},
    ("get", "/users/me"): {200, *READ},
    ("post", "/tokens"): {201, *WRITE},
    ("get", "/tokens"): {200, 422, *READ},
    ("delete", "/tokens/{token_id}"): {204, 404, *READ},
    ("post", "/accounts"): {201, *WRITE},
    ("get", "/accounts"): {200, 422, *READ},
    ("get", "/accounts/{account_id}"): {200, 404, *READ},
    ("post", "/accounts/{account_id}/deposits"): {201, 404, *WRITE},
    ("post", "/accounts/{account_id}/withdrawals"): {201, 404, *WRITE},
    ("get", "/accounts/{account_id}/entries"): {200, 404, 422, *READ},
    ("post", "/transfers"): {201, 404, *WRITE},
    ("post", "/accounts/{account_id}/statements"): {202, 404, *WRITE},
    ("get", "/statements/{statement_id}"): {200, 404, *READ},
}


async def _spec(client: Client) -> dict[str, Any]:
    spec: dict[str, Any] = await (await client.get("/openapi.json")).get_json()
    return spec


async def test_every_operation_documents_every_status_it_can_answer(
    service_client: Client,
) -> None:
    spec = await _spec(service_client)
    documented = {
        (method, path): {int(status) for status in operation["responses"]}
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }
    # The test app adds the layer's own test routes; the service's operations are these.
    service = {key: statuses for key, statuses in documented.items() if key in EXPECTED}
    assert service == EXPECTED
    assert not [
        key
        for key in documented
        if key[1].startswith(("/users", "/tokens", "/accounts")) and key not in EXPECTED
    ]


async def test_every_error_status_is_documented_with_the_one_error_schema(
    service_client: Client,
) -> None:
    spec = await _spec(service_client)
    for method, path in EXPECTED:
        for status, response in spec["paths"][path][method]["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
            assert response["description"]  # "Too Many Requests", ...
    error = spec["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error"]
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}


async def test_every_body_is_a_shared_schema_defined_once_and_referenced(
    service_client: Client,
) -> None:
    spec = await _spec(service_client)
    schemas = spec["components"]["schemas"]
    bodies = [
        media["schema"]
        for method, path in EXPECTED
        for part in (
            [spec["paths"][path][method].get("requestBody", {"content": {}})]
            + list(spec["paths"][path][method]["responses"].values())
        )
        for media in part.get("content", {}).values()
    ]
    assert len(bodies) > len(EXPECTED)
    for body in bodies:
        assert set(body) == {"$ref"}, body  # nothing inlined: one model per shape in a client
        assert body["$ref"].removeprefix("#/components/schemas/") in schemas
    for name in ("NewTransfer", "TransferOut", "EntryOut", "AccountOut", "StatementOut"):
        assert schemas[name]["title"] == name


OPERATIONS = {
    ("post", "/users"): ("create_user", "Users"),
    ("get", "/users/me"): ("get_current_user", "Users"),
    ("post", "/tokens"): ("create_token", "Tokens"),
    ("get", "/tokens"): ("list_tokens", "Tokens"),
    ("delete", "/tokens/{token_id}"): ("revoke_token", "Tokens"),
    ("post", "/accounts"): ("create_account", "Accounts"),
    ("get", "/accounts"): ("list_accounts", "Accounts"),
    ("get", "/accounts/{account_id}"): ("get_account", "Accounts"),
    ("post", "/accounts/{account_id}/deposits"): ("create_deposit", "Movements"),
    ("post", "/accounts/{account_id}/withdrawals"): ("create_withdrawal", "Movements"),
    ("get", "/accounts/{account_id}/entries"): ("list_entries", "Movements"),
    ("post", "/transfers"): ("create_transfer", "Movements"),
    ("post", "/accounts/{account_id}/statements"): ("create_statement", "Statements"),
    ("get", "/statements/{statement_id}"): ("get_statement", "Statements"),
    ("get", "/healthz"): ("check_health", "Health"),
    ("get", "/readyz"): ("check_readiness", "Health"),
}


async def test_every_operation_has_a_verb_for_its_id_a_tag_and_a_summary(
    service_client: Client,
) -> None:
    spec = await _spec(service_client)
    assert set(OPERATIONS) == set(EXPECTED)
    found = {
        (method, path): (operation["operationId"], operation["tags"])
        for method, path in OPERATIONS
        for operation in [spec["paths"][path][method]]
    }
    assert found == {key: (verb, [tag]) for key, (verb, tag) in OPERATIONS.items()}
    for method, path in OPERATIONS:
        summary = spec["paths"][path][method]["summary"]
        assert summary and "\n" not in summary and "`" not in summary, (method, path)
    tags = [tag["name"] for tag in spec["tags"]]
    assert tags == ["Users", "Tokens", "Accounts", "Movements", "Statements", "Health"]
    assert all(tag["description"] for tag in spec["tags"])


async def test_descriptions_are_markdown_not_restructuredtext(service_client: Client) -> None:
    text = await (await service_client.get("/openapi.json")).get_data(as_text=True)
    assert "``" not in text
    spec = await _spec(service_client)
    statement = spec["paths"]["/statements/{statement_id}"]["get"]
    assert "`pending`" in statement["description"]
    transfer = spec["paths"]["/transfers"]["post"]
    assert transfer["description"].startswith("Both accounts must be in the same currency.")


async def test_healthz_and_readyz_document_their_bodies(service_client: Client) -> None:
    spec = await _spec(service_client)
    for path, value in (("/healthz", "ok"), ("/readyz", "ready")):
        operation = spec["paths"][path]["get"]
        reference = operation["responses"]["200"]["content"]["application/json"]["schema"]
        schema = spec["components"]["schemas"][reference["$ref"].rsplit("/", 1)[1]]
        assert schema["properties"]["status"]["default"] == value
        assert operation["security"] == []
        assert (await (await service_client.get(path)).get_json()) == {"status": value}


async def test_a_revocation_is_documented_without_a_body(service_client: Client) -> None:
    spec = await _spec(service_client)
    assert "content" not in spec["paths"]["/tokens/{token_id}"]["delete"]["responses"]["204"]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.doctype: str | None = None
        self.urls: list[str] = []
        self.open: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]
        if tag not in ("meta", "link"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open.pop() == tag, f"</{tag}> closes another element"


async def test_the_docs_page_is_html_with_a_doctype_and_every_asset_served_by_the_app(
    service_client: Client,
) -> None:
    response = await service_client.get("/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    text = await response.get_data(as_text=True)
    page = _Page()
    page.feed(text)
    assert page.doctype == "DOCTYPE html" and page.open == []
    assert re.search(r'<html lang="en">', text) and "<title>" in text
    assert page.urls and all(url.startswith("/docs/") for url in page.urls)  # nothing from a CDN
    for url in page.urls:
        asset = await service_client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    script = await service_client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.mimetype == "text/javascript" and len(await script.get_data()) > 500_000
    assert "max-age" in script.headers["Cache-Control"]  # assets may be cached; answers not
    assert (await service_client.get("/docs/assets/../../config.py")).status_code == 404
    assert (await service_client.get("/docs/assets/index.html")).status_code == 404


async def test_a_documented_name_pattern_means_the_same_in_every_regex_engine(
    service_client: Client,
) -> None:
    """`\\s` is U+0085 to pydantic's engine and U+FEFF to JSON Schema's: spelt out instead, so a
    name the document allows is a name the service accepts (schemathesis found one that was not).
    """
    spec = await _spec(service_client)
    pattern = spec["components"]["schemas"]["NewUser"]["properties"]["name"]["pattern"]
    assert "\\s" not in pattern
    for name, accepted in (("Ada\u0085", False), ("\ufeffAda", False), ("A\u0085da", True)):
        assert (re.fullmatch(pattern, name) is not None) is accepted, repr(name)
        response = await service_client.post(
            "/users", json={"name": name, "email": f"u{len(name)}{accepted}@example.com"}
        )
        assert (response.status_code == 201) is accepted, (repr(name), response.status_code)
