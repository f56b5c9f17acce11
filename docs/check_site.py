"""Opens every page of the built docs site in headless Chromium, as a reader would.

    mkdocs build --strict && python docs/check_site.py site [--screenshots DIR]

Serves the built site on 127.0.0.1 (a free port), loads each page (every ``index.html`` of the
build) and fails when the server answered 404 for anything the page requested (a page, image,
stylesheet or script) or when the browser console logged an error. With ``--screenshots DIR`` it
also saves a full-width PNG of each page. Needs ``selenium`` (the ``docs`` extra) and Debian's
``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path

CHROMEDRIVER_NAMES = ("chromedriver",)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WINDOW = (1280, 900)  # CSS pixels of the screenshots
PAGE_LOAD_TIMEOUT_S = 30


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) found on PATH, or None."""
    chromium = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = next(filter(None, map(shutil.which, CHROMEDRIVER_NAMES)), None)
    return (chromium, driver) if chromium and driver else None


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records every path answered with 404."""

    not_found: list[str]

    def send_error(self, code, message=None, explain=None):
        if code == 404:
            self.not_found.append(self.path)
        super().send_error(code, message, explain)

    def log_message(self, *args) -> None:  # quiet: failures are reported at the end
        pass


def check_site(site: Path, screenshots: Path | None = None) -> list[str]:
    """Loads every page of ``site``; returns the problems found (empty: all pages are fine)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    pages = sorted(p.relative_to(site).parent.as_posix() for p in site.rglob("index.html"))
    not_found: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"not_found": not_found}), directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)  # no driver download
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    problems = []
    try:
        for page in pages:
            url = f"{base}/{'' if page == '.' else page + '/'}"
            before, problems_before = len(not_found), len(problems)
            driver.get(url)
            title = driver.title
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            problems += [f"{url}: console error: {message}" for message in errors]
            problems += [f"{url}: 404 for {path}" for path in not_found[before:]]
            if not title or title.startswith("404"):
                problems.append(f"{url}: no page (title {title!r})")
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                name = "home" if page == "." else page.replace("/", "_")
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(WINDOW[0], min(max(height, WINDOW[1]), 6000))
                driver.save_screenshot(str(screenshots / f"{name}.png"))
                driver.set_window_size(*WINDOW)
            print(f"{'ok  ' if len(problems) == problems_before else 'FAIL'} {url}", flush=True)
    finally:
        driver.quit()
        server.shutdown()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built site (mkdocs build's site/ folder)")
    parser.add_argument("--screenshots", type=Path, help="save a PNG of each page here")
    args = parser.parse_args()
    if not (args.site / "index.html").is_file():
        print(f"error: no {args.site / 'index.html'}: run `mkdocs build --strict` first", file=sys.stderr)
        return 2
    problems = check_site(args.site, args.screenshots)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s) in {args.site}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
