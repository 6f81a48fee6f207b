"""The gateway from the attacker's side and the renter's, under real s6 and Caddy: requests from
another site or another port of the same IP, a captured cookie replayed from another address,
token and cookie guesses, a guesser sharing the user's address; the login page, logout, the
portal and status.json, the 503 page, HTTPS, and TRUSTED_PROXIES.

Other clients are other loopback addresses (127.0.0.2, ...): the gateway sees them as the
co-tenant or the guesser would be seen.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
from urllib.parse import urlencode

import pytest

from .conftest import blob
from .fakes.cdn import Fault
from .fakes.server import TLS_KEY, TLS_TRUST
from .runtime_harness import PROXIED, listening, make_runtime
from .test_runtime import PASSWORD, TOKEN, log_text, wait_for

pytestmark = pytest.mark.usefixtures("runtime_tools")  # and `start`: both in conftest.py


BROWSER = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "none",
}


class Answer:
    def __init__(self, response: http.client.HTTPResponse):
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def send(
    runtime,
    service: str,
    method: str = "GET",
    path: str = "/",
    headers: dict | None = None,
    body: bytes | None = None,
    source: str = "127.0.0.1",
    tls: bool = False,
    cafile: str | None = None,
) -> Answer:
    """One request to a service's gateway port from a loopback address of our choosing; over
    TLS verified with cafile (default: the test certificate's)."""
    port = runtime.ports[service]
    if tls:
        context = ssl.create_default_context(cafile=cafile or str(TLS_TRUST))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, source_address=(source, 0), context=context
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return Answer(connection.getresponse())
    finally:
        connection.close()


def origin(runtime, service: str) -> str:
    return f"http://127.0.0.1:{runtime.ports[service]}"


def form_login(
    runtime, service="sdnext", password=PASSWORD, source="127.0.0.1", next_path="/.gateway/", cookies=""
):
    body = urlencode({"username": "admin", "password": password, "next": next_path}).encode()
    headers = {"Cookie": cookies} if cookies else {}
    headers |= {
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": origin(runtime, service),
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Accept": "text/html",
    }
    return send(runtime, service, "POST", "/.gateway/login", headers, body, source)


def cookie_of(answer: Answer) -> str:
    """'name=value' of the session cookie an answer set."""
    return answer.headers["Set-Cookie"].split(";", 1)[0]


def ws_headers(runtime, cookie: str, from_origin: str) -> dict:
    return {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Cookie": cookie,
        "Origin": from_origin,
    }


def ws_status(runtime, headers: dict) -> bytes:
    """The status line of a WebSocket upgrade through the gateway, then the body of a refusal."""
    request = "GET /ws HTTP/1.1\r\n" + f"Host: 127.0.0.1:{runtime.ports['ttyd']}\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", runtime.ports["ttyd"]), timeout=10) as sock:
        sock.sendall(request.encode())
        reader = sock.makefile("rb")
        status = reader.readline().rstrip()
        length = 0
        while (line := reader.readline().rstrip()) != b"":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status + b"\n" + (b"" if status.startswith(b"HTTP/1.1 101") else reader.read(length))


