"""GPU admission's decision (agentkit.gpu.admission), its table's words, its ledger, and the
manifest checks `validate` makes, with their exact messages. The backends' admissions run
against real supervisord and systemd in tests/backends/supervisord/test_gpu_admission.py
and tests/e2e/test_gpu_admission.py."""

from __future__ import annotations

import textwrap

import pytest

from agentkit import manifest as manifest_mod
from agentkit.errors import ManifestError
from agentkit.gpu import admission, ledger
from agentkit.gpu.table import Table, Tenant, parse_args

GiB = 1 << 30


def _table(*tenants, total=16 * GiB, reserve=0):
    return Table(((0, total), (1, total)), ((0, reserve),) if reserve else (), tuple(tenants))


A = Tenant("A", 0, 10 * GiB, "normal")
B = Tenant("B", 0, 10 * GiB, "normal")
F = Tenant("F", 0, 4 * GiB, "first")
L = Tenant("L", 0, 4 * GiB, "last")
E = Tenant("E", 0, 4 * GiB, "essential")
N = Tenant("N", 0, 4 * GiB, "never")
G1 = Tenant("G1", 1, 10 * GiB, "normal")


def test_it_fits_when_free_less_claims_holds_it():
    table = _table(A, B)
    plan = admission.plan(table, B, 16 * GiB, [])
    assert plan.fits and plan.room.available == 16 * GiB
    # A still loading: nothing in NVML's figures yet, its whole need claimed.
    plan = admission.plan(table, B, 16 * GiB, [admission.Running(A, 0, "starting")])
    assert not plan.fits and plan.victims == () and plan.room.claimed == 10 * GiB
    assert plan.reason(B) == ("no room on GPU 0 for B: needs 10.0 GiB, 6.0 GiB available; "
                              "not stopped: A (starting)")


def test_an_idle_agent_is_the_victim_and_what_it_frees_is_its_use_and_its_claim():
    table = _table(A, B)
    plan = admission.plan(table, B, 8 * GiB, [admission.Running(A, 8 * GiB)])  # 8 used, 2 more claimed
    assert not plan.fits and plan.victims == ("A",) and plan.room.available == 6 * GiB


def test_victims_go_by_class_then_least_recently_used_and_only_as_many_as_needed():
    table = _table(A, F, L, Tenant("F2", 0, 4 * GiB, "first"), total=24 * GiB)
    running = [admission.Running(L, 4 * GiB, last_used=1.0), admission.Running(F, 4 * GiB, last_used=9.0),
               admission.Running(table.tenant("F2"), 4 * GiB, last_used=5.0)]
    plan = admission.plan(table, A, 8 * GiB, running)
    assert plan.victims == ("F2",)  # 2 short: the older of the two `first` ones is enough
    plan = admission.plan(table, A, 4 * GiB, running)
    assert plan.victims == ("F2", "F")  # 6 short: both `first`, never the `last` one


def test_essential_never_busy_and_other_gpus_are_not_stopped():
    table = _table(A, B, E, N, G1)
    running = [admission.Running(E, 4 * GiB), admission.Running(N, 4 * GiB),
               admission.Running(A, 10 * GiB, "1 open connection"), admission.Running(G1, 10 * GiB)]
    plan = admission.plan(table, B, 0, running)  # GPU 0 full: E + N + A less 2 GiB of other use
    assert not plan.fits and plan.victims == ()
    assert plan.blockers == ("E (essential)", "N (gpu_evict: never)", "A (1 open connection)")


def test_an_essential_agent_keeps_its_memory_while_it_is_down():
    table = _table(A, E)
    plan = admission.plan(table, A, 16 * GiB, [])  # E crashed: restarting
    assert plan.room.claimed == 4 * GiB and plan.room.available == 12 * GiB and plan.fits


