"""The login guard's rules, on a clock the test moves: five free refusals per address, then a
wait that doubles with each further one, cleared by a good login, forgotten after 15 minutes."""

from __future__ import annotations

import base64
import importlib.util
import sys

from .runtime_harness import RUNTIME

_spec = importlib.util.spec_from_file_location("login_guard", RUNTIME / "lib" / "login_guard.py")
login_guard = importlib.util.module_from_spec(_spec)
sys.modules["login_guard"] = login_guard  # dataclasses look their module up there
_spec.loader.exec_module(login_guard)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_guard():
    login = login_guard.login_record("admin", "right-password-123")
    clock = Clock()
    return login_guard.Guard(bytes.fromhex(login["key"]), login["digest"], clock=clock), clock


def test_waits_double_after_five_refusals_and_a_good_login_clears_them():
    guard, clock = make_guard()
    wrong, right = basic("admin", "nope"), basic("admin", "right-password-123")
    assert [guard.check(wrong, "203.0.113.9")[0] for _ in range(5)] == [401] * 5
    assert guard.check(right, "203.0.113.9") == (429, 1.0)
    waits = []
    for _ in range(4):
        clock.now += guard.check(wrong, "203.0.113.9")[1]  # wait out the block, then guess again
        assert guard.check(wrong, "203.0.113.9")[0] == 401
        waits.append(guard.check(wrong, "203.0.113.9")[1])
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert guard.check(right, "198.51.100.1") == (200, 0.0), "another address is not slowed"
    clock.now += 16
    assert guard.check(right, "203.0.113.9") == (200, 0.0)
    assert guard.failures("203.0.113.9") == 0


def test_the_wait_is_capped_and_forgotten_after_a_quiet_quarter_hour():
    guard, clock = make_guard()
    wrong = basic("admin", "nope")
    for _ in range(40):
        clock.now += guard.check(wrong, "203.0.113.9")[1]
        guard.check(wrong, "203.0.113.9")
    assert guard.check(wrong, "203.0.113.9") == (429, login_guard.MAX_WAIT)
    clock.now += login_guard.FORGET_AFTER + 1
    assert guard.check(wrong, "203.0.113.9") == (401, 0.0)
    assert guard.failures("203.0.113.9") == 1


def test_no_credentials_is_not_a_refusal_and_garbage_is_one():
    guard, _ = make_guard()
    assert guard.check(None, "203.0.113.9") == (401, 0.0)
    assert guard.check("Bearer x", "203.0.113.9") == (401, 0.0)
    assert guard.failures("203.0.113.9") == 0
    assert guard.check("Basic !!!not-base64", "203.0.113.9") == (401, 0.0)
    assert guard.check(basic("root", "right-password-123"), "203.0.113.9") == (401, 0.0)
    assert guard.failures("203.0.113.9") == 2


def test_memory_stays_bounded_under_many_addresses(monkeypatch):
    monkeypatch.setattr(login_guard, "MAX_CLIENTS", 100)
    guard, clock = make_guard()
    for n in range(300):
        clock.now += 0.001
        guard.check(basic("admin", "nope"), f"2001:db8::{n:x}")
    assert len(guard.clients) <= 101
    assert guard.failures("2001:db8::12b") == 1, "the newest are kept"
