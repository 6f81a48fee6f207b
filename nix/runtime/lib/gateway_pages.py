"""The HTML the gateway itself serves under /.gateway/: the login page, the portal and the
401/403/429/503 pages. One style, inline: no external font, script or stylesheet (the container
may have no internet), and nothing needs JavaScript.
"""

from __future__ import annotations

import html
import time

PRODUCT = "SD.Next workspace"

STYLE = """
:root{color-scheme:light dark;--fg:#1d2330;--muted:#5b6478;--bg:#f4f5f8;--card:#fff;--line:#d9dce4;
--accent:#3b5bdb;--ok:#2b8a3e;--warn:#b35c00;--bad:#c92a2a}
@media (prefers-color-scheme:dark){:root{--fg:#e4e7ee;--muted:#9aa3b5;--bg:#14171d;--card:#1d212a;
--line:#333a47;--accent:#748ffc;--ok:#51cf66;--warn:#ffa94d;--bad:#ff6b6b}}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--fg)}main{max-width:880px;margin:0 auto;padding:32px 20px}
header{display:flex;align-items:center;justify-content:space-between;gap:12px;margin-bottom:20px}
h1{font-size:22px;margin:0}h2{font-size:16px;margin:28px 0 10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:20px}
.narrow{max-width:420px;margin:8vh auto 0}label{display:block;margin:12px 0 4px;font-weight:600}
input{width:100%;padding:9px 10px;font:inherit;border:1px solid var(--line);border-radius:6px;
background:var(--bg);color:var(--fg)}button,.button{display:inline-block;margin-top:16px;padding:9px 16px;
font:inherit;font-weight:600;border:0;border-radius:6px;background:var(--accent);color:#fff;
text-decoration:none;cursor:pointer}.quiet{background:transparent;color:var(--accent);
border:1px solid var(--line);margin:0}.muted{color:var(--muted)}.message{padding:10px 12px;
border-radius:6px;margin:0 0 12px;border:1px solid var(--bad);color:var(--bad)}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
.service{display:block;color:inherit;text-decoration:none}.service:hover{border-color:var(--accent)}
.service b{font-size:17px}.state{display:inline-block;font-size:13px;font-weight:600;
padding:1px 8px;border-radius:10px;border:1px solid currentColor}
.up,.done,.verified,.in-place{color:var(--ok)}.starting,.running,.downloading,.queued{color:var(--warn)}
.failed,.stopped{color:var(--bad)}.off{color:var(--muted)}
table{width:100%;border-collapse:collapse;font-size:14px}td,th{text-align:left;padding:6px 8px;
border-bottom:1px solid var(--line)}th{color:var(--muted);font-weight:600}
progress{width:100%;height:8px}code{font-size:13px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, refresh: int | None = None) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    ).encode()


def login(
    user: str,
    next_path: str,
    message: str = "",
    token_login: bool = False,
    service_title: str = "",
    notice: str = "",
) -> bytes:
    """The login form; it posts to /.gateway/login, which sends the browser back to next_path.
    `message`: what went wrong (a wrong password, a wait); `notice`: news (logged out)."""
    note = f'<p class="message" role="alert">{esc(message)}</p>' if message else ""
    note += f"<p><b>{esc(notice)}</b></p>" if notice else ""
    open_button = (
        '<p class="muted">On Vast.ai the instance\'s <b>Open</b> button logs you in without a password.</p>'
        if token_login
        else ""
    )
    where = f" to reach {esc(service_title)}" if service_title else ""
    body = (
        f'<div class="card narrow"><h1>{PRODUCT}</h1><p class="muted">Log in{where}. One login opens '
        "SD.Next, the files, the terminal and the logs.</p>"
        f'{note}<form method="post" action="/.gateway/login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        f'<label for="username">User name</label><input id="username" name="username" value="{esc(user)}" '
        'autocomplete="username" required>'
        '<label for="password">Password</label><input id="password" name="password" type="password" '
        'autocomplete="current-password" autofocus required>'
        f'<button type="submit">Log in</button></form>{open_button}</div>'
    )
    return page(f"Log in · {PRODUCT}", body)


def simple(title: str, text: str, refresh: int | None = None, link: tuple[str, str] | None = None) -> bytes:
    action = f'<a class="button" href="{esc(link[0])}">{esc(link[1])}</a>' if link else ""
    body = f'<div class="card narrow"><h1>{esc(title)}</h1><p>{esc(text)}</p>{action}</div>'
    return page(f"{title} · {PRODUCT}", body, refresh)


def unavailable(title: str, hint: str) -> bytes:
    return simple(
        f"{title} is starting",
        f"{title} is not answering yet: it is starting ({hint}), or restarting after a crash. "
        "This page tries again every 5 seconds.",
        refresh=5,
        link=("/.gateway/", "Open the portal"),
    )


def too_many(seconds: int, user: str, next_path: str, token_login: bool, service_title: str = "") -> bytes:
    return login(
        user,
        next_path,
        f"Too many refused logins from your address: the next try is checked in {seconds} s.",
        token_login,
        service_title,
    )


def human_size(size: float | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _cls(state: str) -> str:
    return esc(state.replace(" ", "-"))


def portal(status: dict, scheme: str, hostname: str, user: str, ca: bool = False) -> bytes:
    cards = []
    for service in status["services"]:
        url = f"{scheme}://{hostname}:{service['port']}/"
        detail = f'<br><span class="muted">{esc(service["detail"])}</span>' if service["detail"] else ""
        cards.append(
            f'<a class="card service" href="{esc(url)}"><b>{esc(service["title"])}</b><br>'
            f'<span class="muted">{esc(service["what"])}</span><br>'
            f'<span class="state {_cls(service["state"])}">{esc(service["state"])}</span>{detail}</a>'
        )
    prov = status["provisioning"]
    rows = []
    for item in prov["items"]:
        size, done = item.get("size"), item.get("done") or 0
        bar = f'<progress max="{size}" value="{done}"></progress>' if size else ""
        amount = f"{human_size(done)} of {human_size(size)}" if item["state"] == "downloading" else ""
        if item["state"] == "downloading" and item.get("speed"):
            amount += f", {human_size(item['speed'])}/s, {human_time(item.get('eta'))} left"
        elif item["state"] == "downloading":
            amount += ", waiting for data"
        reason = f'<br><span class="failed">{esc(item["reason"])}</span>' if item.get("reason") else ""
        rows.append(
            f"<tr><td><code>{esc(item['item'])}</code></td>"
            f'<td><span class="state {_cls(item["state"])}">{esc(item["state"])}</span>{reason}</td>'
            f"<td>{bar}{esc(amount)}</td></tr>"
        )
    total = prov.get("total")
    summary = ""
    if total and total.get("size"):
        summary = (
            f"<p>{human_size(total['done'])} of {human_size(total['size'])}"
            + (f", {human_size(total['speed'])}/s" if total.get("speed") else "")
            + (f", about {human_time(total['eta'])} left" if total.get("eta") else "")
            + "</p>"
        )
    table = (
        f"<table><tr><th>item</th><th>state</th><th>progress</th></tr>{''.join(rows)}</table>" if rows else ""
    )
    gpu = "".join(f"<p>{esc(line)}</p>" for line in status["gpu"]) or '<p class="muted">no GPU seen</p>'
    busy = prov["state"] in ("running", "starting") or any(
        s["state"] in ("starting", "failed") for s in status["services"]
    )
    body = (
        f'<header><h1>{PRODUCT}</h1><form method="post" action="/.gateway/logout">'
        f'<span class="muted">{esc(user)}</span> <button class="quiet" type="submit">Log out</button></form>'
        f'</header><div class="grid">{"".join(cards)}</div>'
        f'<h2>Models <span class="state {_cls(prov["state"])}">{esc(prov["state"])}</span></h2>'
        f'<p class="muted">{esc(prov["detail"])}</p>{summary}{table}'
        f"<h2>GPU</h2>{gpu}"
        f'<p class="muted">Updated {time.strftime("%H:%M:%S")}'
        + (" · this page refreshes every 5 seconds" if busy else "")
        + ' · <a href="/.gateway/status.json">status.json</a>'
        + (' · <a href="/.gateway/ca.crt">this container\'s CA certificate</a>' if ca else "")
        + "</p>"
    )
    return page(PRODUCT, body, refresh=5 if busy else None)