def test_requests_from_another_site_or_port_never_reach_the_apps(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    basic = {"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
    cookie = cookie_of(send(runtime, "sdnext", path=f"/?token={TOKEN}"))
    co_tenant = "http://127.0.0.1:9999"  # a page on another port of the same IP
    form = {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Mode": "navigate"}
    # A cross-site form POST, the browser re-sending cached Basic credentials.
    attack = send(
        runtime,
        "sdnext",
        "POST",
        "/sdapi/v1/txt2img",
        basic | form | {"Origin": "http://evil.example"},
        b"x=1",
    )
    assert attack.status == 403 and b"sha256" not in attack.body
    # The same from another port of this IP, with the session cookie: a fetch POST, a form POST.
    for extra in ({"Sec-Fetch-Mode": "cors"}, form):
        attack = send(
            runtime,
            "filebrowser",
            "POST",
            "/api/resources/x",
            {"Cookie": cookie, "Origin": co_tenant} | extra,
            b"x",
        )
        assert attack.status == 403, extra
    # An <img> GET from that page (no Origin on a no-cors GET; the browser says same-site).
    img = {
        "Cookie": cookie,
        "Sec-Fetch-Site": "same-site",
        "Sec-Fetch-Mode": "no-cors",
        "Sec-Fetch-Dest": "image",
    }
    assert send(runtime, "logdy", "GET", "/api/logs", img).status == 403
    # A WebSocket to the terminal from that page; from the terminal's own page it opens.
    refused = ws_status(runtime, ws_headers(runtime, cookie, co_tenant))
    assert refused.startswith(b"HTTP/1.1 403") and b"came from another site" in refused  # the gateway's
    assert ws_status(runtime, ws_headers(runtime, cookie, origin(runtime, "ttyd"))).startswith(
        b"HTTP/1.1 101"
    )
    # ttyd's own --check-origin holds even without the gateway's (the stand-in checks as ttyd).
    direct = http.client.HTTPConnection("127.0.0.1", runtime.internal["ttyd"], timeout=10)
    direct.request("GET", "/ws", headers=ws_headers(runtime, cookie, co_tenant))
    assert direct.getresponse().status == 403
    # What the apps' own pages send passes: their own origin, or a sibling port's; API clients too.
    own = send(
        runtime,
        "sdnext",
        "POST",
        "/sdapi/v1/txt2img",
        {"Cookie": cookie, "Origin": origin(runtime, "sdnext")},
        b"a",
    )
    assert own.status == 200 and "sha256" in json.loads(own.body)
    sibling = {"Cookie": cookie, "Origin": origin(runtime, "filebrowser")}
    assert send(runtime, "sdnext", "POST", "/x", sibling, b"a").status == 200
    assert send(runtime, "sdnext", "POST", "/sdapi/v1/txt2img", basic, b"a").status == 200  # curl
    link = {"Cookie": cookie, "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"}
    assert send(runtime, "ttyd", "GET", "/", link).status == 200  # a link from the portal
    wait_for(
        lambda: (
            "refused POST /sdapi/v1/txt2img from 127.0.0.1: Origin http://evil.example"
            in log_text(runtime, "guard")
        ),
        10,
    )
    # A page that keeps attacking makes one line a minute, not one per request.
    for _ in range(20):
        assert (
            send(runtime, "sdnext", "POST", "/again", {"Origin": "http://evil.example"}, b"x").status == 403
        )
    send(runtime, "sdnext", headers={"Authorization": "Bearer a-marker-guess"})  # a line after them
    wait_for(lambda: "a wrong Bearer token" in log_text(runtime, "guard"), 10)
    assert log_text(runtime, "guard").count("Origin http://evil.example") == 1


def test_a_captured_cookie_is_refused_from_another_address_and_the_replay_is_logged(start):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    cookie = cookie_of(form_login(runtime))
    assert send(runtime, "ttyd", headers={"Cookie": cookie}).status == 200
    replay = send(runtime, "ttyd", headers={"Cookie": cookie}, source="127.0.0.2")
    assert replay.status == 401
    assert (
        send(
            runtime, "ttyd", headers={"Cookie": cookie, "X-Forwarded-For": "127.0.0.1"}, source="127.0.0.2"
        ).status
        == 401
    )
    wait_for(
        lambda: "refused a session cookie made for 127.0.0.1 from 127.0.0.2" in log_text(runtime, "guard"), 10
    )
    assert cookie.split("=", 1)[1] not in log_text(runtime, "guard")
    assert log_text(runtime, "guard").count("made for 127.0.0.1 from 127.0.0.2") == 1, "a repeat is one line"
    assert send(runtime, "ttyd", headers={"Cookie": cookie}).status == 200, (
        "the user's own session still works"
    )


@pytest.mark.parametrize("kind", ["bearer", "query", "cookie"])
def test_token_and_cookie_guesses_are_slowed_and_logged_like_passwords(start, kind):
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN)
    name = cookie_of(send(runtime, "sdnext", path=f"/?token={TOKEN}")).split("=")[0]

    def guess(n: int) -> Answer:
        value = f"guess{n:04d}-{TOKEN[:6]}"
        if kind == "bearer":
            return send(runtime, "ttyd", headers={"Authorization": f"Bearer {value}"}, source="127.0.0.3")
        if kind == "query":
            return send(runtime, "ttyd", path=f"/?token={value}", source="127.0.0.3")
        return send(runtime, "ttyd", headers={"Cookie": f"{name}={value}"}, source="127.0.0.3")

    statuses = [guess(n).status for n in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
    blocked = guess(99)
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1
    # Even the right token waits its turn: the guard checks nothing from a waiting address.
    right = {"bearer": {"Authorization": f"Bearer {TOKEN}"}, "query": {}, "cookie": {}}[kind]
    if right:
        assert send(runtime, "ttyd", headers=right, source="127.0.0.3").status == 429
    wait_for(lambda: "127.0.0.3: too many refused logins" in log_text(runtime, "guard"), 10)
    log = log_text(runtime, "guard")
    assert "from 127.0.0.3 (5 in a row)" in log and "guess0" not in log and TOKEN not in log


def test_a_session_survives_a_guesser_on_its_address_and_a_fresh_login_gets_in_after_the_wait(start):
    runtime = start(PASSWORD=PASSWORD)
    first = form_login(runtime, source="127.0.0.4")  # the user, behind a shared address
    cookie = cookie_of(first)
    device = next(c.split(";")[0] for c in first.headers.get_all("Set-Cookie") if "_device=" in c)
    for n in range(8):  # the guesser, from the same address
        form_login(runtime, password=f"guess-{n}", source="127.0.0.4")
    waiting = form_login(runtime, source="127.0.0.4")
    assert waiting.status == 429 and "Too many refused logins" in waiting.text
    for service in PROXIED:
        assert send(runtime, service, headers={"Cookie": cookie}, source="127.0.0.4").status == 200, service
    # The user's browser logged in here before: its new login is not held up by the guesser.
    again = form_login(runtime, source="127.0.0.4", cookies=device)
    assert again.status == 303, again.text
    forged = device.split(".")[0] + ".0123456789abcdef0123456789abcdef"
    assert form_login(runtime, source="127.0.0.4", cookies=forged).status == 429  # a made-up mark
    # A fresh login from that address is checked once the announced wait is over.
    retry_after = int(waiting.headers["Retry-After"])
    wait_for(lambda: form_login(runtime, source="127.0.0.4").status == 303, retry_after + 10)


def test_the_login_page_a_wrong_and_a_right_password_one_session_for_every_port_and_logout(start):
    runtime = start(PASSWORD=PASSWORD, USERNAME="renter", OPEN_BUTTON_TOKEN=TOKEN)
    page = send(runtime, "filebrowser", path="/files/", headers=BROWSER)
    assert page.status == 401 and "WWW-Authenticate" not in page.headers  # no Basic dialog
    assert page.headers["Content-Type"].startswith("text/html")
    assert (
        "SD.Next workspace" in page.text and 'value="renter"' in page.text and "Open</b> button" in page.text
    )
    assert 'name="next" value="/files/"' in page.text and "Files" in page.text
    api = send(runtime, "filebrowser", path="/api/resources")  # curl: the Basic challenge
    assert api.status == 401 and api.headers["WWW-Authenticate"].startswith("Basic")
    wrong = form_login(runtime, "filebrowser", password="not-it-at-all")
    assert wrong.status == 401 and "Wrong user name or password." in wrong.text
    body = urlencode({"username": "renter", "password": PASSWORD, "next": "/files/"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin(runtime, "filebrowser")}
    right = send(runtime, "filebrowser", "POST", "/.gateway/login", headers, body)
    assert right.status == 303 and right.headers["Location"] == "/files/"
    # Where a login sends the browser stays on this host and inside one header.
    for target, location in (
        ("//evil.example/x", "/evil.example/x"),
        ("/x\r\nSet-Cookie: a=b", "/x%0D%0ASet-Cookie:%20a=b"),
    ):
        body_to = urlencode({"username": "renter", "password": PASSWORD, "next": target}).encode()
        moved = send(runtime, "filebrowser", "POST", "/.gateway/login", headers, body_to)
        assert moved.headers["Location"] == location and "a=b" not in moved.headers.get_all("Set-Cookie")
    cookie = cookie_of(right)
    assert "HttpOnly" in right.headers["Set-Cookie"] and "SameSite=Lax" in right.headers["Set-Cookie"]
    for service in PROXIED:
        answer = send(runtime, service, headers={"Cookie": cookie})
        assert answer.status == 200, service
        seen = json.loads(answer.body)["headers"]
        assert "cookie" not in seen, "the app gets no empty or leftover Cookie header"
    assert "Server" not in page.headers or "Python" not in page.headers["Server"]  # the guard's
    # A login form posted from another site (login CSRF) is refused.
    forged = dict(headers, Origin="http://127.0.0.1:9999")
    assert send(runtime, "filebrowser", "POST", "/.gateway/login", forged, body).status == 403
    out = send(
        runtime,
        "logdy",
        "POST",
        "/.gateway/logout",
        {"Cookie": cookie, "Origin": origin(runtime, "logdy")},
        b"",
    )
    assert (
        out.status == 200 and "You are logged out." in out.text and "Max-Age=0" in out.headers["Set-Cookie"]
    )
    for source in ("127.0.0.1", "127.0.0.2"):
        assert send(runtime, "sdnext", headers={"Cookie": cookie}, source=source).status == 401


def test_the_open_button_lands_on_the_portal_and_status_json_says_what_runs(start, tmp_path):
    gpus = tmp_path / "nvidia"
    (gpus / "gpus" / "0000:01:00.0").mkdir(parents=True)
    (gpus / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
    )
    (gpus / "gpus" / "0000:01:00.0" / "information").write_text(
        "Model: \t\t NVIDIA GeForce RTX 4090\nIRQ: 42\n"
    )
    runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN, NVIDIA_PROC_DIR=str(gpus))
    landing = send(runtime, "sdnext", path=f"/?token={TOKEN}", headers=BROWSER)
    assert landing.status == 302 and landing.headers["Location"] == "/.gateway/"
    cookie = cookie_of(landing)
    portal = send(runtime, "sdnext", path="/.gateway/", headers=BROWSER | {"Cookie": cookie})
    assert portal.status == 200
    for title in ("SD.Next", "Files", "Terminal", "Logs"):
        assert f"<b>{title}</b>" in portal.text
    assert f'href="http://127.0.0.1:{runtime.ports["ttyd"]}/"' in portal.text
    assert "NVIDIA GeForce RTX 4090, driver 550.54.14" in portal.text and "Log out" in portal.text
    status = json.loads(send(runtime, "logdy", path="/.gateway/status.json", headers={"Cookie": cookie}).body)
    assert [(s["name"], s["state"]) for s in status["services"]] == [(s, "up") for s in PROXIED]
    assert status["provisioning"]["state"] == "off" and status["gpu"] == [
        "NVIDIA GeForce RTX 4090, driver 550.54.14"
    ]
    assert send(runtime, "logdy", path="/.gateway/status.json").status == 401  # not without a login
    sdnext = str(runtime.runtime_dir / "service" / "sdnext")
    subprocess.run(["s6-svc", "-d", sdnext], env=runtime.env, check=True)
    wait_for(lambda: not listening(runtime.internal["sdnext"]), 15)
    status = json.loads(send(runtime, "logdy", path="/.gateway/status.json", headers={"Cookie": cookie}).body)
    assert status["services"][0]["state"] in ("stopped", "failed")
    page = send(runtime, "sdnext", path="/", headers=BROWSER | {"Cookie": cookie})
    assert page.status == 503 and page.headers["Retry-After"] == "5"
    assert "SD.Next is not answering yet: it is starting (the first start takes about a minute)" in page.text
    assert '<meta http-equiv="refresh" content="5">' in page.text
    subprocess.run(["s6-svc", "-u", sdnext], env=runtime.env, check=True)
    wait_for(lambda: send(runtime, "sdnext", path="/", headers={"Cookie": cookie}).status == 200, 20)


def test_the_portal_shows_provisioning_as_it_runs(start, cdn, write_config):
    cdn.add("/small.safetensors", blob(20_000, seed=3))
    cdn.add("/big.safetensors", blob(5_000_000, seed=4))
    cdn.fault("/big.safetensors", *[Fault(stall_at=2_200_000, stall=60)] * 20)
    config = write_config(
        f'[models.lora]\nsmall = "{cdn.url}/small.safetensors"\n'
        f'[models.checkpoints]\nbig = "{cdn.url}/big.safetensors"\n'
    )
    runtime = start(PASSWORD=PASSWORD, PROVISION_URL=str(config))
    cookie = cookie_of(form_login(runtime))

    def status() -> dict:
        return json.loads(
            send(runtime, "sdnext", path="/.gateway/status.json", headers={"Cookie": cookie}).body
        )

    def downloading() -> bool:
        items = {i["item"]: i for i in status()["provisioning"]["items"]}
        big, small = items.get("checkpoints/big"), items.get("lora/small")
        return bool(
            big
            and small
            and big["state"] == "downloading"
            and big["done"] >= 2 * 1024 * 1024
            and small["state"] == "verified"
        )

    try:
        wait_for(downloading, 30)
    except AssertionError:
        raise AssertionError(f"{status()}\n{log_text(runtime, 'provision')}") from None
    now = status()["provisioning"]
    assert now["state"] == "running" and now["total"]["size"] == 5_020_000
    portal = send(runtime, "sdnext", path="/.gateway/", headers=BROWSER | {"Cookie": cookie}).text
    assert "checkpoints/big" in portal and "downloading" in portal and "2.0 MiB of 4.8 MiB" in portal
    assert "verified" in portal and '<meta http-equiv="refresh" content="5">' in portal


def test_https_with_a_given_certificate_and_with_vast_ais_instance_certificate(start, tmp_path):
    for env in (
        {"TLS_CERT": str(TLS_TRUST), "TLS_KEY": str(TLS_KEY)},
        {"INSTANCE_TLS_CERT": str(TLS_TRUST), "INSTANCE_TLS_KEY": str(TLS_KEY)},
    ):
        runtime = start(PASSWORD=PASSWORD, OPEN_BUTTON_TOKEN=TOKEN, **env)
        assert "HTTPS on every port" in runtime.console
        landing = send(runtime, "sdnext", path=f"/?token={TOKEN}", tls=True)
        assert landing.status == 302 and "; Secure" in landing.headers["Set-Cookie"]
        assert send(runtime, "ttyd", headers={"Cookie": cookie_of(landing)}, tls=True).status == 200
    runtime = start(PASSWORD=PASSWORD)
    assert "plain HTTP on every port" in runtime.console


def test_https_with_a_self_made_certificate_whose_ca_stays_on_the_workspace(start, tmp_path):
    runtime = start(PASSWORD=PASSWORD, TLS_SELF_SIGNED="true")
    assert "HTTPS on every port with a self-made certificate" in runtime.console
    with pytest.raises(ssl.SSLCertVerificationError):
        send(runtime, "sdnext", tls=True)  # not trusted before its CA is
    unverified = ssl.create_default_context()
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    connection = http.client.HTTPSConnection(
        "127.0.0.1", runtime.ports["sdnext"], timeout=10, context=unverified
    )
    connection.request("GET", "/.gateway/ca.crt")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(connection.getresponse().read())
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    for service in PROXIED:  # trusted now, on every port
        answer = send(
            runtime,
            service,
            tls=True,
            cafile=str(ca),
            headers={"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()},
        )
        assert answer.status == 200, service
    runtime.stop()
    again = start(PASSWORD=PASSWORD, TLS_SELF_SIGNED="true", WORKSPACE=runtime.env["WORKSPACE"])
    assert send(again, "logdy", tls=True, cafile=str(ca)).status == 401, "the same CA after a restart"


def test_behind_trusted_proxies_the_forwarded_address_counts_and_only_theirs(start):
    runtime = start(PASSWORD=PASSWORD, TRUSTED_PROXIES="127.0.0.1/32")
    via_proxy = {"X-Forwarded-For": "198.51.100.7"}
    cookie = cookie_of(form_login_via(runtime, via_proxy))
    assert send(runtime, "sdnext", headers=via_proxy | {"Cookie": cookie}).status == 200
    other_user = {"X-Forwarded-For": "198.51.100.8", "Cookie": cookie}
    assert send(runtime, "sdnext", headers=other_user).status == 401
    # An address that is not a trusted proxy cannot claim to forward for the user.
    assert send(runtime, "sdnext", headers=via_proxy | {"Cookie": cookie}, source="127.0.0.2").status == 401
    wait_for(lambda: "made for 198.51.100.7 from 198.51.100.8" in log_text(runtime, "guard"), 10)
    # A tunnel that rewrites Host keeps the public name in X-Forwarded-Host: its origin is ours;
    # a client that is not a trusted proxy cannot claim one.
    tunnel = {"X-Forwarded-Host": "sd.example.com", "Origin": "https://sd.example.com", "Cookie": cookie}
    assert send(runtime, "sdnext", "POST", "/x", via_proxy | tunnel, b"a").status == 200
    assert send(runtime, "sdnext", "POST", "/x", via_proxy | tunnel, b"a", source="127.0.0.2").status == 403
    # A TLS tunnel in front says so; the cookie is then Secure (a client's own claim is ignored).
    assert (
        "; Secure"
        in form_login_via(runtime, via_proxy | {"X-Forwarded-Proto": "https"}).headers["Set-Cookie"]
    )


def form_login_via(runtime, headers: dict) -> Answer:
    body = urlencode({"username": "admin", "password": PASSWORD, "next": "/"}).encode()
    extra = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin(runtime, "sdnext")}
    return send(runtime, "sdnext", "POST", "/.gateway/login", headers | extra, body)


def test_trusted_proxies_that_are_not_addresses_stop_init_naming_the_value(tmp_path):
    runtime = make_runtime(tmp_path / "c", {"PASSWORD": PASSWORD, "TRUSTED_PROXIES": "10.0.0.0/8 cloudflare"})
    runtime.start()
    assert runtime.process.wait(timeout=20) != 0
    assert "TRUSTED_PROXIES: 'cloudflare' is not an address or CIDR" in runtime.console
