"""429 handling of the Cosmos DB adapter: a proxy in front of cosmosdb-server answers the first writes
with "429 Request rate is large" and an ``x-ms-retry-after-ms`` header, as Cosmos DB does when a
container runs out of request units. The adapter must wait as told and succeed, not fail the batch."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
import urllib.request
import uuid

import pytest

from orchestration.adapters.azure.cosmos import CosmosMetadataStore
from orchestration.devtools.emulators import COSMOS_DEV_KEY
from orchestration.devtools.processes import free_port


class ThrottlingProxy(http.server.ThreadingHTTPServer):
    def __init__(self, upstream: str, throttle: int, retry_after_ms: int):
        self.upstream, self.remaining, self.retry_after_ms = upstream, throttle, retry_after_ms
        self.throttled_at: list[float] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _forward(self):
        server: ThrottlingProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with server.lock:
            throttle = self.command in ("POST", "PUT") and "/docs" in self.path and server.remaining > 0
            if throttle:
                server.remaining -= 1
                server.throttled_at.append(time.monotonic())
        if throttle:
            payload = b'{"code":"429","message":"Request rate is large"}'
            self.send_response(429)
            self.send_header("x-ms-retry-after-ms", str(server.retry_after_ms))
            self.send_header("x-ms-substatus", "3200")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        req = urllib.request.Request(server.upstream + self.path, data=body or None, method=self.command, headers=headers)
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test server's self-signed certificate
        try:
            with urllib.request.urlopen(req, context=ctx) as resp:
                status, data, out_headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as err:
            status, data, out_headers = err.code, err.read(), err.headers
        self.send_response(status)
        for k, v in out_headers.items():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _forward


@pytest.fixture
def proxy(cosmos_endpoint):
    server = ThrottlingProxy(cosmos_endpoint, throttle=0, retry_after_ms=300)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_throttled_writes_wait_for_retry_after_and_succeed(proxy):
    store = CosmosMetadataStore(f"http://127.0.0.1:{proxy.server_address[1]}", COSMOS_DEV_KEY,
                                database=f"t{uuid.uuid4().hex[:12]}",
                                enable_endpoint_discovery=False)  # keep talking through the proxy
    proxy.remaining = 2  # the next two document writes are throttled
    started = time.monotonic()
    stored = store.upsert("batches", {"id": "b1", "user_id": "alice", "status": "received"})
    elapsed = time.monotonic() - started
    assert stored["status"] == "received" and proxy.remaining == 0
    assert len(proxy.throttled_at) == 2
    assert proxy.throttled_at[1] - proxy.throttled_at[0] >= 0.28  # waited as the server said
    assert elapsed >= 0.56
    assert [d["id"] for d in store.query("batches", partition_key="alice")] == ["b1"]


def test_throttling_beyond_the_retry_budget_is_an_error_not_a_hang(proxy):
    store = CosmosMetadataStore(f"http://127.0.0.1:{proxy.server_address[1]}", COSMOS_DEV_KEY,
                                database=f"t{uuid.uuid4().hex[:12]}", throttle_retries=2,
                                enable_endpoint_discovery=False)
    proxy.remaining = 100
    from azure.cosmos.exceptions import CosmosHttpResponseError

    with pytest.raises(CosmosHttpResponseError) as err:
        store.upsert("batches", {"id": "b1", "user_id": "alice"})
    assert err.value.status_code == 429
    assert len(proxy.throttled_at) == 3  # the first try and two retries
