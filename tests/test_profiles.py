"""Profiles and their start-up checks; Kafka client settings for each kind of cluster."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.procs import probe
from orchestration.adapters.kafka.connection import (ResultStreamError, client_options, eventhubs_bootstrap,
                                                      eventhubs_namespace)
from orchestration.settings import ConfigurationError, check_profile, load_settings


def test_local_profile_needs_nothing(tmp_path):
    assert check_profile(load_settings(data_dir=tmp_path)).profile == "local"


def test_azure_profile_names_every_missing_setting(tmp_path):
    with pytest.raises(ConfigurationError) as err:
        check_profile(load_settings(data_dir=tmp_path, profile="azure", kafka_security="eventhubs"))
    text = str(err.value)
    for name in ("IMGPIPE_STORAGE_CONNECTION_STRING", "IMGPIPE_COSMOS_ENDPOINT", "IMGPIPE_SERVICEBUS_CONNECTION_STRING",
                 "IMGPIPE_EVENTHUBS_NAMESPACE"):
        assert name in text


def test_azure_profile_complete_passes(tmp_path):
    s = load_settings(data_dir=tmp_path, profile="azure", storage_account_url="https://acct.blob.core.windows.net",
                      cosmos_endpoint="https://acct.documents.azure.com:443/", servicebus_namespace="ns.servicebus.windows.net")
    assert check_profile(s) is s


def test_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Input should be .local., .emulated. or .azure."):
        load_settings(data_dir=tmp_path, profile="cloudy")


def test_code_location_refuses_to_load_with_a_clear_message(tmp_path):
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "IMGPIPE_PROFILE": "azure"}
    proc = subprocess.run(probe("imports", "orchestration.definitions"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "IMGPIPE_COSMOS_ENDPOINT" in proc.stderr


def test_cli_fails_at_start_naming_the_setting(tmp_path):
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "IMGPIPE_PROFILE": "emulated"}
    env.pop("IMGPIPE_STORAGE_CONNECTION_STRING", None)
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "status", "b-20260101-000000-00000000"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "IMGPIPE_STORAGE_CONNECTION_STRING" in proc.stderr


def test_azure_profile_with_an_event_hubs_connection_string_needs_it(tmp_path):
    with pytest.raises(ConfigurationError, match="IMGPIPE_EVENTHUBS_CONNECTION_STRING"):
        check_profile(load_settings(data_dir=tmp_path, kafka_security="eventhubs_connection_string"))


def test_kafka_options_for_an_event_hubs_connection_string():
    """The development path (a namespace with local auth on); Entra ID: tests/test_eventhubs_entra.py."""
    conn = "Endpoint=sb://imgpipe-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc"
    assert eventhubs_bootstrap(eventhubs_namespace(conn)) == "imgpipe-ns.servicebus.windows.net:9093"
    opts = client_options("eventhubs_connection_string", eventhubs_connection_string=conn)
    assert opts == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                    "sasl_plain_username": "$ConnectionString", "sasl_plain_password": conn}
    assert client_options("plaintext") == {"security_protocol": "PLAINTEXT"}
    assert client_options("sasl_ssl", username="u", password="p")["sasl_plain_username"] == "u"
    with pytest.raises(ResultStreamError, match="EVENTHUBS"):
        client_options("eventhubs_connection_string")
    with pytest.raises(ResultStreamError):
        eventhubs_namespace("SharedAccessKey=abc")


def test_kafka_producer_accepts_the_event_hubs_settings():
    """kafka-python takes these settings as they are (no broker is contacted before bootstrap)."""
    from kafka import KafkaProducer

    conn = "Endpoint=sb://imgpipe-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc"
    with pytest.raises(Exception) as err:  # no network: it must fail on connecting, not on the settings
        KafkaProducer(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=1000,
                      **client_options("eventhubs_connection_string", eventhubs_connection_string=conn))
    assert "Unrecognized configs" not in str(err.value)
