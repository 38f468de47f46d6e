"""The settings tables are the one declaration of every setting: the README's tables
are made from them, and the loader's defaults and unknown-key check follow them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentkit import manifest, settings
from agentkit.errors import ManifestError
from agentkit.router.settings import MANIFEST_SETTINGS, ROUTER_SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")

TABLES = {
    "agent": settings.AGENT_SETTINGS, "fleet": settings.FLEET_SETTINGS, "host": settings.HOST_SETTINGS,
    "group": settings.GROUP_SETTINGS, "slice": settings.SLICE_SETTINGS, "profile": settings.PROFILE_SETTINGS,
    "router": MANIFEST_SETTINGS, "status": settings.STATUS_SETTINGS,
}


@pytest.mark.parametrize("name", TABLES)
def test_the_readme_holds_each_settings_table_as_the_table_makes_it(name):
    table = settings.markdown(TABLES[name])
    assert table in README, f"README.md lacks the {name} settings table; paste:\n{table}"


def test_router_only_options_are_not_manifest_keys(tmp_path):
    only_router = [k for k, s in ROUTER_SETTINGS.items() if not s.manifest]
    assert "connect_timeout" in only_router and all(k not in MANIFEST_SETTINGS for k in only_router)
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent("""\
        hosts: {h: {}}
        router:
          host: h
          local: {url: "http://127.0.0.1:8080/v1", model: small}
          cloud: {url: "https://cloud.invalid/v1", model: big}
          connect_timeout: 5s
        """))
    with pytest.raises(ManifestError) as caught:
        manifest.load(str(root))
    assert [p.path for p in caught.value.problems] == ["router.connect_timeout"]


def test_every_fleet_setting_reaches_the_model(tmp_path):
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text("name: lab\nhosts: {h: {}}\nprivate_port_offset: 1234\n")
    m = manifest.load(str(root))
    assert (m.name, m.private_port_offset, m.default_profile) == ("lab", 1234, "full")
    defaults = manifest.load(str(_fleet(tmp_path / "plain", "hosts: {h: {}}\n")))
    assert defaults.private_port_offset == settings.FLEET_SETTINGS["private_port_offset"].default


def _fleet(root: Path, text: str) -> Path:
    root.mkdir()
    (root / "fleet.yaml").write_text(text)
    return root
