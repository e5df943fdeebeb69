"""The server against OpenAPI documents: the Open Inference Protocol's, and its own.

* Real v2 answers validate against the schemas of the OIP REST document
  (``tests/schemas/oip/open_inference_rest.yaml``, unchanged from upstream).
* schemathesis fuzzes the server over that document and over the server's own
  ``/openapi.json``: no 5xx, every answer conforms to the schema it is declared with.
* ``/docs`` renders in a real headless Chromium from assets the process serves itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from predictor.config import Settings
from predictor.edge.docs_page import DocsPage
from predictor.edge.http_api import HttpApi, routes
from predictor.edge.routes import HttpRequest
from predictor.metrics import Metrics
from predictor.runtime.decode_pool import DecodePool
from predictor.serving.repository import Repository
from predictor.serving.state import ServingState
from tests.support import DIGITS, ROOT, PredictorProcess, digit_samples

OIP = ROOT / "tests" / "schemas" / "oip" / "open_inference_rest.yaml"
SCHEMATHESIS = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "st"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SAMPLES = digit_samples()


@pytest.fixture(scope="module")
def oip() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OIP.read_text())
    return document


def validate(oip: dict[str, Any], name: str, instance: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": oip["components"]}
    jsonschema.Draft7Validator(schema).validate(instance)
    assert "null" not in json.dumps(instance), f"{name}: a field without a value is null"


def b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_v2_answers_validate_against_the_oip_schemas(
    digits_server: PredictorProcess, oip: dict[str, Any]
) -> None:
    url = digits_server.url
    for path in ("/v2", "/v2/"):
        validate(oip, "metadata_server_response", httpx.get(f"{url}{path}").json())
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        validate(oip, "metadata_model_response", httpx.get(f"{url}{path}").json())
    bodies: list[dict[str, Any]] = [
        {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64(SAMPLES[1])]}
            ]
        },
        {
            "id": "req-7",
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [2],
                    "data": [b64(SAMPLES[2]), b64(SAMPLES[3])],
                }
            ],
            "outputs": [{"name": "scores"}, {"name": "labels"}],
            "parameters": {"top_k": 4},
        },
        {
            "inputs": [
                {
                    "name": "tensor",
                    "datatype": "FP32",
                    "shape": [1, 1, 32, 32],
                    "data": [0.0] * 1024,
                }
            ]
        },
    ]
    for path in ("/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"):
        for body in bodies:
            response = httpx.post(f"{url}{path}", json=body, timeout=30)
            assert response.status_code == 200, response.text
            validate(oip, "inference_response", response.json())
    bad = httpx.post(f"{url}/v2/models/digits/infer", json={"inputs": []}, timeout=30)
    assert bad.status_code == 400
    validate(oip, "inference_error_response", bad.json())
    missing = httpx.get(f"{url}/v2/models/nope", timeout=30)
    assert missing.status_code == 404
    validate(oip, "metadata_model_error_response", missing.json())


def _run_schemathesis(location: str, base_url: str, tmp_path: Path, examples: int) -> None:
    command = [
        str(SCHEMATHESIS),
        "run",
        location,
        "--url",
        base_url,
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        str(examples),
        "--seed",
        "1",
        "--generation-deterministic",
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_schemathesis_fuzzes_the_oip_document(
    digits_server: PredictorProcess, oip: dict[str, Any], tmp_path: Path
) -> None:
    """The OIP document, with its ``${NAME}`` path syntax written as OpenAPI's ``{NAME}``
    and the model name and version drawn from a served and an unknown one."""
    text = OIP.read_text().replace("${MODEL_NAME}", "{MODEL_NAME}")
    text = text.replace("${MODEL_VERSION}", "{MODEL_VERSION}")
    document = yaml.safe_load(text)
    for item in document["paths"].values():
        for parameter in item.get("parameters", []):
            if parameter["name"] == "MODEL_NAME":
                parameter["schema"] = {"type": "string", "enum": ["digits", "nope"]}
            if parameter["name"] == "MODEL_VERSION":
                parameter["schema"] = {"type": "string", "enum": ["1", "2"]}
    spec = tmp_path / "oip.yaml"
    spec.write_text(yaml.safe_dump(document))
    offset = len(digits_server.log())
    _run_schemathesis(str(spec), digits_server.url, tmp_path, examples=40)
    assert "Traceback" not in digits_server.log()[offset:]
    assert httpx.get(f"{digits_server.url}/v2/models/digits/ready").status_code == 200


def test_schemathesis_fuzzes_the_servers_own_document(
    digits_server: PredictorProcess, tmp_path: Path
) -> None:
    offset = len(digits_server.log())
    _run_schemathesis(f"{digits_server.url}/openapi.json", digits_server.url, tmp_path, examples=15)
    assert "Traceback" not in digits_server.log()[offset:]
    assert httpx.get(f"{digits_server.url}/v2/models/digits/ready").status_code == 200


def test_the_document_lists_every_route_and_each_one_answers(
    digits_server: PredictorProcess,
) -> None:
    document = httpx.get(f"{digits_server.url}/openapi.json").json()
    operations = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert ("POST", "/v1/models/{model}:predict") in operations
    assert ("POST", "/v2/models/{model}/versions/{version}/infer") in operations
    assert ("GET", "/v2/models/{model}/config") in operations
    assert not any("repository" in path for _, path in operations)  # model control is off
    predict = document["paths"]["/v1/models/{model}:predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "multipart/form-data", "application/json"} <= set(predict)
    infer = document["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/octet-stream"} <= set(infer)
    values = {"model": "digits", "version": "1", "asset": "swagger-ui.css"}
    for method, path in sorted(operations):
        if method != "GET":
            continue
        concrete = path.format(**values)
        response = httpx.get(f"{digits_server.url}{concrete}", timeout=30)
        assert response.status_code == 200, (path, response.text[:200])


def test_repository_routes_are_documented_when_served(tmp_path: Path) -> None:
    settings = Settings(model_dir=DIGITS, model_control="explicit")
    state = ServingState(models={}, metrics=Metrics(settings, registry=_registry()))
    pool = DecodePool(1)
    try:
        table = routes(HttpApi(settings, state, Repository(settings, state, pool)))
        page = DocsPage(table)
        import asyncio

        answer = asyncio.run(page.document(HttpRequest("GET", "/openapi.json", {}, {})))
    finally:
        pool.shutdown()
    document = json.loads(answer.body)
    assert "post" in document["paths"]["/v2/repository/models/{model}/load"]
    assert document["paths"]["/v2/repository/index"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/v2/health/ready"]["get"]
    import schemathesis

    schema = schemathesis.openapi.from_dict(document)
    assert len(list(schema.get_all_operations())) == sum(len(v) for v in document["paths"].values())


def _registry() -> Any:
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (make test installs it)")
def test_docs_page_renders_in_a_real_browser(
    digits_server: PredictorProcess, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{digits_server.url}/docs", wait_until="networkidle")
            predict = page.locator(".opblock-summary-path", has_text="/v1/models/{model}:predict")
            predict.first.wait_for(timeout=30_000)
            assert page.locator(".opblock-summary-path").count() >= 15
            assert "gpu-predictor" in page.locator(".title").first.inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            browser.close()
    assert requested, "the page made no requests"
    assert all(url.startswith(digits_server.url) for url in requested), requested
