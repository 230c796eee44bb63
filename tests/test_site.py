"""The documentation site: it builds with ``mkdocs build --strict``, and every page works in a real browser.

The browser is the OS's headless Chromium driven by Selenium (``apt-get install chromium
chromium-driver``; ``.ci/run`` installs both). The built site is served from 127.0.0.1 by a server
this test starts; any request for another host fails the test, because the site must work offline.
Screenshots of the home page and of one tutorial page are written to ``$RTK_TEST_ARTIFACTS``
(default: ``test-artifacts/`` in the checkout), which CI keeps.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
TUTORIAL_SHOT = "tutorial/forward.html"


def artifacts_dir() -> Path:
    out = Path(os.environ.get("RTK_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    return out


def test_site_builds_strict_with_every_page_in_the_nav(site):
    pages = sorted(p.relative_to(ROOT / "docs").with_suffix(".html").as_posix()
                   for p in (ROOT / "docs").rglob("*.md"))
    missing = [p for p in pages if not (site / p).is_file()]
    assert not missing, f"pages not built: {missing}"
    assert (site / "api.html").read_text().count('class="doc doc-object') > 5, \
        "the API reference has no documented objects (mkdocstrings rendered nothing)"


def test_site_fetches_nothing_from_the_network_by_construction(site):
    hosts = set()
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for attr in ('src="http', "src='http", 'href="http'):
            for chunk in text.split(attr)[1:]:
                url = "http" + chunk.split('"')[0].split("'")[0]
                if attr.startswith("src") or ".css" in url or "fonts." in url:
                    hosts.add(urlparse(url).netloc)
    assert not hosts, f"the built pages load assets from {sorted(hosts)}"


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "no chromium on PATH: apt-get install -y chromium chromium-driver (.ci/run does)"
    assert Path(CHROMEDRIVER).exists(), f"no chromedriver at {CHROMEDRIVER}: apt-get install -y chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_every_page_renders_loads_its_images_and_is_reached_by_the_nav(site, served, browser):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")
    reached: set[str] = set()
    problems: list[str] = []
    for page in pages:
        browser.get(served + page)
        deadline = time.monotonic() + 20
        state = browser.execute_script("return document.readyState")
        while state != "complete" and time.monotonic() < deadline:   # a loaded machine can lag
            time.sleep(0.2)
            state = browser.execute_script("return document.readyState")
        title = browser.execute_script("const h = document.querySelector('article h1'); return h && h.textContent")
        broken = browser.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        links = browser.execute_script(
            "return [...document.querySelectorAll('nav.md-nav--primary a.md-nav__link[href]')].map(a => a.href)")
        reached.update(urlparse(link).path.lstrip("/") for link in links if link.startswith(served))
        foreign = [u for u in _requests(browser) if not u.startswith((served, "data:", "blob:", "about:"))]
        severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        if state != "complete" or not title:
            problems.append(f"{page}: did not render (readyState {state}, h1 {title!r})")
        if broken:
            problems.append(f"{page}: images that did not load: {broken}")
        if foreign:
            problems.append(f"{page}: requested non-local URLs: {foreign}")
        if severe:
            problems.append(f"{page}: browser errors: {severe}")
        if page == "index.html":
            browser.save_screenshot(str(artifacts_dir() / "site-home.png"))
        if page == TUTORIAL_SHOT:
            browser.save_screenshot(str(artifacts_dir() / "site-tutorial.png"))
    unreached = sorted(set(pages) - {r or "index.html" for r in reached} - {"404.html"})
    assert not problems, "\n".join(problems)
    assert not unreached, f"pages the navigation does not reach: {unreached}"
    assert (artifacts_dir() / "site-home.png").stat().st_size > 10_000
    assert (artifacts_dir() / "site-tutorial.png").stat().st_size > 10_000
