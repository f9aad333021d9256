"""Configuration has one source of truth (Settings), secrets stay secret, and a run launched with run
config cannot redirect an endpoint or a secret."""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterInvalidConfigError, materialize
from dagster import serialize_value
from pydantic import BaseModel, SecretStr

from assets.core.config import CoreConfig
from tests.support.procs import probe
from orchestration.settings import Settings, describe_validation_error, env_var, load_settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestration", "assets", "sensors", "ui_streamlit")


def _render_default(value) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
        return json.dumps([v.model_dump(exclude_none=True) for v in value])
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
MAIN_SECTION = "## Settings"
DEV_SECTION = "## Local stack only (`imgpipe dev`)"
_ROW = re.compile(r"^\| `(IMGPIPE_[A-Z0-9_]+)` \| (.*?) \| .* \|$")


def _table_rows(section: str) -> dict[str, str]:
    """{variable: default cell} of the `| `IMGPIPE_X` | default | meaning |` rows in one section."""
    rows = {}
    for line in section.splitlines():
        m = _ROW.match(line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice in {CONFIGURATION_DOC.name}"
            rows[m.group(1)] = m.group(2)
    return rows


def _section(text: str, heading: str) -> str:
    assert f"\n{heading}\n" in text, f"{CONFIGURATION_DOC.name} has no section {heading!r}"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def _configuration_tables() -> tuple[dict[str, str], dict[str, str]]:
    """The main settings table and the "Local stack only" table of docs/configuration.md."""
    text = CONFIGURATION_DOC.read_text()
    main, dev = _table_rows(_section(text, MAIN_SECTION)), _table_rows(_section(text, DEV_SECTION))
    assert not set(main) & set(dev), f"listed in both tables: {sorted(set(main) & set(dev))}"
    return main, dev


def _dev_settings_class():
    """orchestration.devtools.dev_settings.DevSettings, or None while that module does not exist yet."""
    try:
        from orchestration.devtools.dev_settings import DevSettings
    except ModuleNotFoundError as err:
        if err.name not in ("orchestration.devtools.dev_settings", "orchestration.devtools"):
            raise  # the module exists but is broken: that is a failure, not a skip
        return None
    return DevSettings


def _fields(model, exclude=()) -> dict:
    return {env_var(name): field for name, field in model.model_fields.items() if name not in exclude}


def _check_table(table: dict[str, str], fields: dict, where: str, model_name: str) -> None:
    assert set(table) == set(fields), (
        f"only in {where}: {sorted(set(table) - set(fields))}; "
        f"only in {model_name}: {sorted(set(fields) - set(table))}")
    for var, field in fields.items():
        if field.default_factory is not None:
            continue  # machine-dependent (paths): described in words
        shown = table[var]
        rendered = _render_default(field.default)
        if rendered:
            assert shown.startswith(f"`{rendered}`"), f"{where} says {var} defaults to {shown}; {model_name}: {rendered!r}"
        else:
            assert shown == "(none)", f"{where} says {var} defaults to {shown}; {model_name}: empty"


def test_configuration_table_lists_exactly_the_settings_with_their_defaults():
    """docs/configuration.md "Settings" lists exactly Settings' fields, less the local-stack-only ones."""
    main, dev = _configuration_tables()
    dev_settings = _dev_settings_class()
    if dev_settings is None:
        # Today the local-stack-only settings are still Settings fields: the main table is Settings less
        # the rows of the dev section, and those rows must name Settings fields with their defaults.
        fields = _fields(Settings)
        dev_fields = {var: field for var, field in fields.items() if var in dev}
        _check_table(dev, dev_fields, f"{CONFIGURATION_DOC.name} {DEV_SECTION!r}", "Settings")
        main_fields = {var: field for var, field in fields.items() if var not in dev}
    else:
        # A field DevSettings has (itself, not inherited from Settings) belongs to the dev section.
        dev_only = _dev_only_field_names(dev_settings)
        main_fields = _fields(Settings, exclude=dev_only)
    _check_table(main, main_fields, f"{CONFIGURATION_DOC.name} {MAIN_SECTION!r}", "Settings")


def _dev_only_field_names(dev_settings) -> set[str]:
    """DevSettings' own fields: all of them, or, if it extends Settings, those it declares itself."""
    names = set(dev_settings.model_fields)
    if issubclass(dev_settings, Settings):
        declared = set()
        for cls in dev_settings.__mro__[:dev_settings.__mro__.index(Settings)]:
            declared |= set(cls.__dict__.get("__annotations__", {}))
        names = (names - set(Settings.model_fields)) | (names & declared)
    return names


def test_configuration_dev_table_lists_exactly_the_dev_settings_with_their_defaults():
    """docs/configuration.md "Local stack only (`imgpipe dev`)" lists exactly DevSettings' own fields."""
    _, dev = _configuration_tables()
    dev_settings = _dev_settings_class()
    if dev_settings is None:
        pytest.skip("orchestration.devtools.dev_settings (DevSettings) does not exist yet; until it does, the "
                    "dev section's rows are checked against Settings' fields by the main configuration table test")
    only = _dev_only_field_names(dev_settings)
    fields = {env_var(name): field for name, field in dev_settings.model_fields.items() if name in only}
    _check_table(dev, fields, f"{CONFIGURATION_DOC.name} {DEV_SECTION!r}", "DevSettings")


_ENV_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["']([A-Z0-9_]+)["']""")


def test_the_code_reads_no_environment_variable_outside_settings():
    """Every IMGPIPE_* variable is a Settings field, and nothing but settings.py reads one."""
    offenders = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "orchestration" / "settings.py":
                continue
            for name in _ENV_READ.findall(path.read_text()):
                offenders.append(f"{path.relative_to(ROOT)} reads {name}")
    assert offenders == []


def test_settings_defaults_are_the_cores_own():
    """No default written twice: with nothing set, Settings builds exactly the core's default config."""
    assert Settings().core_config() == CoreConfig()


def test_core_limits_follow_the_intake_settings(tmp_path):
    """IMGPIPE_MAX_FILE_BYTES reaches the image core, so intake cannot accept what the core then refuses."""
    s = load_settings(data_dir=tmp_path, max_file_bytes=1234, max_pixels=999, output_formats="webp,avif",
                      keep_exif="", animated="reject", workers=3)
    config = s.core_config()
    assert config.limits.max_file_bytes == 1234 and config.limits.max_pixels == 999
    assert {r.formats for r in config.renditions} == {("WEBP", "AVIF")}
    assert config.keep_exif == () and config.animated == "reject" and s.effective_workers == 3


@pytest.mark.parametrize("field,value", [("profile", "cloudy"), ("kafka_security", "ssl"), ("animated", "all"),
                                          ("output_formats", "JPEG,GIF")])
def test_enumerations_are_checked_and_named(tmp_path, field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        load_settings(data_dir=tmp_path, **{field: value})
    assert env_var(field) in describe_validation_error(err.value)


def test_secrets_never_show_in_repr_str_json_or_errors(tmp_path):
    key = "cosmos-" + secrets.token_hex(8)
    s = load_settings(data_dir=tmp_path, cosmos_key=key, kafka_password=key + "p", eventhubs_connection_string=key + "e",
                      servicebus_connection_string=key + "s", storage_connection_string=key + "c")
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(), default=str)):
        assert key not in text
    assert s.cosmos_key.get_secret_value() == key
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:  # a bad value is named, never echoed
        load_settings(data_dir=tmp_path, kafka_security=key)
    assert key not in describe_validation_error(err.value)


def test_secrets_reach_child_processes_only_through_their_environment(tmp_path):
    key = secrets.token_hex(8)
    env = load_settings(data_dir=tmp_path, cosmos_key=key).to_env()
    assert env["IMGPIPE_COSMOS_KEY"] == key
    assert Settings(**{k.removeprefix("IMGPIPE_").lower(): v for k, v in env.items()}) == \
        load_settings(data_dir=tmp_path, cosmos_key=key)  # the round trip loses nothing


# -- run config at launch --------------------------------------------------------------------------

def test_every_resource_refuses_run_config():
    from orchestration.definitions import defs

    job = defs.resolve_job_def("process_batch")
    for key, resource in job.resource_defs.items():
        if key == "io_manager":
            continue
        fields = resource.config_schema.as_field().config_type.fields
        assert fields == {}, f"resource {key!r} takes run config: {sorted(fields)}"


@pytest.mark.parametrize("resource,config", [
    ("results", {"bootstrap": "attacker.example:9092"}),
    ("metadata", {"data_dir": "/tmp/elsewhere"}),
    ("queue", {"connection_string": "Endpoint=sb://attacker.example/"}),
])
def test_a_run_launched_with_overriding_run_config_is_refused(offline_settings, resource, config):
    """What the Dagster UI's launchpad (or a GraphQL client) would send: refused before anything runs."""
    from orchestration.definitions import process_batch_job
    from orchestration.partitions import batches_partitions
    from orchestration.resources import resources_from_settings
    from dagster import Definitions

    from assets.batch import batch_asset_checks, batch_assets

    defs = Definitions(assets=batch_assets, asset_checks=batch_asset_checks, jobs=[process_batch_job],
                       resources=resources_from_settings(offline_settings))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches_partitions.name, ["b-20261125-120000-0123abcd"])
    with pytest.raises(DagsterInvalidConfigError, match="unexpected config entry"):
        defs.resolve_job_def("process_batch").execute_in_process(
            run_config={"resources": {resource: {"config": config}}}, instance=instance,
            partition_key="b-20261125-120000-0123abcd")
    assert instance.get_run_records() == []  # nothing was started


