"""The dependency graph's algorithms, on graphs too deep for recursion."""

from agentkit import graph, manifest

from conftest import REPO


def test_no_cycles_in_a_dag():
    assert graph.find_cycles({"a": ["b"], "b": ["c"], "c": []}) == []


def test_each_cycle_is_reported_once_from_its_smallest_name():
    cycles = graph.find_cycles({"c": ["a"], "a": ["b"], "b": ["c"], "x": ["y"], "y": ["x"], "z": ["a"]})
    assert cycles == [["a", "b", "c"], ["x", "y"]]


def test_self_loop_is_a_cycle():
    assert graph.find_cycles({"a": ["a"]}) == [["a"]]


def test_a_chain_of_50000_needs_no_recursion():
    chain = {f"n{i}": [f"n{i + 1}"] for i in range(50_000)}
    chain["n50000"] = ["n0"]
    (cycle,) = graph.find_cycles(chain)
    assert len(cycle) == 50_001 and cycle[0] == "n0"


def test_dot_and_mermaid_show_every_agent_and_edge():
    m = manifest.load(str(REPO / "agents"))
    agents = list(m.agents.values())
    edges = sum(len(a.depends_on) for a in agents)
    dot = graph.to_dot(m, agents)
    assert dot.startswith('digraph "reference"') and dot.count(" -> ") == edges
    assert all(f'"{a.name}" [style=' in dot for a in agents)
    mermaid = graph.to_mermaid(m, agents)
    assert mermaid.startswith("flowchart LR") and mermaid.count(" --> ") == edges
