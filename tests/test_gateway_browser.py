"""The gateway in a real browser (Debian's chromium driven by Playwright from PyPI; no downloaded
browser build): the login page, a wrong and a right password, the Open button landing on the
portal while a provision run goes (a slow fake server), links between ports, logout, the 503
page turning into the app; and a page on another port of the same IP attacking with the
user's session: an auto-submitted form POST, a fetch POST, an <img> and a WebSocket.

With GATEWAY_SCREENSHOTS=DIR the login page and the portal are saved there as PNG (how the
README's screenshots are made: `GATEWAY_SCREENSHOTS=docs ./tests/run.sh tests/test_gateway_browser.py`).
"""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import blob, sha256
from .fakes.cdn import Fault
from .runtime_harness import free_port, listening
from .test_runtime import PASSWORD, TOKEN, log_text, wait_for

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; tests/run.sh installs it (CI must skip nothing)")
    pytest.skip(f"{what} is missing (tests/run.sh installs it)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (the test extra)")
    if not CHROMIUM.exists():
        _missing("chromium (Debian's package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield launched
        launched.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("GATEWAY_SCREENSHOTS")
    if folder:
        page.set_viewport_size({"width": 900, "height": 640})
        page.screenshot(path=str(Path(folder) / name))


class AttackerSite:
    """A page on another port of the same IP (a co-tenant's server): it attacks our ports with
    whatever the browser adds on its own (the session cookie: same-site)."""

    def __init__(self, runtime):
        sd, ttyd, logdy = (runtime.ports[s] for s in ("sdnext", "ttyd", "logdy"))
        self.pages = {
            "/form": f"""<!doctype html><form id=f method=post action="http://127.0.0.1:{sd}/attack-form">
                <input name=x value=1></form><script>document.getElementById('f').submit()</script>""",
            "/script": f"""<!doctype html><img src="http://127.0.0.1:{logdy}/attack-img"><script>
                const sent = fetch('http://127.0.0.1:{sd}/attack-fetch', {{method: 'POST',
                  credentials: 'include', mode: 'no-cors', body: 'x'}}).then(() => 0, () => 0);
                const opened = new Promise((done) => {{
                  const ws = new WebSocket('ws://127.0.0.1:{ttyd}/ws');
                  ws.onmessage = (m) => done('got ' + m.data);
                  ws.onclose = () => done('closed');
                }});
                Promise.all([sent, opened]).then(([_, ws]) => {{ document.title = 'done, ws ' + ws; }});
                </script>""",
        }
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = pages.get(self.path, "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_login_page_wrong_and_right_password_logout_and_the_503_page(browser, start):
    runtime = start(PASSWORD=PASSWORD, USERNAME="renter")
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{runtime.ports['sdnext']}/")
    assert page.title() == "Log in · SD.Next workspace"
    assert page.input_value("#username") == "renter"
    screenshot(page, "gateway-login.png")
    page.fill("#password", "not-the-password")
    page.click("button[type=submit]")
    assert "Wrong user name or password." in page.inner_text("[role=alert]")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    assert '"service": "sdnext-launch"' in page.content()  # the app behind, at the path asked for
    # One login for every port: the terminal's port opens without asking again.
    page.goto(f"http://127.0.0.1:{runtime.ports['ttyd']}/")
    assert '"service": "ttyd"' in page.content()
    # The apps' own requests carry their own origin and pass: SD.Next's API calls, the file
    # manager's uploads, the log viewer's, the terminal's WebSocket.
    for service, path in (
        ("sdnext", "/sdapi/v1/txt2img"),
        ("filebrowser", "/api/resources/upload.bin?override=false"),
        ("logdy", "/api/status"),
        ("ttyd", "/token"),
    ):
        page.goto(f"http://127.0.0.1:{runtime.ports[service]}/")
        answer = page.evaluate(f"fetch('{path}', {{method: 'POST', body: 'abc'}}).then(r => r.json())")
        assert answer == {"sha256": sha256(b"abc")}, service
    got = page.evaluate(
        """new Promise(done => { const ws = new WebSocket(`ws://${location.host}/ws`);
           ws.onmessage = m => done(m.data); ws.onerror = () => done('error'); })"""
    )
    assert got == "ttyd!"
    # A service that is not answering: the page names it and becomes the app once it is back.
    sdnext = str(runtime.runtime_dir / "service" / "sdnext")
    subprocess.run(["s6-svc", "-d", sdnext], env=runtime.env, check=True)
    wait_for(lambda: not listening(runtime.internal["sdnext"]), 15)
    page.goto(f"http://127.0.0.1:{runtime.ports['sdnext']}/")
    assert "SD.Next is not answering yet" in page.inner_text("body")
    subprocess.run(["s6-svc", "-u", sdnext], env=runtime.env, check=True)
    page.wait_for_function("document.body.innerText.includes('sdnext-launch')", timeout=30_000)
    # Logout ends the session on every port.
    page.goto(f"http://127.0.0.1:{runtime.ports['logdy']}/.gateway/")
    page.click("text=Log out")
    assert "You are logged out." in page.inner_text("body")
    page.goto(f"http://127.0.0.1:{runtime.ports['filebrowser']}/")
    assert page.title() == "Log in · SD.Next workspace"
    context.close()


def test_the_open_button_lands_on_the_portal_while_models_download(
    browser, start, cdn, write_config, tmp_path
):
    cdn.add("/small.safetensors", blob(20_000, seed=5))
    cdn.add("/big.safetensors", blob(5_000_000, seed=6))
    cdn.fault("/big.safetensors", *[Fault(stall_at=2_200_000, stall=60)] * 20)
    config = write_config(
        f'[models.lora]\ndetail-tweaker = "{cdn.url}/small.safetensors"\n'
        f'[models.checkpoints]\nsdxl-base = "{cdn.url}/big.safetensors"\n'
    )
    gpu = tmp_path / "nvidia" / "gpus" / "0000:01:00.0"  # what the NVIDIA runtime mounts
    gpu.mkdir(parents=True)
    (gpu.parent.parent / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14\n")
    (gpu / "information").write_text("Model: \t NVIDIA GeForce RTX 4090\n")
    runtime = start(
        PASSWORD=PASSWORD,
        OPEN_BUTTON_TOKEN=TOKEN,
        PROVISION_URL=str(config),
        NVIDIA_PROC_DIR=str(gpu.parent.parent),
    )
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{runtime.ports['sdnext']}/?token={TOKEN}")
    assert page.url == f"http://127.0.0.1:{runtime.ports['sdnext']}/.gateway/"
    for title in ("SD.Next", "Files", "Terminal", "Logs"):
        assert page.locator(f".service b:text-is('{title}')").count() == 1
    # The portal reloads itself while the run goes; wait for the big file to be under way.
    page.wait_for_function(
        "document.body.innerText.includes('2.0 MiB of 4.8 MiB')", timeout=30_000, polling=500
    )
    text = page.inner_text("body")
    assert "checkpoints/sdxl-base" in text and "downloading" in text and "verified" in text
    assert "NVIDIA GeForce RTX 4090, driver 550.54.14" in text
    screenshot(page, "gateway-portal.png")
    # A link to a sibling port: the session goes along.
    page.click(".service:has-text('Files')")
    assert '"service": "filebrowser"' in page.content()
    assert TOKEN not in log_text(runtime, "guard") + log_text(runtime, "gateway")
    context.close()


def test_a_page_on_another_port_cannot_use_the_session(browser, start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    attacker = AttackerSite(runtime)
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{runtime.ports['sdnext']}/?token={TOKEN}")  # logged in
        page.goto(attacker.url("/form"))  # the form submits itself to SD.Next's port
        page.wait_for_url(f"http://127.0.0.1:{runtime.ports['sdnext']}/attack-form")
        assert "Refused" in page.inner_text("body")
        wait_for(lambda: "refused POST /attack-form" in log_text(runtime, "guard"), 15)
        page.goto(attacker.url("/script"))  # the fetch answered, the WebSocket closed: then the title
        page.wait_for_function("document.title.startsWith('done')", timeout=15_000)
        assert page.title() == "done, ws closed"
        wait_for(lambda: "refused GET /attack-img" in log_text(runtime, "guard"), 15)
        # None of it reached an app.
        for service in ("sdnext", "logdy", "ttyd"):
            assert "/attack-" not in log_text(runtime, service), service
        context.close()
    finally:
        attacker.close()
