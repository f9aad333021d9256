"""Asset definitions (``assets.batch``) and the pure image-processing core (``assets.core``).

``assets.core`` imports nothing from Dagster; keep it that way (a test checks it)."""
