"""The status service's page (GET /) in a real headless browser: Debian's chromium driven
from Python with Selenium, against agentkit-status on a real systemd 252.

The page lists every agent of the host with its state as a badge, loads nothing from
anywhere but the status service, and follows a real wake-up live from /events, without a
reload. A screenshot of the page after the wake is kept as a test artefact (in
$AGENTKIT_ARTIFACTS, else the test's tmp_path).

Needs, besides what every e2e test needs: the Debian packages chromium and chromium-driver
(/usr/bin/chromium, /usr/bin/chromedriver) and the Python package selenium. Without them the
test is skipped, except under CI (environment variable CI set), where it fails naming what
is missing. Selenium Manager is never used: it would try to download a driver.

Its own ports (status 18202, agents 18601..18603), so that it can run beside the other
e2e tests' containers, which share the host's network namespace too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest
from helpers import http_get, wait_for

from . import test_fleet
from .test_fleet import install, lab_manifest, request

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STATUS_PORT = 18202
PAGE = f"http://127.0.0.1:{STATUS_PORT}/"
ESSENTIAL = "Base"
WOKEN = "Lazy"     # optional: woken by the test
SLEEPER = "Spare"  # optional: left alone, stays dormant
PORTS = {ESSENTIAL: 18601, WOKEN: 18602, SLEEPER: 18603}
WAIT = 30.0        # seconds any one wait on the browser may take
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def browser_missing() -> str | None:
    """What this test's browser needs and this machine lacks, or None."""
    missing = []
    if importlib.util.find_spec("selenium") is None:
        missing.append("the Python package selenium (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            missing.append(f"{path} (Debian package {package})")
    return "; ".join(missing) or None


pytestmark = pytest.mark.skipif(bool(browser_missing()) and not os.environ.get("CI"),
                                reason=f"status page in a browser: {browser_missing()}")


@pytest.fixture(autouse=True)
def _browser_requirements():
    """Under CI a missing browser fails (before a container is booted), never skips."""
    missing = browser_missing()
    if missing:  # only reached under CI: skipped otherwise
        pytest.fail(f"the status page test cannot run in CI: {missing}", pytrace=False)


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


# --- the lab host ---------------------------------------------------------------------------

def page_lab_manifest(tmp_path: Path) -> Path:
    """test_fleet's lab fleet on its own ports: the status service on 18202, agents on 18601.."""
    manifest = lab_manifest(tmp_path, f"""\
        {ESSENTIAL}:
          essential: true
          port: {PORTS[ESSENTIAL]}
        {WOKEN}:
          port: {PORTS[WOKEN]}
          activation: native
          idle_stop: 5min   # stays active for the rest of the test once woken
          restart: {{burst: 5}}  # 10s // 5min + 1 = 1 wake-up per interval: under the burst
        {SLEEPER}:
          port: {PORTS[SLEEPER]}
          activation: native
          idle_stop: 5min
          restart: {{burst: 5}}
        """)
    fleet = manifest / "fleet.yaml"
    text = fleet.read_text()
    default_host = "  lab: {address: 127.0.0.1}\n"
    assert default_host in text, f"test_fleet.lab_manifest changed its fleet.yaml:\n{text}"
    # Its defaults kept; only the host gains a status port of its own (8202 is another test's).
    fleet.write_text(text.replace(default_host, f"  lab: {{address: 127.0.0.1, status: {{port: {STATUS_PORT}}}}}\n"))
    return manifest


def _health() -> dict | None:
    try:
        code, body = http_get(STATUS_PORT, "/health", timeout=10)
    except OSError:
        return None
    return json.loads(body) if code == 200 else None


@pytest.fixture
def lab(container_factory, tmp_path):
    manifest = page_lab_manifest(tmp_path)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    health = wait_for(_health, f"/health on port {STATUS_PORT} to answer 200", timeout=30)
    assert health["host"] == "lab" and {a["name"] for a in health["agents"]} == set(PORTS), health
    return container


# --- the browser ----------------------------------------------------------------------------

@pytest.fixture
def browser(lab, tmp_path, monkeypatch):
    """Headless chromium under chromedriver, both Debian's; quit at teardown, failed test or not.

    Requests `lab` so that it is torn down before the container is."""
    with chromium(tmp_path, monkeypatch) as driver:
        yield driver


@contextlib.contextmanager
def chromium(tmp_path, monkeypatch):
    """A headless chromium under chromedriver (Debian's), never one Selenium Manager would fetch."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import driver_finder

    def no_selenium_manager(*args, **kwargs):
        raise AssertionError("Selenium Manager was asked for a browser or driver: it would download one")

    monkeypatch.setattr(driver_finder.SeleniumManager, "binary_paths", no_selenium_manager)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox",  # root: chromium's sandbox refuses it
                     f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,900",
                     "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-extensions", "--no-proxy-server"):
        options.add_argument(argument)
    # The CDP network log (every request the page makes) and the console (errors of its script).
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def rows(driver) -> dict[str, dict]:
    """Every agent row of the page: its state attribute, badge and cells, read in one script."""
    return driver.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll("#agents tr[data-agent]")) {
          const badge = tr.children[2].querySelector("span.state");
          out[tr.dataset.agent] = {
            state: tr.dataset.state,
            cells: [...tr.children].map(td => td.textContent),
            badge: badge && {text: badge.textContent, classes: [...badge.classList],
                             background: getComputedStyle(badge).backgroundColor},
          };
        }
        return out;""")


def event_log(driver) -> list[str]:
    """The lines of the page's event log, newest first (as the page shows them)."""
    return driver.execute_script(
        'return [...document.querySelectorAll("#events > div")].map(d => d.textContent);')


