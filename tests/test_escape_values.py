"""Escaping and value syntaxes, each on its own."""

import pytest

from agentkit import escape, values


@pytest.mark.parametrize("argv, line", [
    (["/usr/bin/agent"], "/usr/bin/agent"),
    (["/a", "two words"], '/a "two words"'),
    (["/a", 'say "hi"'], r'/a "say \"hi\""'),
    (["/a", "back\\slash"], r'/a "back\\slash"'),
    (["/a", "50%"], "/a 50%%"),
    (["/a", "$HOME", "${X}"], "/a $$HOME $${X}"),
    (["/a", ";"], r"/a \;"),
    (["/a", ""], '/a ""'),
    (["/a", "it's"], "/a \"it's\""),
    (["/a", "tab\there"], '/a "tab\there"'),
])
def test_exec_lines_escape_specifiers_variables_and_quotes(argv, line):
    assert escape.systemd_exec(argv) == line


@pytest.mark.parametrize("name, value, assignment", [
    ("A", "plain", "A=plain"),
    ("A", "two words", '"A=two words"'),
    ("A", 'q"uote', r'"A=q\"uote"'),
    ("A", "100%", "A=100%%"),
    ("A", "$HOME", "A=$HOME"),  # Environment= expands no variables
    ("A", "", "A="),
])
def test_environment_assignments(name, value, assignment):
    assert escape.systemd_env(name, value) == assignment


def test_free_text_escapes_only_specifiers():
    assert escape.systemd_text('50% "done" $x') == '50%% "done" $x'


@pytest.mark.parametrize("text, usec", [
    ("30s", 30_000_000), ("5min", 300_000_000), ("1min 30s", 90_000_000), ("1h", 3_600_000_000),
    ("500ms", 500_000), ("1.5s", 1_500_000), (45, 45_000_000), (0.25, 250_000), ("2 min", 120_000_000),
    ("100us", 100),
])
def test_spans_parse_like_systemd(text, usec):
    assert values.parse_span(text) == usec


@pytest.mark.parametrize("bad", ["fast", "5 parsecs", "", True, None, [], "-5s", -1])
def test_bad_spans_are_refused(bad):
    with pytest.raises(ValueError):
        values.parse_span(bad)


@pytest.mark.parametrize("usec, text", [(300_000_000, "5min"), (90_000_000, "90s"), (1_500_000, "1500ms"),
                                        (3_600_000_000, "1h"), (7, "7us")])
def test_spans_format_exactly(usec, text):
    assert values.format_span(usec) == text
    assert values.parse_span(text) == usec


@pytest.mark.parametrize("text, size", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), (1024, 1024),
                                        ("64K", 65536), ("2GiB", 2 << 30)])
def test_sizes_parse_1024_based(text, size):
    assert values.parse_size(text) == size


def test_memory_limits_accept_percentages_and_infinity_only_where_systemd_does():
    assert values.parse_size("80%", percent=True) == "80%"
    assert values.parse_size("infinity", percent=True) == "infinity"
    for bad in ("80%", "infinity"):
        with pytest.raises(ValueError):
            values.parse_size(bad)
    for bad in ("150%", "0%", "lots", "4X", 0, -1, True):
        with pytest.raises(ValueError):
            values.parse_size(bad, percent=True)


def test_sizes_format_in_the_largest_exact_unit():
    assert [values.format_size(v) for v in (4 << 30, 3 << 29, 1000, "80%")] == ["4G", "1536M", "1000", "80%"]
