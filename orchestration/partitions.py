"""The batches partitions definition: one dynamic partition per batch (the partition key is the batch id).

Its own module so that sensors (which add partitions) and assets (which are partitioned by it) share it
without importing each other."""

from dagster import DynamicPartitionsDefinition

batches_partitions = DynamicPartitionsDefinition(name="batches")

# The tag `imgpipe reprocess` puts on its backfill (so on each of its runs, and their retries inherit it):
# such a run redoes its batch instead of taking over what earlier runs finished (assets.batch.renditions).
REPROCESS_TAG = "imgpipe/reprocess"