def test_the_code_location_refuses_run_config_in_a_fresh_process(tmp_path):
    """The same through the code location a deployment loads (env-configured), in its own process."""
    proc = subprocess.run(probe("run_config_refused"), capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMGPIPE_DATA_DIR": str(tmp_path)},
                          cwd=ROOT)
    assert "REFUSED" in proc.stdout, proc.stderr[-2000:]


# -- secrets in a real run on the Azure adapters (Azurite + cosmosdb-server) ---------------------------

def test_secrets_appear_nowhere_in_a_run(tmp_path, kafka_bootstrap, kafka_topic, azurite_connection_string,
                                        cosmos_endpoint, caplog, capfd):
    """A batch processed on the Azure adapters with real credentials in Settings: neither the Cosmos key nor
    the storage account key shows up in run tags, event logs (which the Dagster UI displays), asset
    metadata, or anything logged or printed."""
    from orchestration import wiring
    from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
    from orchestration.domain.intake import IntakeItem, upload_batch
    from orchestration.partitions import batches_partitions
    from orchestration.resources import resources_from_settings

    from assets.batch import batch_asset_checks, batch_assets

    cosmos_key = base64.b64encode(secrets.token_bytes(48)).decode()  # cosmosdb-server accepts any key
    account_key = re.search(r"AccountKey=([^;]+)", azurite_connection_string).group(1)
    suffix = secrets.token_hex(4)
    s = load_settings(data_dir=tmp_path / "data", profile="emulated", kafka_bootstrap=kafka_bootstrap,
                      kafka_topic=kafka_topic, storage_connection_string=azurite_connection_string,
                      cosmos_endpoint=cosmos_endpoint, cosmos_key=cosmos_key, cosmos_verify_tls=False,
                      cosmos_database=f"sec{suffix}", lake_container=f"lake{suffix}", signal_queue=f"sig{suffix}",
                      workers=1)
    caplog.set_level(logging.DEBUG)
    try:
        upload = upload_batch(wiring.services(s), [IntakeItem.from_bytes("a.jpg", jpeg_bytes(synthetic_photo(64, 48, 0, "a")))],
                              user_id="alice")
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(batches_partitions.name, [upload.batch_id])
        result = materialize([*batch_assets, *batch_asset_checks], partition_key=upload.batch_id, instance=instance,
                             resources=resources_from_settings(s), tags={"imgpipe/user_id": "alice"})
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        seen = [json.dumps(run.tags), repr(run.run_config)]
        # Everything the Dagster UI shows of the run: each event log entry, whole (messages, asset
        # materializations with their metadata, check results, resource init and step events).
        seen += [serialize_value(r.event_log_entry) for r in instance.get_records_for_run(result.run_id, limit=10_000).records]
        seen += [caplog.text, *capfd.readouterr()]
        blob = "\n".join(seen)
        assert '"events_sent_now"' in blob and upload.batch_id in blob  # the run's metadata really is in what we read
        assert cosmos_key not in blob and account_key not in blob
    finally:
        wiring.CLIENTS.close_all()


