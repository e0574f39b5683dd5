"""The documentation site, built by docs/build.sh and read in a real browser (Debian's chromium, headless, driven
by selenium through chromedriver), served from 127.0.0.1 with nothing else reachable:
- the build succeeds with warnings as errors;
- every page loads with no console error, no failed request and no request to another host (the site is offline);
- the search finds "relative position bias";
- each tutorial shows every figure its stored notebook holds (images with a non-zero natural size);
- the CLI reference lists every subcommand of `refvit`;
- screenshots of the home page and a tutorial are saved (CI: under its log folder, $REFVIT_CI_ARTIFACTS).

Every test is marked needs_docs: it skips, saying what is missing, without the `docs` extra or chromium, and CI's
docs stage (REFVIT_CI_STAGE=docs) fails if one skips. REFVIT_DOCS_SITE names a site already built by docs/build.sh
(CI builds it in its own step); otherwise the site is built here, into a temporary folder.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.needs_docs

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1280,1600")
TUTORIALS = sorted(p.stem for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.ipynb"))


def missing_tools() -> str | None:
    missing = [name for name in ("sphinx", "myst_nb", "pydata_sphinx_theme", "sphinxarg", "selenium")
               if importlib.util.find_spec(name) is None]
    missing += [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (f"needs the docs extra and Debian's chromium ({', '.join(missing)} missing): "
                f"pip install \".[docs]\"; apt-get install chromium chromium-driver")
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    built = os.environ.get("REFVIT_DOCS_SITE")
    if built:
        site = Path(built)
        assert (site / "index.html").is_file(), f"REFVIT_DOCS_SITE={built}: no index.html (run bash docs/build.sh)"
        return site
    out = tmp_path_factory.mktemp("site") / "html"
    proc = subprocess.run(["bash", "docs/build.sh"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DOCS_OUT": str(out)})
    assert proc.returncode == 0, f"docs/build.sh failed (warnings are errors):\n{proc.stdout[-4000:]}" \
                                 f"{proc.stderr[-4000:]}"
    return out


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(QuietHandler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.get("about:blank")
    time.sleep(1)  # let the browser's own start-up requests finish before the first page is watched
    yield driver
    driver.quit()


def visit(driver, url: str, origin: str) -> list[str]:
    """Load url; the problems seen while loading it: console errors, failed or refused requests, other hosts."""
    driver.get_log("performance")  # drop what came before
    driver.get_log("browser")
    driver.get(url)
    wait_for(driver, lambda: driver.execute_script("return document.readyState") == "complete")
    problems: list[str] = []
    urls: dict = {}  # request id -> url, for the requests this visit sent
    done: set = set()  # request ids finished or failed
    quiet_since, deadline = time.monotonic(), time.monotonic() + 30
    # read the network events until every request the page sent has ended and nothing new came for 1 s: the
    # scripts start late requests (the search index, images) after the load event
    while time.monotonic() < deadline:
        entries = driver.get_log("performance")
        if entries:
            quiet_since = time.monotonic()
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            method, params = message["method"], message.get("params", {})
            request_id = params.get("requestId")
            if method == "Network.requestWillBeSent":
                request_url = urls[request_id] = params["request"]["url"]
                if (urlsplit(request_url).scheme in ("http", "https", "ws", "wss")
                        and not request_url.startswith(origin + "/")):
                    problems.append(f"request to another host: {request_url}")
            elif method == "Network.loadingFinished":
                done.add(request_id)
            elif method == "Network.loadingFailed":
                done.add(request_id)
                # (a request sent before this visit, by the browser's start-up, is not this page's)
                if request_id in urls and not params.get("canceled"):
                    problems.append(f"failed request: {params.get('errorText')} ({params.get('type')}) "
                                    f"{urls[request_id]}")
            elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
                problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        pending = [u for rid, u in urls.items() if rid not in done and urlsplit(u).scheme in ("http", "https")]
        if not pending and time.monotonic() - quiet_since > 1.0:
            break
        time.sleep(0.05)
    else:
        problems.append(f"requests still pending after 30 s: {pending}")
    problems += [f"console {e['level']}: {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return problems


def wait_for(driver, condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s on {driver.current_url}")


def pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).parts[0].startswith("_"))


def test_every_page_loads_cleanly_and_offline(site, server, browser):
    names = pages(site)
    expected = {"index.html", "api.html", "cli.html", "porting.html", "speed.html", "security.html", "golden.html",
                "quirks.html", "DESIGN.html", "contributing.html", "tutorials/index.html", "guide/index.html",
                *(f"tutorials/{t}.html" for t in TUTORIALS)}
    assert expected <= set(names), sorted(expected - set(names))
    problems = {name: found for name in names if (found := visit(browser, f"{server}/{name}", server))}
    assert not problems, json.dumps(problems, indent=1)


def test_search_finds_relative_position_bias(server, browser):
    problems = visit(browser, f"{server}/search.html?q=relative+position+bias", server)
    assert not problems, problems
    wait_for(browser, lambda: browser.execute_script(
        "const s = document.querySelector('#search-results p.search-summary, #search-results .search-summary');"
        "return s !== null && s.textContent.length > 0 && !/searching/i.test(s.textContent);"))
    hits = browser.execute_script(
        "return Array.from(document.querySelectorAll('#search-results ul.search li a')).map(a => a.href);")
    assert hits, "the search for 'relative position bias' found nothing"
    assert any("03_beit" in hit for hit in hits), hits  # the BEiT tutorial builds the relative position bias


def notebook_images(name: str) -> int:
    cells = json.loads((ROOT / "tutorials" / f"{name}.ipynb").read_text())["cells"]
    return sum(1 for cell in cells for out in cell.get("outputs", [])
               if any(mime.startswith("image/") for mime in out.get("data", {})))


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_shows_its_figures(name, server, browser):
    problems = visit(browser, f"{server}/tutorials/{name}.html", server)
    assert not problems, problems
    browser.execute_script("document.querySelectorAll('article img').forEach(i => i.loading = 'eager');")
    wait_for(browser, lambda: browser.execute_script(
        "return Array.from(document.querySelectorAll('article img')).every(i => i.complete);"))
    sizes = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img')).map(i => [i.naturalWidth, i.naturalHeight]);")
    stored = notebook_images(name)
    assert stored >= 1, f"{name}.ipynb has no stored figure"
    assert len(sizes) == stored, f"{name}: {len(sizes)} images shown, {stored} stored in the notebook"
    assert all(w > 0 and h > 0 for w, h in sizes), sizes


def test_cli_reference_lists_every_subcommand(server, browser):
    sys.path.insert(0, str(ROOT))
    from refvit.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    problems = visit(browser, f"{server}/cli.html", server)
    assert not problems, problems
    headings = browser.execute_script(
        "return Array.from(document.querySelectorAll('article h2, article h3')).map(h => h.textContent.trim());")
    listed = {h.rstrip("#¶ ").strip() for h in headings}
    missing = [name for name in sub.choices if name not in listed]
    assert not missing, f"subcommands not in the CLI reference: {missing}; headings: {sorted(listed)}"


def test_screenshots_of_home_and_a_tutorial(server, browser, tmp_path):
    folder = Path(os.environ.get("REFVIT_CI_ARTIFACTS") or tmp_path) / "docs-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for page, file in (("index.html", "home.png"), (f"tutorials/{TUTORIALS[0]}.html", f"{TUTORIALS[0]}.png")):
        assert not visit(browser, f"{server}/{page}", server)
        path = folder / file
        assert browser.save_screenshot(str(path)), path
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (path, len(data))
        print(f"screenshot: {path}", file=sys.stderr)
