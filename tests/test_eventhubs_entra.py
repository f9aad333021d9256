"""Event Hubs' Kafka endpoint with Entra ID (IMGPIPE_KAFKA_SECURITY=eventhubs): OAUTHBEARER tokens from the
process's one credential, for the namespace's audience, cached until near expiry; no secret anywhere."""

from __future__ import annotations

import azure.identity
import pytest
from azure.core.credentials import AccessToken
from kafka.net.sasl import get_sasl_mechanism

from orchestration import wiring
from orchestration.adapters.kafka.connection import EventHubsTokenProvider, ResultStreamError, client_options
from orchestration.settings import ConfigurationError, check_profile, load_settings

NAMESPACE = "imgpipe-eh-abc.servicebus.windows.net"
SCOPE = f"https://{NAMESPACE}/.default"  # Kafka clients: the namespace is the audience


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeCredential:
    """A TokenCredential handing out numbered tokens that expire ``lifetime`` seconds after they are issued."""

    def __init__(self, clock: Clock, lifetime: int = 3600) -> None:
        self.clock, self.lifetime = clock, lifetime
        self.scopes: list[tuple[str, ...]] = []
        self.closed = 0

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(f"token-{len(self.scopes)}", int(self.clock.now) + self.lifetime)

    def close(self) -> None:
        self.closed += 1


def _settings(tmp_path, **overrides):
    return load_settings(data_dir=tmp_path, profile="azure", storage_account_url="https://acct.blob.core.windows.net",
                         cosmos_endpoint="https://acct.documents.azure.com:443/",
                         servicebus_namespace="ns.servicebus.windows.net", **overrides)


def test_the_token_is_for_the_namespace_cached_and_refreshed_before_it_expires():
    clock = Clock()
    credential = FakeCredential(clock)
    provider = EventHubsTokenProvider(credential, NAMESPACE, refresh_seconds=300, clock=clock)
    assert [provider.token() for _ in range(3)] == ["token-1"] * 3  # every connection, one token
    assert credential.scopes == [(SCOPE,)]
    clock.now += 3600 - 301  # 301 s left: still good
    assert provider.token() == "token-1"
    clock.now += 1  # 300 s left: refreshed before it expires
    assert provider.token() == "token-2"
    assert provider.token() == "token-2" and credential.scopes == [(SCOPE,), (SCOPE,)]
    assert "token-2" not in repr(provider) and SCOPE in repr(provider)
    provider.close()
    assert credential.closed == 1


def test_kafka_signs_in_with_oauthbearer_and_the_providers_token_never_a_password():
    clock = Clock()
    provider = EventHubsTokenProvider(FakeCredential(clock), NAMESPACE, clock=clock)
    options = client_options("eventhubs", token_provider=provider, eventhubs_connection_string="Endpoint=sb://x/",
                             username="u", password="p")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
                       "sasl_oauth_token_provider": provider}
    # kafka-python's own OAUTHBEARER mechanism takes the provider and sends its token as the bearer.
    mechanism = get_sasl_mechanism(options["sasl_mechanism"])(**options)
    assert mechanism.auth_bytes() == b"n,,\x01auth=Bearer token-1\x01\x01"
    with pytest.raises(ResultStreamError, match="token provider"):
        client_options("eventhubs")


def test_kafka_producer_accepts_the_entra_settings():
    """kafka-python takes these settings as they are (no broker is contacted before bootstrap)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaTimeoutError

    clock = Clock()
    credential = FakeCredential(clock)
    options = client_options("eventhubs", token_provider=EventHubsTokenProvider(credential, NAMESPACE, clock=clock))
    with pytest.raises(KafkaTimeoutError):  # no network: it fails on connecting, not on the settings
        KafkaProducer(bootstrap_servers="127.0.0.1:1", bootstrap_timeout_ms=1000, **options)


def test_entra_mode_needs_the_namespace_and_no_secret(tmp_path):
    s = _settings(tmp_path, kafka_security="eventhubs", eventhubs_namespace=NAMESPACE)
    assert check_profile(s) is s
    assert not s.eventhubs_connection_string.get_secret_value() and not s.kafka_password.get_secret_value()
    with pytest.raises(ConfigurationError) as err:
        check_profile(_settings(tmp_path, kafka_security="eventhubs"))
    assert "IMGPIPE_EVENTHUBS_NAMESPACE" in str(err.value) and "CONNECTION_STRING" not in str(err.value)
    for wrong in (f"sb://{NAMESPACE}/", f"{NAMESPACE}:9093", f"https://{NAMESPACE}"):
        with pytest.raises(ValueError, match="eventhubs_namespace"):
            load_settings(data_dir=tmp_path, eventhubs_namespace=wrong)


def test_a_process_has_one_credential_and_token_closed_after_its_kafka_clients(tmp_path, monkeypatch):
    made: list[FakeCredential] = []
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential",
                        lambda: made.append(FakeCredential(Clock(), lifetime=10**10)) or made[-1])
    registry = wiring.Clients()
    monkeypatch.setattr(wiring, "CLIENTS", registry)
    s = _settings(tmp_path, kafka_security="eventhubs", eventhubs_namespace=NAMESPACE)

    assert wiring.kafka_bootstrap(s) == f"{NAMESPACE}:9093"
    results = registry.results(s)  # the producer connects on first publish
    follower_options = wiring.kafka_options(s)  # what build_reader and build_user_follower hand their consumers
    provider = follower_options["sasl_oauth_token_provider"]
    assert results._options["sasl_oauth_token_provider"] is provider and len(made) == 1
    assert [provider.token(), wiring.kafka_options(s)["sasl_oauth_token_provider"].token()] == ["token-1"] * 2
    assert made[0].scopes == [(SCOPE,)]
    closed = []
    monkeypatch.setattr(results, "close", lambda: closed.append("results"))
    monkeypatch.setattr(made[0], "close", lambda: closed.append("credential"))
    registry.close_all()
    assert closed == ["results", "credential"]  # the producer first, then the credential it signs in with
