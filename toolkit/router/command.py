"""agentkit-router's command line from the manifest's router section: both backends run the router with it
(systemd's ExecStart=, supervisord's command=), and `agentkit-router eval` builds its decision from it."""

from __future__ import annotations

import os

from .. import units
from ..model import Manifest, RouterSpec
from .settings import ROUTER_SETTINGS, router_flag_value


def router_on(manifest: Manifest, host: str) -> RouterSpec | None:
    """The router section when the router runs on `host` (router.host), else None."""
    router = manifest.router
    return router if router is not None and router.host == host else None


def router_command(router: RouterSpec, bin_dir: str, key_file: str | None = None) -> list[tuple[str, ...]]:
    """agentkit-router's argv, in groups: the program and --listen, then one option per router setting
    (a repeated option once per value); `key_file` is passed as --cloud-api-key-file (systemd passes the key
    as a credential instead)."""
    groups = [(os.path.join(bin_dir, units.ROUTER_PROGRAM), "--listen", f"{router.bind}:{router.port}")]
    for key, value in router.settings:
        flag = ROUTER_SETTINGS[key].flag
        if flag is None:
            continue
        for text in router_flag_value(key, value):
            groups.append((flag, text))
    if key_file is not None:
        groups.append((ROUTER_SETTINGS["cloud.key_file"].flag, key_file))
    return groups


def model_names(router: RouterSpec) -> tuple[str, str]:
    """The local backend's and the cloud's models as a unit's description names them ("a, b")."""
    settings = dict(router.settings)

    def names(section: str) -> str:
        tiers = settings.get(f"{section}.models")
        return ", ".join(m.name for m in tiers) if tiers else settings[f"{section}.model"]
    return names("local"), names("cloud")
