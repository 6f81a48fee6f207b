"""The login guard's rules on a clock the test moves (five free refusals per address, then a
wait that doubles; a limit across addresses; a repeated wrong value counts once), its sessions
(bound to an address, ended by logout, kept across a restart of the guard, stored hashed), and
the origin rule that keeps other sites and other ports of the same IP out."""

from __future__ import annotations

import base64
import importlib.util
import json
import sys

from .runtime_harness import RUNTIME


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, RUNTIME / "lib" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


login_guard = _load("login_guard")
gateway_origin = _load("gateway_origin")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def make_login(token: str = ""):
    record = login_guard.login_record("admin", "right-password-123", token)
    return login_guard.Login(
        bytes.fromhex(record["key"]), record["user"], record["digest"], record.get("token_digest")
    )


def test_the_login_checks_password_basic_and_token_by_keyed_hash():
    login = make_login("the-open-button-token")
    assert login.password_ok("admin", "right-password-123")
    assert not login.password_ok("root", "right-password-123") and not login.password_ok("admin", "")
    assert login.basic_ok(basic("admin", "right-password-123"))
    assert not login.basic_ok("!!!not-base64") and not login.basic_ok(basic("admin", "nope"))
    assert login.token_ok("the-open-button-token") and not login.token_ok("the-open-button-toke")
    assert not make_login().token_ok(""), "no token set: no token is right"
    record = login_guard.login_record("admin", "right-password-123", "the-open-button-token")
    assert "right-password-123" not in json.dumps(record) and "the-open-button-token" not in json.dumps(
        record
    )


def test_waits_double_after_five_refusals_and_a_good_login_clears_them():
    clock = Clock()
    limiter = login_guard.Limiter(clock)
    for n in range(5):
        assert limiter.wait("203.0.113.9") == 0
        assert limiter.refused("203.0.113.9", f"guess-{n}") == n + 1
    assert limiter.wait("203.0.113.9") == 1.0
    waits = []
    for n in range(4):
        clock.now += limiter.wait("203.0.113.9")  # wait out the block, then guess again
        limiter.refused("203.0.113.9", f"more-{n}")
        waits.append(limiter.wait("203.0.113.9"))
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert limiter.wait("198.51.100.1") == 0, "another address is not slowed"
    limiter.granted("203.0.113.9")
    assert limiter.wait("203.0.113.9") == 0 and limiter.failures("203.0.113.9") == 0


def test_the_same_wrong_value_again_is_not_a_new_guess():
    limiter = login_guard.Limiter(Clock())
    counted = [limiter.refused("203.0.113.9", "cookie:stale-session") for _ in range(50)]
    assert counted == [1] + [None] * 49  # a stale cookie on every request of a page: one refusal
    assert limiter.failures("203.0.113.9") == 1 and limiter.wait("203.0.113.9") == 0


def test_the_wait_is_capped_and_forgotten_after_a_quiet_quarter_hour():
    clock = Clock()
    limiter = login_guard.Limiter(clock)
    for n in range(40):
        clock.now += limiter.wait("203.0.113.9")
        limiter.refused("203.0.113.9", f"guess-{n}")
    assert limiter.wait("203.0.113.9") == login_guard.MAX_WAIT
    clock.now += login_guard.FORGET_AFTER + 1
    assert limiter.wait("203.0.113.9") == 0
    assert limiter.refused("203.0.113.9", "again") == 1


def test_many_addresses_together_are_limited_too():
    clock = Clock()
    limiter = login_guard.Limiter(clock)
    # 20 addresses, 4 guesses each: none reaches its own limit, together they pass the global one.
    guesses = 0
    for n in range(20):
        for g in range(4):
            clock.now += 0.01
            limiter.refused(f"198.51.100.{n}", f"guess-{n}-{g}")
            guesses += 1
    assert guesses > login_guard.GLOBAL_FREE
    assert limiter.wait("198.51.100.99") > 0, "a fresh address waits too once the whole count is over"
    assert limiter.wait("198.51.100.99") <= login_guard.GLOBAL_MAX_WAIT


