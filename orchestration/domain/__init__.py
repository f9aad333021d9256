"""Business steps of a batch, without Dagster and without any particular adapter: the manifest (the claim
check a batch travels as), intake (where a batch enters: checks, raw files into the lake, manifest onto
the queue) and status (what a user or operator is told). They work on the ports bundled in
``Services``; ``orchestration.wiring`` picks the adapters."""
