"""The tests' one door to Dagster internals (white-box helpers with no public equivalent): runs made by hand
in a test instance, the run queue daemon, and what the K8s run launcher is given. Product code never uses
these (tests/test_dagster_tuning.py checks it)."""

from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.events import EngineEventData
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon


def step_handler_context(job_def, dagster_run, instance, step_key: str, batch_api, *, dynamic_mappings=None):
    """(the k8s_job_executor's step handler, the context it launches ``step_key`` of ``dagster_run`` with), as
    the step-delegating executor builds them (after dagster-k8s's own unit tests); the handler's Kubernetes
    batch API is ``batch_api`` (it records the Job instead of creating it)."""
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.execution.plan.state import KnownExecutionState
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating import StepHandlerContext
    from dagster._grpc.types import ExecuteStepArgs
    from dagster_k8s.client import DagsterKubernetesClient

    from dagster._config import process_config
    from dagster._core.definitions.job_base import InMemoryJob

    executor_def, job = job_def.executor_def, InMemoryJob(job_def)
    schema = executor_def.config_schema  # (the executor is configured: its mapping, then the parent's defaults)
    mapped = schema.resolve_config({})
    processed = process_config(schema.parent_def.config_schema.config_type, mapped.value["config"])
    assert mapped.success and processed.success, (mapped.errors, processed.errors)
    executor = executor_def.executor_creation_fn(InitExecutorContext(
        job=job, executor_def=executor_def, executor_config=processed.value, instance=instance))
    handler = executor._step_handler
    handler._api_client = DagsterKubernetesClient.production_client(batch_api_override=batch_api)
    known = KnownExecutionState(dynamic_mappings=dynamic_mappings or {})
    plan = create_execution_plan(job_def, known_state=known, tags=dagster_run.tags)
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=job, dagster_run=dagster_run, instance=instance, execution_plan=plan,
                           raise_on_error=True, retry_mode=RetryMode.DISABLED),
        log_manager=create_context_free_log_manager(instance, dagster_run), executor=executor,
        output_capture=None)
    args = ExecuteStepArgs(dagster_run.job_code_origin, dagster_run.run_id, [step_key],
                           known_state=known, print_serialized_events=False)
    return handler, StepHandlerContext(instance=instance, plan_context=plan_context, steps=plan.steps,
                                       execute_step_args=args, dagster_run=dagster_run)

__all__ = ["ModuleCodePointer", "EngineEventData", "LaunchRunContext", "JobPythonOrigin", "RepositoryPythonOrigin",
           "RegisteredCodeLocationOrigin", "RemoteJobOrigin", "RemoteRepositoryOrigin", "create_run_for_test",
           "QueuedRunCoordinatorDaemon", "step_handler_context"]
