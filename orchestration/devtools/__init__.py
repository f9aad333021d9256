"""Developer tooling, never used in production: the local stack of `imgpipe dev` (``devstack``), the web
app + local OIDC provider it starts (``webstack``), the Kafka broker (Tansu) and the Azure emulators
(Azurite, cosmosdb-server) it runs, and the sample batch."""
