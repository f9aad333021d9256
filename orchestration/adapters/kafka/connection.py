"""kafka-python client settings for each kind of cluster, and the Event Hubs connection string's endpoint."""

from __future__ import annotations


class ResultStreamError(RuntimeError):
    pass


def eventhubs_bootstrap(connection_string: str) -> str:
    """``<namespace>.servicebus.windows.net:9093`` from an Event Hubs connection string."""
    parts = dict(p.split("=", 1) for p in connection_string.strip().strip(";").split(";") if "=" in p)
    endpoint = parts.get("Endpoint", "")
    host = endpoint.removeprefix("sb://").strip("/")
    if not host:
        raise ResultStreamError("the Event Hubs connection string has no Endpoint=sb://<namespace>.servicebus.windows.net/")
    return f"{host}:9093"


def client_options(security: str = "plaintext", *, eventhubs_connection_string: str | None = None,
                   username: str | None = None, password: str | None = None) -> dict:
    """kafka-python settings for each kind of cluster:
    - ``plaintext``: a plain Kafka cluster (Tansu locally and in tests);
    - ``eventhubs``: Azure Event Hubs' Kafka endpoint — SASL_SSL with the PLAIN mechanism, user
      ``$ConnectionString`` and the namespace (or event hub) connection string as password;
    - ``sasl_ssl``: another managed Kafka with SASL/PLAIN user and password."""
    if security == "plaintext":
        return {"security_protocol": "PLAINTEXT"}
    if security == "eventhubs":
        if not eventhubs_connection_string:
            raise ResultStreamError("IMGPIPE_EVENTHUBS_CONNECTION_STRING is required for IMGPIPE_KAFKA_SECURITY=eventhubs")
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "$ConnectionString", "sasl_plain_password": eventhubs_connection_string}
    if security == "sasl_ssl":
        if not (username and password):
            raise ResultStreamError("IMGPIPE_KAFKA_USERNAME and IMGPIPE_KAFKA_PASSWORD are required for sasl_ssl")
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": username, "sasl_plain_password": password}
    raise ResultStreamError(f"unknown Kafka security {security!r} (plaintext, eventhubs, sasl_ssl)")