def test_memory_stays_bounded_under_many_addresses(monkeypatch):
    monkeypatch.setattr(login_guard, "MAX_CLIENTS", 100)
    clock = Clock()
    limiter = login_guard.Limiter(clock)
    for n in range(300):
        clock.now += 0.001
        limiter.refused(f"2001:db8::{n:x}", "nope")
        limiter.wait(f"2001:db8::{n:x}")
    assert len(limiter.clients) <= 101
    assert limiter.failures("2001:db8::12b") == 1, "the newest are kept"


def test_sessions_are_bound_to_their_address_end_on_logout_and_survive_a_restart(tmp_path):
    clock = Clock()
    path = tmp_path / "sessions.json"
    sessions = login_guard.Sessions(path, clock)
    session = sessions.create("203.0.113.9")
    assert sessions.lookup(session).address == "203.0.113.9"
    assert session not in path.read_text(), "only a hash of the id is kept"
    again = login_guard.Sessions(path, clock)  # the guard restarted
    assert again.lookup(session).address == "203.0.113.9"
    assert again.end(session) and again.lookup(session) is None
    assert login_guard.Sessions(path, clock).lookup(session) is None
    old = again.create("203.0.113.9")
    clock.now += login_guard.MAX_AGE + 1
    assert again.lookup(old) is None
    assert again.lookup("a-guessed-value") is None


SIBLINGS = {8010, 7010, 7020, 7030}


def judge(method: str, host: str = "203.0.113.5:8010", **headers: str):
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return gateway_origin.judge(method, headers, [host], SIBLINGS).allowed


def test_unsafe_requests_and_websockets_need_this_containers_own_origin():
    own, sibling = "http://203.0.113.5:8010", "http://203.0.113.5:7020"
    assert judge("POST", Origin=own) and judge("POST", Origin=sibling)
    assert judge("GET", Upgrade="websocket", Origin=own)
    assert not judge("POST", Origin="http://evil.example")  # another site
    assert not judge("POST", Origin="http://203.0.113.5:9999")  # a co-tenant on another port
    assert not judge("GET", Upgrade="websocket", Origin="http://203.0.113.5:9999")
    assert not judge("POST", Origin="null")
    assert not judge("POST", Origin="http://203.0.113.6:8010")  # another host on our port number
    # Behind a TLS proxy or tunnel: no port in Host or Origin, the default port either way.
    assert judge("POST", host="sd.example.com", Origin="https://sd.example.com")
    assert not judge("POST", host="sd.example.com", Origin="https://evil.example.com")


def test_without_origin_only_navigations_come_from_elsewhere_and_non_browsers_pass():
    assert judge("POST")  # curl, a script with Basic or Bearer
    assert judge("POST", Sec_Fetch_Site="same-origin")
    assert judge("GET", Sec_Fetch_Site="same-site", Sec_Fetch_Mode="navigate")  # a link from the portal
    assert judge("GET", Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate")  # the host's console
    assert not judge("GET", Sec_Fetch_Site="same-site", Sec_Fetch_Mode="no-cors")  # an <img> elsewhere
    assert not judge("POST", Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate")


def test_a_known_device_is_limited_on_its_own_and_only_this_boot_can_sign_one():
    login, next_boot = make_login(), make_login()
    assert login.device_mark("browser-1") == login.device_mark("browser-1")
    assert login.device_mark("browser-1") != login.device_mark("browser-2")
    assert login.device_mark("browser-1") != next_boot.device_mark("browser-1")
    clock = Clock()
    limiter = login_guard.Limiter(clock)
    for n in range(60):  # guessers everywhere: the count across addresses is over
        limiter.refused(f"198.51.100.{n % 10}", f"guess-{n}")
    assert limiter.wait("203.0.113.9") > 0
    assert limiter.wait("device browser-1", everyone=False) == 0


def test_a_session_is_the_same_client_on_its_address_or_its_ipv6_64():
    session = login_guard.Session("2001:db8:1:2:aaaa::1", 0.0)
    assert session.used_from("2001:db8:1:2:bbbb::7")  # a new privacy address, same network
    assert not session.used_from("2001:db8:1:3::1") and not session.used_from("203.0.113.9")
    assert login_guard.Session("203.0.113.9", 0.0).used_from("203.0.113.9")
    assert not login_guard.Session("203.0.113.9", 0.0).used_from("203.0.113.10")
