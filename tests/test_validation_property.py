"""One validation: whatever manifest `agentkit validate` accepts, every backend
renders, for every host and every profile. Hypothesis generates the manifests
(ports that clash, private ports past 65535, values supervisord cannot quote,
dependencies across hosts, proxy agents, odd offsets) and shrinks any failure to
the smallest manifest that shows it."""

from __future__ import annotations

import os
import tempfile

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from agentkit import backends, manifest
from agentkit.backends import BACKENDS, Options
from agentkit.errors import ManifestError

NAMES = ["A", "B", "C", "D", "E"]
# Values drawn to hit what the backends must quote or refuse: white space before
# ';' or '#', both quote kinds, quotes at the ends, '%', '$', backslashes.
VALUE = st.text(alphabet=" ;#%$\"'\\abz09=,:", max_size=8)
PORT = st.one_of(st.sampled_from([1, 5000, 5001, 6000, 25000, 25001, 45536, 65535]), st.integers(1, 65535))


@st.composite
def manifests(draw) -> dict[str, dict]:
    hosts = draw(st.lists(st.sampled_from(["h1", "h2"]), min_size=1, max_size=2, unique=True))
    fleet: dict = {"name": draw(st.sampled_from(["lab", "my fleet", "a ;b", "100%"])),
                   "hosts": {h: {} for h in hosts},
                   "defaults": {"command": ["agent", draw(VALUE)]},
                   "profiles": {"core": {}, "full": {"all": True}, "some": {"agents": []}}}
    for h in hosts:
        if draw(st.booleans()):
            fleet["hosts"][h]["environment"] = {"HOSTVAR": draw(VALUE)}
        if draw(st.booleans()):
            fleet["hosts"][h]["ports"] = {"bus": draw(PORT)}
        if draw(st.booleans()):  # reaches AGENTKIT_DEPENDS of the agents that depend on this host's
            fleet["hosts"][h]["address"] = draw(st.one_of(st.sampled_from(["10.0.0.7", "a ;b", "'q'"]), VALUE))
    if draw(st.booleans()):
        fleet["private_port_offset"] = draw(st.sampled_from([1, 1000, 20000, 40000, 65535]))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    agents: dict = {}
    for index, name in enumerate(names):
        agent: dict = {"host": draw(st.sampled_from(hosts)), "port": draw(PORT),
                       "essential": draw(st.booleans())}
        if draw(st.booleans()):
            agent["health_port"] = draw(PORT)
        if not agent["essential"]:
            agent["activation"] = draw(st.sampled_from(["native", "proxy"]))
            if agent["activation"] == "proxy":
                agent["service_type"] = "notify"
                if draw(st.booleans()):
                    agent["private_port"] = draw(PORT)
            agent["idle_stop"] = "5min"
        if draw(st.booleans()):
            agent["environment"] = {"VAR": draw(VALUE)}
        earlier = names[:index]
        if earlier:
            agent["depends_on"] = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True))
        agents[name] = agent
    optional = [n for n, a in agents.items() if not a["essential"]]
    fleet["profiles"]["some"]["agents"] = optional[:1]
    return {"fleet.yaml": fleet, "agents.yaml": {"agents": agents}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_what_validate_accepts_every_backend_renders_for_every_host_and_profile(files):
    with tempfile.TemporaryDirectory() as root:
        for name, data in files.items():
            with open(os.path.join(root, name), "w", encoding="utf-8") as handle:
                yaml.safe_dump(data, handle)
        try:
            m = manifest.load(root)
        except ManifestError:
            return  # refused, with FILE:LINE problems: nothing to render
        options = Options(bin_dir="/opt/agentkit/bin", state_dir=os.path.join(root, "state"), several=True)
        for name in BACKENDS:
            backend = backends.get(name)
            for host in m.hosts:
                for profile in m.profiles:
                    assert backend.plan(m, host, profile, options)
