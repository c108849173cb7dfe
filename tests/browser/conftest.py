"""Real-browser test harness: Debian's Chromium driven by Playwright, pages served by a real ASGI
server, and the upstream opentelemetry-js bundle built from npm.

Fixtures (the root conftest adds `db_url`, `start_bridge`, `bridge`, `rows` and `uvicorn_serving`):

- `chromium` (session): the path of Debian's Chromium, apt-installed if missing (CI runs as
  root). Fails, never skips, when it cannot be had.
- `browser` (module): a headless Playwright `Browser` on that Chromium, launched with the flags
  that keep it off the (closed) network. Never `playwright install`: no browser download.
- `page` (function): a fresh context and page, closed after the test. Console messages and page
  errors are printed at teardown, so a failing test shows what the page said.
- `site` (function): `site(root=None, files=None, routes=None, app=None)` -> `Site`, a real
  uvicorn server on a free 127.0.0.1 port in a background thread, stopped after the test.
  `site.url` is its origin (`http://127.0.0.1:PORT`); `site.url_for("/x.html")` a full URL.
  It serves, first match wins:
    1. `files`: `{"/index.html": "<html>..." | b"..." | Path}`, bodies with a content type
       guessed from the path;
    2. `routes`: `{"/api/x": endpoint}` (a Starlette endpoint, sync or async: request ->
       response) or a list of Starlette routes;
    3. `app`: any ASGI app (e.g. a Starlette app instrumented with
       `otel_bridge.instrumentation.asgi.instrument_app` and an SDK `TracerProvider` exporting
       to `bridge.endpoint`), mounted at "/" behind 1. and 2., so the page and its scripts are
       not served through the instrumentation and only the API lands rows; or
    4. `root`: a directory of static files (`index.html` for "/").
  `/favicon.ico` (which Chromium asks every origin for) is answered with an empty 204 unless
  `files` or `routes` serve it, so it never reaches `app` or `root`.
  The page's origin is `site.url`: start the receiver with
  `start_bridge(db_url, OTEL_BRIDGE_CORS_ORIGINS=site.url)` once the site is up, or "*".
- `otel_js_bundle` (session): the path of `tests/browser/otel_js/entry.js` bundled (esbuild,
  IIFE) with the exact @opentelemetry packages of `otel_js/package-lock.json`, built with
  `npm ci` in a cache directory outside the repository (`$XDG_CACHE_HOME` or `~/.cache`,
  `otel-bridge-tests/otel-js-<hash>/`) and reused while the lock and entry are unchanged.

Waiting for rows: `wait_for_rows(url, sql, predicate, timeout)` (a fixture, importlib mode)
polls `rows` until the predicate holds and returns the last result either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mimetypes
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).resolve().parent
OTEL_JS = HERE / "otel_js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # No traffic of its own: this machine reaches no network but the package registries.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


# --- Chromium and Playwright -------------------------------------------------------------------
def _apt_install(package: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package],
                          capture_output=True, text=True, env=env, timeout=900)  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium (`apt-get install chromium` if it is missing)."""
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None:
            pytest.fail(f"{CHROMIUM} is missing and there is no apt-get to install it; "
                        "install Debian's `chromium` package", pytrace=False)  # fmt: skip
        done = _apt_install("chromium")
        if done.returncode != 0:  # an old or missing package list: update once, then retry
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, timeout=900)
            done = _apt_install("chromium")
        if done.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(f"could not install Debian's chromium (needs root and the Debian mirror): "
                        f"{(done.stderr or done.stdout)[-2000:]}", pytrace=False)  # fmt: skip
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """A headless Chromium under Playwright (the `playwright` package of the `dev` extra).
    Per module, not per session: Playwright's sync API keeps an asyncio loop running in the main
    thread while it lives, which would break `asyncio.run()` in every test after the browser's."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install -e '.[dev]'`", pytrace=False)
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new context and page per test; what the page logged is printed at teardown."""
    context = browser.new_context()
    new_page = context.new_page()
    said: list[str] = []
    new_page.on("console", lambda m: said.append(f"console.{m.type}: {m.text}"))
    new_page.on("pageerror", lambda e: said.append(f"pageerror: {e}"))
    new_page.on("requestfailed", lambda r: said.append(f"requestfailed: {r.method} {r.url} {r.failure}"))
    yield new_page
    context.close()
    if said:
        print("\n".join(["--- what the page said ---", *said]))