def requested_urls(driver) -> list[str]:
    """Every URL the browser was asked for since the last call, from the CDP network log
    (reading the log empties it)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def timed_entries(driver) -> list[str]:
    """The page's own resource timing: its navigation and every resource it fetched."""
    return driver.execute_script(
        'return [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]'
        '.map(e => e.name);')


# What changes on the page, in batches: one batch per task (an /events message, a refresh).
WATCH_CHANGES = """
    window.__changes = [];
    new MutationObserver(records => {
      const batch = [];
      for (const r of records) {
        if (r.type === "attributes") batch.push("state " + r.target.dataset.agent + " " + r.target.dataset.state);
        else if (r.target.id === "events") for (const n of r.addedNodes) batch.push("log " + n.textContent);
      }
      if (batch.length) window.__changes.push(batch);
    }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
"""


def artefact_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("AGENTKIT_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# --- the test -------------------------------------------------------------------------------

def test_the_page_lists_every_agent_and_follows_a_wake_live_without_a_reload(lab, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1)
    # Away from chromium's own start page first, and its requests (chrome://...) drained from
    # the network log: what the log holds from here on is the status page's.
    driver.get("about:blank")
    requested_urls(driver)
    began = time.monotonic()
    driver.get(PAGE)

    # Every agent of the manifest, each with its state as a badge, and the stream connected.
    wait.until(lambda d: set(rows(d)) == set(PORTS), "a row for every agent of the manifest")
    seen = rows(driver)
    assert driver.find_element("id", "host").text == "lab"
    wait.until(lambda d: d.find_element("id", "conn").text == "live", "the page's /events stream to open")
    states = {name: row["state"] for name, row in seen.items()}
    assert states == {ESSENTIAL: "active", WOKEN: "dormant", SLEEPER: "dormant"}, seen
    for name, row in seen.items():
        assert row["cells"][0] == name
        assert row["cells"][1] == ("essential" if name == ESSENTIAL else "optional")
        badge = row["badge"]
        assert badge and badge["text"] == row["state"] and row["state"] in badge["classes"], row
    backgrounds = {row["state"]: row["badge"]["background"] for row in seen.values()}
    assert backgrounds["active"] != backgrounds["dormant"], backgrounds  # coloured by state
    assert "rgba(0, 0, 0, 0)" not in backgrounds.values(), backgrounds  # the page's styles applied
    assert driver.find_element("id", "summary").text == "3 agents: 1 active, 2 dormant"
    opened = time.monotonic() - began

    # A real client wakes one optional agent; the page follows from /events, not a reload:
    # the row element is the same one (a reload would make it stale) and a mark set in the
    # page's window is still there. The page also refreshes from /health every 10 s; a
    # MutationObserver shows the row turned active in the very task that logged the event.
    driver.execute_script("window.__notReloaded = true;" + WATCH_CHANGES)
    woken_row = driver.find_element("css selector", f'#agents tr[data-agent="{WOKEN}"]')
    woke = time.monotonic()
    reply = request(PORTS[WOKEN], {"action": "ping"})
    assert reply["ok"] and reply["agent"] == WOKEN, reply
    wait.until(lambda d: woken_row.get_attribute("data-state") == "active", f"{WOKEN}'s row to turn active")
    shown_active = time.monotonic() - woke
    wait.until(lambda d: any(f"  {WOKEN}  ready" in line for line in event_log(d)),
               f"{WOKEN}'s ready event in the page's event log")
    log = event_log(driver)
    assert any(f"  {WOKEN}  wake" in line for line in log), log
    assert not any(f"  {SLEEPER}  " in line or f"  {ESSENTIAL}  " in line for line in log), log
    assert driver.execute_script("return window.__notReloaded === true;"), "the page was reloaded"
    changes = driver.execute_script("return window.__changes;")
    assert any(f"state {WOKEN} active" in batch and any(line.startswith("log ") and f"  {WOKEN}  ready" in line
                                                        for line in batch) for batch in changes), changes
    assert driver.execute_script('return performance.getEntriesByType("navigation").length;') == 1
    after = rows(driver)
    assert {n: r["state"] for n, r in after.items()} == {ESSENTIAL: "active", WOKEN: "active", SLEEPER: "dormant"}
    assert after[WOKEN]["badge"]["text"] == "active" and "active" in after[WOKEN]["badge"]["classes"]
    assert after[WOKEN]["badge"]["background"] == backgrounds["active"]
    assert driver.find_element("id", "summary").text == "3 agents: 2 active, 1 dormant"
    assert driver.find_element("id", "conn").text == "live"

    # The screenshot of the page after the wake: a test artefact.
    shot = artefact_dir(tmp_path) / "status-page-after-wake.png"
    assert driver.save_screenshot(str(shot)), f"chromium took no screenshot to {shot}"
    data = shot.read_bytes()
    assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC), f"{shot} is not a PNG"
    print(f"\nstatus page screenshot: {shot} ({len(data)} bytes)")

    # Nothing but the status service: every request of the page, and every entry it timed.
    urls = requested_urls(driver)
    assert {PAGE, PAGE + "health", PAGE + "events"} <= {u.split("?")[0] for u in urls}, urls
    elsewhere = [u for u in urls + timed_entries(driver) if not u.startswith(PAGE)]
    assert elsewhere == [], f"the page loaded from elsewhere than the status service: {elsewhere}"

    # Its script ran without an error (a 404 for /favicon.ico is the browser's, not the page's).
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
    assert errors == [], errors
    print(f"page showed every agent {opened:.2f} s after opening; {WOKEN} active on it "
          f"{shown_active:.2f} s after the request that woke it; {len(urls)} requests, all to {PAGE}")
