"""The `imgpipe` command as a newcomer meets it: people named as the web app knows them, one error style and
exit code, a status that opens with a summary, lineage by file name in readable text, `upload --wait`, and an
example in every command's --help."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, materialize

from assets.batch import batch_asset_checks, batch_assets
from orchestration import cli, wiring
from orchestration.devtools.dev_settings import DevSettings
from orchestration.devtools.sample import make_sample_batch
from orchestration.devtools.webstack import local_issuer
from orchestration.domain.identity import identify
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings


@pytest.fixture
def env(monkeypatch, settings):
    for key, value in {"IMGPIPE_DATA_DIR": str(settings.data_dir), "IMGPIPE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                       "IMGPIPE_KAFKA_TOPIC": settings.kafka_topic}.items():
        monkeypatch.setenv(key, value)
    return wiring.services(settings)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _processed(settings, services, tmp_path, user="u-carol") -> str:
    batch = upload_batch(services, [IntakeItem.from_path(p) for p in make_sample_batch(tmp_path / user)],
                         user_id=user, metadata={"title": "Sample"}).batch_id
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches_partitions.name, [batch])
    assert materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                       resources=resources_from_settings(settings)).success
    return batch


def test_a_person_is_named_as_the_web_app_knows_them(env, capsys, tmp_path):
    """On the local stack `--user alice+x@example.com` is the person who signs in as alice+x@example.com: the
    batch lands under the id the web app derives from that sign-in (iss + sub), so the page shows it."""
    photo = make_sample_batch(tmp_path / "in")[0]
    code, out, err = run(capsys, "upload", str(photo), "--user", "alice+x@example.com", "--json")
    assert code == 0, err
    import json

    batch = json.loads(out)["batch_id"]
    dev = DevSettings()
    web_id = identify({"iss": local_issuer(dev), "sub": "alice+x@example.com"}, issuers=[local_issuer(dev)]).user_id
    assert env.metadata.read("batches", batch, web_id) is not None
    code, _, err = run(capsys, "upload", str(photo), "--user", "bob@example.com")
    assert code == 2 and "not a user of the local stack" in err and "alice+x@example.com" in err


def test_an_upload_with_nothing_acceptable_is_refused_before_anything_is_queued(env, capsys, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    code, out, err = run(capsys, "upload", str(text), "--user", "u-dora")
    assert code == 2 and "none of the 1 file(s) can be processed" in err and "notes.jpg" in err
    assert "Traceback" not in err
    assert env.queue.active_message_count() == 0 and not list(env.metadata.query("batches", {"user_id": "u-dora"}))


def test_status_opens_with_a_summary_and_says_deleted(env, settings, capsys, tmp_path):
    batch = _processed(settings, env, tmp_path)
    code, out, _ = run(capsys, "status", batch)
    assert code == 0
    assert out.splitlines()[0] == f"batch {batch} (Sample): completed — 5 processed · 2 rejected (of 7)"
    code, out, _ = run(capsys, "delete", batch, "--user", "u-carol")
    assert code == 0 and out.startswith(f"deleted {batch}; restorable until ")
    code, out, _ = run(capsys, "delete", batch, "--user", "u-carol")  # twice: says so, changes nothing
    assert code == 0 and "was already deleted" in out
    code, out, _ = run(capsys, "status", batch)
    assert code == 0 and out.splitlines()[0].startswith(f"batch {batch} (Sample): deleted")
    assert f"(imgpipe restore {batch})" in out


@pytest.mark.parametrize("argv", [["status", "{b}"], ["lineage", "{b}"], ["delete", "{b}"], ["restore", "{b}"],
                                  ["reprocess", "{b}", "--dry-run"]])
def test_no_such_batch_reads_the_same_from_every_command(env, capsys, argv):
    missing = "b-20990101-000000-00000000"
    code, out, err = run(capsys, *[a.format(b=missing) for a in argv])
    assert (code, err.strip()) == (4, f"imgpipe {argv[0]}: no such batch: {missing}")


def test_lineage_takes_a_file_name_and_reads_as_text(env, settings, capsys, tmp_path):
    batch = _processed(settings, env, tmp_path)
    name = next(d["name"] for d in env.metadata.query("images", partition_key=batch) if d["image_id"] == "i0002")
    code, out, err = run(capsys, "lineage", batch, name)
    assert code == 0, err
    assert f"- i0002 {name!r}: processed" in out and "{" not in out  # no raw dicts
    run_url_lines = [line for line in out.splitlines() if "/runs/" in line]
    assert len(run_url_lines) == 1  # the run link once, on the batch's run line
    code, _, err = run(capsys, "lineage", batch, "NOPE.JPG")
    assert code == 4 and "no image with the id or file name 'NOPE.JPG'" in err


def test_wait_gives_an_exit_code_by_outcome(env, settings, capsys, tmp_path):
    batch = _processed(settings, env, tmp_path)
    assert cli._wait(batch, "u-carol", 5, as_json=False) == cli.EXIT_PARTIAL  # completed, 2 rejected
    assert "completed — 5 processed · 2 rejected (of 7)" in capsys.readouterr().out
    waiting = upload_batch(env, [IntakeItem.from_path(make_sample_batch(tmp_path / "w")[0])], user_id="u-carol").batch_id
    assert cli._wait(waiting, "u-carol", 1.5, as_json=True) == cli.EXIT_NOT_FOUND  # still received: time ran out


def test_every_command_has_an_example_in_its_help():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them only here
    for name, sub in commands.items():
        text = sub.format_help()
        assert "examples:\n  imgpipe " + name in text, name
        assert "exit codes:" in text