def test_without_nvml_the_manifests_figures_are_the_bookkeeping():
    table = _table(A, B, reserve=1 * GiB)
    plan = admission.plan(table, B, None, [admission.Running(A)], "by the manifest's figures; NVML unavailable")
    assert plan.room.available == 5 * GiB and plan.victims == ("A",)
    assert "(by the manifest's figures; NVML unavailable)" in plan.reason(B)
    unknown = Table(((0, None),), (), (A, B))  # gpus: auto, and no NVML: nothing to go by
    assert admission.plan(unknown, B, None, [admission.Running(A)]).fits


def test_the_table_goes_through_its_words_unchanged():
    table = Table(((0, 24 * GiB), (1, None)), ((0, 512 << 20),), (A, E, G1))
    words = table.args()
    gpus = [w for o, w in zip(words[::2], words[1::2]) if o == "--gpu"]
    reserve = [w for o, w in zip(words[::2], words[1::2]) if o == "--gpu-reserve"]
    tenants = [w for o, w in zip(words[::2], words[1::2]) if o == "--tenant"]
    assert parse_args(gpus, reserve, tenants) == table
    with pytest.raises(ValueError, match="--tenant 'A=0:10:sometimes': expected NAME=GPU:BYTES:CLASS"):
        parse_args([], [], ["A=0:10:sometimes"])


def test_the_ledger_is_followed_across_its_move(tmp_path, monkeypatch):
    path = str(tmp_path / "run" / ledger.NAME)
    follower = ledger.Follower(path)
    assert follower.read() == []
    ledger.append(path, {"kind": "admit", "agent": "A"})
    ledger.append(path, {"kind": "refuse", "agent": "B", "reason": "no room"})
    assert [r["agent"] for r in follower.read()] == ["A", "B"]
    assert ledger.refusal(path, "B") == "no room" and ledger.refusal(path, "A") is None
    monkeypatch.setattr(ledger, "MAX_BYTES", 1)  # the next record moves the file to .1
    ledger.append(path, {"kind": "admit", "agent": "B"})
    assert [r["agent"] for r in follower.read()] == ["B"]
    assert ledger.refusal(path, "B") is None  # admitted since


def _load(tmp_path, fleet, agents):
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(fleet))
    (root / "g.yaml").write_text(textwrap.dedent(agents))
    try:
        manifest_mod.load(str(root))
    except ManifestError as exc:
        return [str(p).replace(str(root) + "/", "") for p in exc.problems]
    return []


def test_validate_refuses_what_cannot_fit_with_file_and_line(tmp_path):
    assert _load(tmp_path, """\
        name: t
        hosts:
          box:
            gpus: {0: 16G, 1: 8G}
        router:
          host: box
          local: {url: "http://127.0.0.1:8080/v1", model: m}
          cloud: {url: "https://api.example.com/v1", model: c}
          gpu: {reserve: 1G, device: 1}
        defaults: {command: [python3, -m, http.server]}
        """, """\
        host: box
        agents:
          big: {port: 7002, gpu_memory: 20G}
          nowhere: {port: 7003, gpu_memory: 1G, gpu: 3}
          vision: {port: 7004, essential: true, gpu_memory: 4G, gpu: 1}
          speech: {port: 7005, essential: true, gpu_memory: 4G, gpu: 1}
          plain: {port: 7006, gpu_evict: first}
          core: {port: 7007, essential: true, gpu_memory: 9G, gpu_evict: last}
          late: {port: 7008, gpu_memory: 8G}
        """) == [
        "g.yaml:3: agents.big.gpu_memory: 20.0 GiB is more than GPU 0 of host box has (16.0 GiB, hosts.box.gpus)",
        "g.yaml:4: agents.nowhere.gpu: host box has no GPU 3 (hosts.box.gpus: 0, 1)",
        "g.yaml:6: agents.speech.gpu_memory: the essential agents on GPU 1 of host box need 9.0 GiB together "
        "(vision 4.0 GiB, speech 4.0 GiB, the router's gpu.reserve 1.0 GiB), more than its 8.0 GiB: they all run "
        "at once and none is stopped for room",
        "g.yaml:7: agents.plain.gpu_evict: gpu_evict goes with gpu_memory, which this agent does not set",
        "g.yaml:8: agents.core.gpu_evict: only optional agents have gpu_evict (this agent is essential)",
        "g.yaml:9: agents.late.gpu_memory: 8.0 GiB never fits on GPU 0 of host box: its essential agents and the "
        "router's gpu.reserve keep 9.0 GiB of its 16.0 GiB",
    ]


