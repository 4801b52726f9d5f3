"""Fuzz the gateway with schemathesis from its own OpenAPI schema, against the fake engine:
>= 1,000 generated cases (valid and invalid bodies, headers, paths), no 5xx answer.

The schema is the gateway's own /openapi.json with one change: `model` and the admin routes'
path parameters draw from names that exist here (plus one that does not), so generated requests
get past the model lookup into the checks and the proxy. Admin routes run with the admin key.
It found two 500s, now 400s: `stream_options` not an object, a message `role` not a string."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from serving.gateway.auth import hash_key
from tests.conftest import GatewayThread, free_port
from tests.serving.test_gateway_faults import BASE, dirs, engine, gateway_app  # noqa: F401

EXPERIMENT = {"experiments": [{"name": "ab", "variants": {"bot@v1": 50, "other@v1": 50}}]}
MODELS = [BASE, "bot", "bot@v1", "other@v1", "third", "ab", "no-such-model"]


def served_schema(url: str) -> dict:
    schema = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"type": "string", "enum": MODELS}
    for ops in schema["paths"].values():
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] in ("name", "version"):
                    param["schema"] = {"type": "string", "enum": ["bot", "other", "ab", "nope", "v1", "v2"]}
    return schema


def test_no_5xx_from_generated_requests(dirs, tmp_path: Path) -> None:  # noqa: F811
    cfg = {**EXPERIMENT, "auth.admin_key_sha256": hash_key("adm"), "gateway.max_in_flight": 64}
    with (
        engine(ttft_ms=0, itl_ms=0, tokens=4) as e0,
        GatewayThread(gateway_app(dirs, [e0.url], **cfg), free_port()) as gw,
    ):
        (tmp_path / "openapi.json").write_text(json.dumps(served_schema(gw.url)))
        report = tmp_path / "report.ndjson"
        cmd = [sys.executable, "-m", "schemathesis.cli", "run", str(tmp_path / "openapi.json"), "--url", gw.url]
        cmd += ["--checks", "not_a_server_error", "--max-examples", "100", "--seed", "7", "--workers", "1"]
        cmd += ["-H", "Authorization: Bearer adm", "--report", "ndjson", "--report-ndjson-path", str(report)]
        cmd += ["--no-color", "--exclude-path", "/metrics", "--suppress-health-check", "all"]
        cmd += ["--phases", "examples,coverage,fuzzing"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert gw.state.pool.engines[0].healthy
    assert run.returncode == 0, run.stdout[-4000:]
    events = [json.loads(line) for line in report.read_text().splitlines()]
    cases = sum(len(e.get("ScenarioFinished", {}).get("recorder", {}).get("cases", {})) for e in events)
    assert cases >= 1000, f"only {cases} generated cases:\n{run.stdout[-2000:]}"
