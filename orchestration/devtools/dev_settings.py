"""Settings of the local stack only (`imgpipe dev`): ``DevSettings`` is the product's ``Settings`` plus the ports,
users and tool paths of the laptop stack, read from ``IMGPIPE_*`` variables the same way (docs/configuration.md,
"Local stack only"). Nothing in production reads them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from orchestration.settings import AbsolutePath, CommaList, Settings, load_settings


def _default_tools_dir() -> Path:
    return Path.home() / ".cache" / "imgpipe" / "node-tools"


class DevSettings(Settings):
    webserver_port: int = Field(3000, gt=0, lt=65536, description="Dagster UI port of `imgpipe dev`.")
    web: bool = Field(True, description="`imgpipe dev` also starts the web app and a local OIDC provider.")
    web_port: int = Field(8501, gt=0, lt=65536, description="Web app port of `imgpipe dev`.")
    oidc_port: int = Field(9400, gt=0, lt=65536, description="Port of the local OIDC provider of `imgpipe dev`.")
    dev_users: CommaList = Field(("alice+x@example.com", "alice-x@example.com", "ops@example.com"),
                                 description="Users the local OIDC provider offers (e-mail = subject).")
    dev_operators: CommaList = Field(("ops@example.com",), description="Those of the dev users whose token "
                                     "carries the operator role.")
    tools_dir: AbsolutePath = Field(default_factory=_default_tools_dir, description="Where `imgpipe dev --profile "
                            "emulated` and CI install Azurite and cosmosdb-server (npm).")
    dev_tuning: str = Field("on", description="The local stack's Dagster tuning (devtools/dagster_tuning.py): "
                            "on, off, or a comma-separated list of its patches.")

    @model_validator(mode="before")
    @classmethod
    def _ui_on_webserver_port(cls, values):
        """The stack's Dagster UI is on ``webserver_port`` unless IMGPIPE_DAGSTER_UI_URL says otherwise."""
        if isinstance(values, dict) and not values.get("dagster_ui_url"):
            values = {**values, "dagster_ui_url": f"http://127.0.0.1:{values.get('webserver_port', 3000)}"}
        return values


def load_dev_settings(**overrides) -> DevSettings:
    return load_settings(DevSettings, **overrides)  # type: ignore[return-value]
