"""kafka-python client settings for each kind of cluster, Event Hubs' Kafka endpoint, and the Entra ID token
provider that signs in to it."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from kafka.net.sasl.oauth import AbstractTokenProvider


class ResultStreamError(RuntimeError):
    pass


def eventhubs_namespace(connection_string: str) -> str:
    """``<namespace>.servicebus.windows.net`` from an Event Hubs connection string."""
    parts = dict(p.split("=", 1) for p in connection_string.strip().strip(";").split(";") if "=" in p)
    host = parts.get("Endpoint", "").removeprefix("sb://").strip("/")
    if not host:
        raise ResultStreamError("the Event Hubs connection string has no Endpoint=sb://<namespace>.servicebus.windows.net/")
    return host


def eventhubs_bootstrap(namespace: str) -> str:
    """The Kafka endpoint of a namespace (``<namespace>.servicebus.windows.net``)."""
    return f"{namespace}:9093"


class EventHubsTokenProvider(AbstractTokenProvider):
    """OAUTHBEARER tokens for Event Hubs' Kafka endpoint from an Azure credential (``DefaultAzureCredential``:
    workload identity on AKS). Kafka clients ask for the namespace itself as audience
    (``https://<namespace>.servicebus.windows.net/.default``), not ``https://eventhubs.azure.net``.

    One token serves every call (each connection and reconnection asks) until ``refresh_seconds`` before it
    expires. The provider owns the credential: ``close()`` closes it. The token is never logged nor in the repr."""

    def __init__(self, credential: Any, namespace: str, *, refresh_seconds: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.scope = f"https://{namespace}/.default"
        self._credential = credential
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()  # kafka-python connects from several threads
        self._access = None  # azure.core.credentials.AccessToken: token, expires_on (epoch seconds)

    def token(self) -> str:
        with self._lock:
            if self._access is None or self._access.expires_on - self._clock() <= self._refresh_seconds:
                self._access = self._credential.get_token(self.scope)
            return self._access.token

    def close(self) -> None:
        self._access = None
        self._credential.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r})"


def client_options(security: str = "plaintext", *, token_provider: AbstractTokenProvider | None = None,
                   eventhubs_connection_string: str | None = None,
                   username: str | None = None, password: str | None = None) -> dict:
    """kafka-python settings for each kind of cluster:
    - ``plaintext``: a plain Kafka cluster (Tansu locally and in tests);
    - ``eventhubs``: Azure Event Hubs' Kafka endpoint with Entra ID — SASL_SSL with the OAUTHBEARER mechanism
      and ``token_provider`` (an ``EventHubsTokenProvider``); no secret;
    - ``eventhubs_connection_string``: the same endpoint with a connection string (SASL PLAIN, user
      ``$ConnectionString``), for development namespaces only: the deployed namespace has local auth off;
    - ``sasl_ssl``: another managed Kafka with SASL/PLAIN user and password."""
    if security == "plaintext":
        return {"security_protocol": "PLAINTEXT"}
    if security == "eventhubs":
        if token_provider is None:
            raise ResultStreamError("IMGPIPE_KAFKA_SECURITY=eventhubs needs an Entra ID token provider")
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": token_provider}
    if security == "eventhubs_connection_string":
        if not eventhubs_connection_string:
            raise ResultStreamError("IMGPIPE_EVENTHUBS_CONNECTION_STRING is required for "
                                    "IMGPIPE_KAFKA_SECURITY=eventhubs_connection_string")
        username, password = "$ConnectionString", eventhubs_connection_string
    elif security != "sasl_ssl":
        raise ResultStreamError(f"unknown Kafka security {security!r} "
                                "(plaintext, eventhubs, eventhubs_connection_string, sasl_ssl)")
    if not (username and password):
        raise ResultStreamError("IMGPIPE_KAFKA_USERNAME and IMGPIPE_KAFKA_PASSWORD are required for sasl_ssl")
    return {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
            "sasl_plain_username": username, "sasl_plain_password": password}
