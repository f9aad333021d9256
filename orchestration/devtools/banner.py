"""What `imgpipe dev` prints: its log lines, the sample batch's events as they arrive, and where to look once the
stack is ready."""

from __future__ import annotations

import os
import sys

from orchestration.devtools.dev_settings import DevSettings
from orchestration.wiring import build_reader


def log(msg: str) -> None:
    try:
        print(f"[imgpipe dev] {msg}", flush=True)
    except OSError:
        # Nobody reads this output any more (the terminal was closed, the program reading the pipe died).
        # The stack must still stop its children, so a line that cannot be written is dropped, and so is
        # every later one.
        sys.stdout = open(os.devnull, "w")


def imgpipe_command() -> str:
    """How to run `imgpipe` from this shell: its name when it is on PATH, else its path (the README's install
    puts it in .venv/bin, which is not on PATH until the venv is activated)."""
    import shutil
    from pathlib import Path

    found, beside = shutil.which("imgpipe"), Path(sys.executable).parent / "imgpipe"
    if found and (not beside.exists() or Path(found).resolve() == beside.resolve()):
        return "imgpipe"
    if beside.exists():
        try:
            return str(beside.relative_to(Path.cwd()))
        except ValueError:
            return str(beside)
    return f"{sys.executable} -m orchestration.cli"


def follow_batch(settings: DevSettings, batch_id: str, total: int, timeout_seconds: float = 120.0) -> dict | None:
    """Print each of the batch's events as it arrives on Kafka; returns the batch-complete event."""
    reader = build_reader(settings)
    done = 0
    try:
        for _, event in reader.follow(
            lambda k, e: e.get("batch_id") == batch_id and e.get("type") == "batch.completed",
            timeout_seconds=timeout_seconds,
        ):
            if event.get("batch_id") != batch_id:
                continue
            if event["type"] == "batch.completed":
                log(f"batch complete: {event['processed']} processed, {event['rejected']} rejected")
                return event
            if event["type"] == "image.understood":
                labels = ", ".join(f"{x['name']} {x['score']:.0%}" for x in (event.get("labels") or [])[:3])
                faces = (event.get("faces") or {}).get("count")
                verdict = (event.get("moderation") or {}).get("decision")
                log(f"      {event['name']} shows: {labels or '?'}"
                    + (f" · {faces} face{'' if faces == 1 else 's'}" if faces is not None else "")
                    + (f" · moderation: {verdict}" if verdict and verdict != "allow" else ""))
                continue
            done += 1
            detail = (
                ", ".join(dict.fromkeys(f"{r['name']} {r['width']}x{r['height']}" for r in event["renditions"]))
                if event["outcome"] == "processed"
                else f"{event['code']}: {event['reason']}"
            )
            log(f"[{done}/{total}] {event['name']}: {event['outcome']} — {detail}")
    except TimeoutError:
        log(f"no batch-complete event within {timeout_seconds:.0f} s; check the Dagster UI")
    finally:
        reader.close()
    return None


def print_ready(settings: DevSettings, web_url: str | None) -> None:
    """Where everything is, once the stack is up."""
    lines = [
        "",
        "imgpipe local stack is running:",
        *([f"  web app           {web_url}  (sign in as one of: {', '.join(settings.dev_users)})"] if web_url else []),
        f"  Dagster UI        {settings.dagster_ui_url}  (runs, assets, the batch sensor, backfills)",
        f"  profile           {settings.profile}",
        f"  data dir          {settings.data_dir}",
    ]
    if settings.profile == "local":
        lines += [f"  lake              {settings.lake_dir}  (raw/ uploads, processed/ renditions)",
                  f"  metadata store    {settings.metadata_db}"]
    else:
        lines += [f"  lake              Azurite blob container '{settings.lake_container}'",
                  f"  metadata store    cosmosdb-server {settings.cosmos_endpoint}"]
    lines += [
        f"  Kafka             {settings.kafka_bootstrap}  topic {settings.kafka_topic}",
        f"  logs              {settings.log_dir}",
        f"  upload more:      {imgpipe_command()} upload FILES_OR_DIRS --user "
        f"{settings.dev_users[0] if settings.dev_users else 'YOU'} --wait",
        "Press Ctrl-C to stop everything.",
    ]
    print("\n".join(lines), flush=True)
