"""Shared fixtures and markers. Servers are real: the Kafka broker (Tansu), Azurite and cosmosdb-server.
`.ci/run` starts them and exports their addresses (IMGPIPE_TEST_*); without those the session starts its own
and stops them by PID.

Markers (pyproject.toml): every test is exactly one of ``unit``, ``contract`` (tests/contracts/: a port's
rules, once per adapter), ``stack`` (starts `imgpipe dev`) or ``deploy`` (tests/test_deploy.py); a test that
needs Azurite, cosmosdb-server or a live Azure service is also ``azure``. `bash .ci/run --quick` runs
``(unit or contract) and not azure``."""

from __future__ import annotations

import os
import uuid

import pytest

from orchestration.devtools import kafka_broker
from orchestration.devtools import processes
from orchestration.devtools.dev_settings import load_dev_settings
from orchestration.settings import load_settings
from orchestration import wiring


AZURE_FIXTURES = {"azurite_connection_string", "cosmos_endpoint"}
AZURE_PARAMS = {"azurite", "adls-live", "cosmosdb-server", "servicebus-live", "azurite-queue", "emulated"}
KINDS = ("unit", "contract", "stack", "deploy")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.path.as_posix()
        if not any(item.get_closest_marker(kind) for kind in KINDS):
            if "/tests/contracts/" in path:
                item.add_marker(pytest.mark.contract)
            elif path.endswith("/tests/test_deploy.py"):
                item.add_marker(pytest.mark.deploy)
            else:
                item.add_marker(pytest.mark.unit)
        params = set(map(str, getattr(getattr(item, "callspec", None), "params", {}).values()))
        if AZURE_FIXTURES & set(item.fixturenames) or AZURE_PARAMS & params:
            item.add_marker(pytest.mark.azure)


def _server(env_var: str, start):
    """A server for the whole session: the one `.ci/run` started (its address in ``env_var``), or one
    started here by ``start()`` → (process, address) and stopped by PID at the end."""
    given = os.environ.get(env_var)
    if given:
        yield given
        return
    proc, address = start()
    try:
        yield address
    finally:
        processes.stop_process(proc)


def _emulator_tools():
    from orchestration.devtools.emulators import tools_installed

    tools = load_dev_settings().tools_dir
    if not tools_installed(tools):
        pytest.skip(f"Azurite / cosmosdb-server are not installed in {tools} (`bash .ci/run` installs them with npm)")
    return tools


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    def start():
        port = processes.free_port()
        return kafka_broker.start_broker(port, log_path=tmp_path_factory.mktemp("kafka") / "tansu.log"), f"127.0.0.1:{port}"

    yield from _server("IMGPIPE_TEST_KAFKA_BOOTSTRAP", start)


@pytest.fixture(scope="session")
def cosmos_endpoint(tmp_path_factory):
    """A real Cosmos DB API server: cosmosdb-server."""
    from orchestration.devtools.emulators import start_cosmos

    def start():
        port = processes.free_port()
        proc = start_cosmos(_emulator_tools(), port, log_path=tmp_path_factory.mktemp("cosmos") / "cosmos.log")
        return proc, f"https://127.0.0.1:{port}"

    yield from _server("IMGPIPE_TEST_COSMOS_ENDPOINT", start)


@pytest.fixture(scope="session")
def azurite_connection_string(tmp_path_factory):
    """Azurite Blob + Queue."""
    from orchestration.devtools.emulators import azurite_connection_string as conn, start_azurite

    def start():
        blob, queue = processes.free_port(), processes.free_port()
        proc = start_azurite(_emulator_tools(), blob, queue, log_path=tmp_path_factory.mktemp("azurite") / "azurite.log")
        return proc, conn(blob, queue)

    yield from _server("IMGPIPE_TEST_AZURITE_CONNECTION_STRING", start)


@pytest.fixture
def kafka_topic(kafka_bootstrap):
    from orchestration.adapters.kafka.admin import ensure_topic

    topic = f"test.{uuid.uuid4().hex[:10]}"
    ensure_topic(kafka_bootstrap, topic)
    return topic


@pytest.fixture
def settings(tmp_path, kafka_bootstrap, kafka_topic):
    return load_settings(data_dir=tmp_path / "data", kafka_bootstrap=kafka_bootstrap, kafka_topic=kafka_topic, workers=2)


@pytest.fixture
def offline_settings(tmp_path):
    """Settings for tests that never touch Kafka."""
    return load_settings(data_dir=tmp_path / "data", workers=2)


@pytest.fixture
def services(offline_settings):
    return wiring.services(offline_settings)
