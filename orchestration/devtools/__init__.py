"""Developer tooling, never used in production: the local stack of `imgpipe dev` — ``stack`` (what starts, in
order), ``supervisor`` (restarts, stopping), ``banner`` (what it prints), ``dagster_home`` (the local Dagster
instance), ``dagster_tuning`` (the one module touching Dagster internals), ``dev_settings``, ``processes``,
``webstack`` (web app + local OIDC provider), ``kafka_broker`` (Tansu), ``emulators`` (Azurite,
cosmosdb-server), ``image_workers`` and ``sample``."""