# -- a second shell finds the running dev stack -------------------------------------------------------

def test_a_running_stacks_endpoints_fill_in_what_the_environment_does_not_set(tmp_path, monkeypatch):
    import os

    from orchestration.settings import remove_stack_file, write_stack_file

    monkeypatch.delenv("IMGPIPE_COSMOS_ENDPOINT", raising=False)
    stack = load_settings(data_dir=tmp_path, profile="emulated", cosmos_endpoint="https://127.0.0.1:1234",
                          cosmos_key="emulator-key", kafka_bootstrap="127.0.0.1:5555")
    path = write_stack_file(stack, {k: getattr(stack, k) for k in ("profile", "cosmos_endpoint", "cosmos_key",
                                                                   "kafka_bootstrap")}, pid=os.getpid())
    assert path.stat().st_mode & 0o077 == 0  # owner only

    second = load_settings(data_dir=tmp_path)
    assert (second.profile, second.cosmos_endpoint, second.kafka_bootstrap) == ("emulated", "https://127.0.0.1:1234",
                                                                               "127.0.0.1:5555")
    assert second.cosmos_key.get_secret_value() == "emulator-key"
    monkeypatch.setenv("IMGPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:7777")  # what the shell sets wins
    assert load_settings(data_dir=tmp_path).kafka_bootstrap == "127.0.0.1:7777"
    assert load_settings(data_dir=tmp_path, profile="local").profile == "local"  # and so do explicit overrides

    remove_stack_file(stack, pid=os.getpid())
    assert load_settings(data_dir=tmp_path).profile == "local"


def test_a_dead_stacks_file_is_ignored(tmp_path):
    from orchestration.settings import write_stack_file

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stack = load_settings(data_dir=tmp_path, profile="emulated", cosmos_endpoint="https://127.0.0.1:1")
    write_stack_file(stack, {"profile": "emulated", "cosmos_endpoint": "https://127.0.0.1:1"}, pid=int(dead.stdout))
    assert load_settings(data_dir=tmp_path).profile == "local"