# --- Serving pages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    url: str  # the origin, http://127.0.0.1:PORT
    app: Any

    def url_for(self, path: str = "/") -> str:
        return self.url + (path if path.startswith("/") else "/" + path)


def _file_route(path: str, body: str | bytes | Path) -> Route:
    content = body.read_bytes() if isinstance(body, Path) else body
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/javascript", "application/json"):
        media_type += "; charset=utf-8"

    def serve(request: Any) -> Response:
        return Response(content, media_type=media_type, headers={"cache-control": "no-store"})

    return Route(path, serve, methods=["GET", "HEAD"])


SiteFactory = Callable[..., Site]


@pytest.fixture
def site(uvicorn_serving: Any) -> Iterator[SiteFactory]:
    """`site(root=None, files=None, routes=None, app=None)` -> a served `Site` (see the module doc)."""
    with contextlib.ExitStack() as stack:

        def serve(root: str | Path | None = None, files: Mapping[str, str | bytes | Path] | None = None,
                  routes: Mapping[str, Callable[..., Any]] | Sequence[BaseRoute] | None = None,
                  app: Any = None) -> Site:  # fmt: skip
            served: list[BaseRoute] = [_file_route(path, body) for path, body in (files or {}).items()]
            if isinstance(routes, Mapping):
                served += [Route(path, endpoint, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
                           for path, endpoint in routes.items()]  # fmt: skip
            else:
                served += list(routes or ())
            # Chromium asks every origin for /favicon.ico: answered here, not by `app`/`root`.
            served.append(Route("/favicon.ico", lambda request: Response(status_code=204)))
            if app is not None:
                served.append(Mount("/", app=app))
            elif root is not None:
                served.append(Mount("/", app=StaticFiles(directory=str(root), html=True)))
            whole = Starlette(routes=served)
            return Site(stack.enter_context(uvicorn_serving(whole)), whole)

        yield serve


# --- The opentelemetry-js bundle ----------------------------------------------------------------
def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "otel-bridge-tests"


def _run(command: list[str], cwd: Path) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        pytest.fail(f"{command[0]} is not installed: the browser tests need Node.js and npm", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed in {cwd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
                    pytrace=False)  # fmt: skip


@pytest.fixture(scope="session")
def otel_js_bundle() -> Path:
    """`otel_js/entry.js` bundled with the locked opentelemetry-js packages (cached build)."""
    lock = (OTEL_JS / "package.json").read_bytes() + (OTEL_JS / "package-lock.json").read_bytes()
    entry = (OTEL_JS / "entry.js").read_bytes()
    work = _cache_root() / f"otel-js-{hashlib.sha256(lock).hexdigest()[:16]}"
    bundle = work / f"bundle-{hashlib.sha256(entry).hexdigest()[:16]}.js"
    if bundle.exists():
        return bundle
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as guard:  # parallel test runs build once
        fcntl.flock(guard, fcntl.LOCK_EX)
        if bundle.exists():
            return bundle
        if not (work / "node_modules" / ".installed").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copyfile(OTEL_JS / name, work / name)
            _run(["npm", "ci", "--no-audit", "--no-fund"], work)
            (work / "node_modules" / ".installed").touch()
        (work / "entry.js").write_bytes(entry)
        partial = bundle.with_suffix(".partial.js")
        _run(["npx", "--no-install", "esbuild", "entry.js", "--bundle", "--format=iife",
              f"--outfile={partial.name}", "--minify"], work)  # fmt: skip
        partial.replace(bundle)
    return bundle


# --- Rows ---------------------------------------------------------------------------------------
@pytest.fixture
def wait_for_rows(rows: Any) -> Callable[..., list[tuple[Any, ...]]]:
    """`wait_for_rows(url, sql, predicate=bool, timeout=15)`: poll until `predicate(result)`."""

    def wait(url: str, sql: str, predicate: Callable[[list[tuple[Any, ...]]], bool] = bool,
             timeout: float = 15.0) -> list[tuple[Any, ...]]:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            result: list[tuple[Any, ...]] = rows(url, sql)
            if predicate(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.1)

    return wait

