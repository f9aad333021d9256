"""The web app's part of the local stack: a local OIDC provider (oidc-provider-mock) and `streamlit run`,
both child processes tracked by PID. In Azure the same app signs in against Microsoft Entra ID: only its
secrets file differs (docs/web-app.md)."""

from __future__ import annotations

import importlib.util
import json
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orchestration.devtools.processes import StartupFailed, log_tail, wait_started
from orchestration.settings import Settings, web_server_options
from orchestration.devtools.processes import die_with_parent

CLIENT_ID = "imgpipe-web"


def write_secrets(settings: Settings, directory: Path) -> Path:
    """Streamlit's [auth] section for the local provider. The cookie secret is made once and kept in the
    data dir (so sign-ins survive a restart); nothing here is a real credential."""
    directory.mkdir(parents=True, exist_ok=True)
    cookie_file = directory / "cookie_secret"
    if not cookie_file.exists():
        cookie_file.write_text(secrets.token_urlsafe(32))
        cookie_file.chmod(0o600)
    path = directory / "secrets.toml"
    path.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{settings.web_port}/oauth2callback"\n'
        f'cookie_secret = "{cookie_file.read_text().strip()}"\n'
        f'client_id = "{CLIENT_ID}"\n'
        'client_secret = "local-dev-only"\n'
        f'server_metadata_url = "http://127.0.0.1:{settings.oidc_port}/.well-known/openid-configuration"\n'
    )
    path.chmod(0o600)
    return path


def local_issuer(settings: Settings) -> str:
    """The ``iss`` of the local provider's tokens (its base URL)."""
    return f"http://127.0.0.1:{settings.oidc_port}"


def local_user_id(settings, sign_in_name: str) -> str | None:
    """The user id the web app gives one of the local provider's users (its subject is the sign-in name), or
    None when the name is not one of them (``DevSettings.dev_users``)."""
    from orchestration.domain.identity import opaque_user_id

    if sign_in_name not in getattr(settings, "dev_users", ()):
        return None
    return opaque_user_id(local_issuer(settings), sign_in_name)


def with_local_issuer(settings: Settings) -> Settings:
    """The stack's settings with the local provider among the accepted issuers."""
    issuers = tuple(dict.fromkeys((*settings.oidc_issuers, local_issuer(settings))))
    return type(settings)(**{**settings.model_dump(), "oidc_issuers": issuers})


def dev_user_claims(settings: Settings, email: str) -> dict:
    """The token claims of one local user: the e-mail is the subject (stable within this provider), the
    operator role only for ``IMGPIPE_DEV_OPERATORS``."""
    claims = {"sub": email, "email": email, "email_verified": True, "name": email.split("@")[0]}
    if email in settings.dev_operators:
        claims[settings.operator_claim] = [settings.operator_role]
    return claims


def start_oidc(settings: Settings, log_path: Path, *, on_start=None) -> subprocess.Popen:
    args = [sys.executable, "-m", "oidc_provider_mock", "-p", str(settings.oidc_port), "-H", "127.0.0.1"]
    for email in settings.dev_users:
        args += ["--user-claims", json.dumps(dev_user_claims(settings, email))]
    proc = subprocess.Popen(args, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent())
    if on_start:
        on_start(proc)
    wait_started(proc, "the local sign-in provider", [settings.oidc_port], 30, log_path)
    return proc


def app_path() -> Path:
    # Found, not imported: the developer tooling starts the web app as a process and depends on none of its code.
    return Path(importlib.util.find_spec("ui_streamlit").origin).parent / "app.py"


def web_command(settings: Settings, secrets_file: Path) -> list[str]:
    # The server options every launcher shares (orchestration.settings.web_server_options). Among them, no
    # "magic" (bare expressions written to the page): it runs ast.parse on each page's source, and CPython
    # 3.11's AST conversion is not thread-safe (python/cpython#106905: "SystemError: AST constructor recursion
    # depth mismatch" when another thread parses at the same moment, e.g. a traceback being formatted).
    options = {**web_server_options(settings), "server.address": "127.0.0.1", "server.port": str(settings.web_port),
               "server.fileWatcherType": "none", "secrets.files": str(secrets_file)}
    return [sys.executable, "-m", "streamlit", "run", str(app_path()), *(f"--{k}={v}" for k, v in options.items())]


def start_web(settings: Settings, env: dict[str, str], secrets_file: Path, log_path: Path, *,
              on_start=None) -> subprocess.Popen:
    proc = subprocess.Popen(
        web_command(settings, secrets_file),
        env=env, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent(), cwd=app_path().parent,
    )
    if on_start:  # registered before the (up to 60 s) wait, so Ctrl-C meanwhile stops it too
        on_start(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartupFailed(f"the web app exited with code {proc.returncode} while starting. The end of its log "
                                f"({log_path}):\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    raise StartupFailed(f"the web app did not answer on port {settings.web_port}. The end of its log ({log_path}):\n"
                        f"{log_tail(log_path)}")

