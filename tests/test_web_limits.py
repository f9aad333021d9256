"""The web app's server limits are the same in every launcher — `imgpipe dev`, the AKS manifest, the image
test — and a real Streamlit server started with them refuses an oversized upload before the app sees it.
In production nothing reaches the app unsigned-in: its ingress asks oauth2-proxy first (what only a cluster
proves: that nginx enforces it; here, that the manifest says so)."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from orchestration.devtools import webstack
from orchestration.devtools.processes import free_port
from orchestration.devtools.dev_settings import load_dev_settings
from orchestration.settings import load_settings, web_server_options

ROOT = Path(__file__).resolve().parents[1]
HOST_SPECIFIC = ("server.port", "server.address", "server.fileWatcherType", "secrets.files")


def _options(args: list[str]) -> dict[str, str]:
    found = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            found[key] = value
    return found


def manifest_web_args() -> list[str]:
    """The web container's arguments in deploy/k8s/webapp.yaml (the image test starts the image with them)."""
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/webapp.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_every_launcher_sets_the_same_web_server_options(tmp_path):
    expected = web_server_options(load_settings(data_dir=tmp_path))
    assert expected["server.maxUploadSize"] == "50"  # IMGPIPE_MAX_FILE_BYTES' default, in MB
    assert expected["client.showErrorDetails"] == "none" and expected["client.toolbarMode"] == "viewer"
    manifest = {k: v for k, v in _options(manifest_web_args()).items() if k not in HOST_SPECIFIC}
    assert manifest == expected
    dev = _options(webstack.web_command(load_dev_settings(data_dir=tmp_path, max_file_bytes=3 * 1024 * 1024 + 1),
                                        tmp_path / "secrets.toml"))
    assert {k: v for k, v in dev.items() if k not in HOST_SPECIFIC} == {**expected, "server.maxUploadSize": "4"}


def test_the_ingress_signs_people_in_first_and_limits_each_request_to_one_file():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/webapp.yaml").read_text()) if d]
    annotations = next(d for d in docs if d["kind"] == "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].startswith("http://oauth2-proxy.")
    assert "/oauth2/start" in annotations["nginx.ingress.kubernetes.io/auth-signin"]
    body_mb = int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"].rstrip("m"))
    per_file = int(_options(manifest_web_args())["server.maxUploadSize"])
    assert per_file <= body_mb <= per_file + 2
    proxy = yaml.safe_load((ROOT / "deploy/helm/oauth2-proxy-values.yaml").read_text())
    assert "<webHost>" in proxy["ingress"]["hosts"] and "allowed_groups" not in proxy["config"]["configFile"]
    dagster = yaml.safe_load((ROOT / "deploy/helm/values.yaml").read_text())["ingress"]
    assert "allowed_groups=" in dagster["annotations"]["nginx.ingress.kubernetes.io/auth-url"]  # operators only


@pytest.fixture
def streamlit_server(tmp_path):
    """The web app as `imgpipe dev` starts it, with a 1 MB per-file limit."""
    settings = load_dev_settings(data_dir=tmp_path, max_file_bytes=1024 * 1024, web_port=free_port())
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("")
    proc = subprocess.Popen(webstack.web_command(settings, secrets), cwd=webstack.app_path().parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", settings.web_port, timeout=2)
                conn.request("GET", "/_stcore/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the web app did not start")
        yield settings.web_port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextlib.contextmanager
def _session(port: int):
    """A Streamlit session as any browser opens one, signed in or not: (session id, XSRF cookie), open
    while the block runs."""
    import websocket
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/_stcore/health")  # (Streamlit sets its XSRF cookie here)
    response = conn.getresponse()
    response.read()
    cookie = next(v.split(";")[0] for k, v in response.getheaders() if k.lower() == "set-cookie" and "xsrf" in v)
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/_stcore/stream", timeout=20, cookie=cookie,
                                     subprotocols=["streamlit", cookie.split("=", 1)[1]])
    try:
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send_binary(rerun.SerializeToString())
        for _ in range(100):
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv())
            if msg.WhichOneof("type") == "new_session":
                break
        else:
            raise AssertionError("no session")
        yield msg.new_session.initialize.session_id, cookie
    finally:
        ws.close()


def test_an_oversized_upload_to_an_anonymous_session_is_refused_by_the_server(streamlit_server):
    statuses = {}
    with _session(streamlit_server) as (session, cookie):
        for size in (100, 2 * 1024 * 1024):  # under and over the 1 MB limit
            conn = http.client.HTTPConnection("127.0.0.1", streamlit_server, timeout=10)
            try:
                conn.request("PUT", f"/_stcore/upload_file/{session}/f{size}", body=b"x" * size,
                             headers={"Content-Type": "application/octet-stream", "Cookie": cookie,
                                      "X-Xsrftoken": cookie.split("=", 1)[1]})
                statuses[size] = conn.getresponse().status
            finally:
                conn.close()
    # The small one reaches Streamlit's form parsing (400: not a multipart form); the large one is refused
    # on its declared length, before a byte of it is read.
    assert statuses == {100: 400, 2 * 1024 * 1024: 413}