def test_validate_refuses_bad_gpu_figures(tmp_path):
    assert _load(tmp_path, """\
        name: t
        hosts:
          box: {gpus: {0: lots}}
        defaults: {command: [python3]}
        """, """\
        host: box
        agents:
          a: {port: 7002, gpu_memory: 1G, gpu: -1}
        """) == [
        "fleet.yaml:3: hosts.box.gpus: GPU 0: 'lots' is not a size systemd understands (try '512M' or '4G') (or auto)",
        "g.yaml:3: agents.a.gpu: expected an NVML GPU index from 0 to 63, got -1",
    ]


class _Sampler:
    """What wait_for_room reads of a Sampler: NVML's free memory, here a list the test changes."""

    interval = 0.01
    available = True

    def __init__(self, free):
        self.free = free

    def due(self):
        return 0.0

    def sample(self, fresh=False):
        free = self.free

        class Sample:
            @staticmethod
            def free(index):
                return free[index]
        return Sample

    def source(self):
        return "NVML"


def _wait(table, tenant, sampler, running, stop, deadline=1.0):
    import asyncio

    from agentkit.gpu import room

    records = []
    clock = iter(x / 100 for x in range(100_000)).__next__  # 10 ms a look: no sleeping on real time
    result = asyncio.run(room.wait_for_room(table, tenant, sampler, deadline, running=running, stop=stop,
                                            record=lambda kind, t, *a, **k: records.append((kind, t.name)),
                                            clock=clock))
    return result, records


def test_wait_for_room_stops_no_more_while_nvml_lags_behind_a_stop():
    from agentkit.gpu import room

    table = _table(A, B, Tenant("C", 0, 4 * GiB, "normal"), total=24 * GiB)
    up = {"A": admission.Running(A, 10 * GiB, last_used=1.0), "C": admission.Running(table.tenant("C"), 4 * GiB, last_used=2.0)}
    sampler = _Sampler([10 * GiB])  # A and C use 14 of 24: B (10) needs 0 more... after a stop of A
    sampler.free[0] = 6 * GiB       # something else holds 4 GiB: B needs A's room
    stopped = []

    async def running(sample):
        return list(up.values())

    async def stop(name):
        stopped.append(name)
        del up[name]  # gone from systemd's view at once; NVML shows its memory free only later
        return True

    with pytest.raises(room.NoRoom):
        _wait(table, B, sampler, running, stop, deadline=1.0)
    assert stopped == ["A"]  # not C too: A's memory had not shown up free yet


def test_wait_for_room_stops_nobody_once_the_deadline_has_passed():
    from agentkit.gpu import room

    table = _table(A, B)
    stopped = []

    async def running(sample):
        return [admission.Running(A, 10 * GiB)]

    async def stop(name):
        stopped.append(name)
        return True

    with pytest.raises(room.NoRoom, match="no room on GPU 0 for B"):
        _wait(table, B, _Sampler([6 * GiB]), running, stop, deadline=0.0)
    assert stopped == []


def test_wait_for_room_admits_once_a_stopped_agents_memory_is_free():
    table = _table(A, B)
    sampler = _Sampler([6 * GiB])
    up = [admission.Running(A, 10 * GiB)]

    async def running(sample):
        return list(up)

    async def stop(name):
        up.clear()
        sampler.free[0] = 16 * GiB
        return True

    evicted, records = _wait(table, B, sampler, running, stop)
    assert evicted == ["A"] and records == [("evict", "A"), ("admit", "B")]
