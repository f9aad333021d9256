"""The Dagster webserver's GraphQL API: the public interface the Dagster UI itself uses, for the few things
product code asks of Dagster outside a run or sensor context — submitting a backfill (`imgpipe reprocess`)
and terminating the runs of a deleted batch (the deletion sensor). Plain HTTP; no Dagster import.

Its address is ``IMGPIPE_DAGSTER_UI_URL`` (the local stack sets it to its own webserver; on AKS it is the
webserver's in-cluster service, reached from the code server under a network policy)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class WebserverError(Exception):
    """The webserver did not answer, or refused the request (the message says which and why)."""


def graphql(base_url: str, query: str, variables: dict, *, timeout: float = 60.0) -> dict:
    """One request to ``<base_url>/graphql``; returns its ``data``."""
    base = base_url.rstrip("/")
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        raise WebserverError(f"the Dagster webserver at {base} did not answer ({type(exc).__name__}: {exc}); is "
                             "the stack running (imgpipe dev), or IMGPIPE_DAGSTER_UI_URL set?") from None
    if body.get("errors"):
        raise WebserverError(f"the Dagster webserver refused the request: {body['errors'][0].get('message')}")
    return body["data"]


TERMINATE_RUNS = """
mutation ($runIds: [String!]!) {
  terminateRuns(runIds: $runIds) {
    __typename
    ... on TerminateRunsResult {
      terminateRunResults {
        __typename
        ... on TerminateRunSuccess { run { runId } }
        ... on TerminateRunFailure { message }
        ... on RunNotFoundError { message }
        ... on UnauthorizedError { message }
        ... on PythonError { message }
      }
    }
    ... on PythonError { message }
  }
}"""


def terminate_runs(base_url: str, run_ids: list[str], *, timeout: float = 30.0) -> dict[str, str]:
    """Ask Dagster to terminate runs (a queued run is cancelled, a started one stopped by its run
    launcher, as the UI's Terminate button does). Returns run id → "" when accepted, else the reason."""
    if not run_ids:
        return {}
    result = graphql(base_url, TERMINATE_RUNS, {"runIds": list(run_ids)}, timeout=timeout)["terminateRuns"]
    if result["__typename"] != "TerminateRunsResult":
        raise WebserverError(f"terminating runs failed: {result.get('message', result['__typename'])}")
    return {run_id: ("" if r["__typename"] == "TerminateRunSuccess" else r.get("message") or r["__typename"])
            for run_id, r in zip(run_ids, result["terminateRunResults"])}
