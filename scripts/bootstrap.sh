#!/usr/bin/env bash
# Bootstrap the development environment on Debian 12:
#   1. the few Debian packages needed to create the venv and build libvirt-python
#      (plus python3 + python3-apt, which Ansible's apt module uses on localhost,
#      and mmdebstrap, which builds the fresh Debian root the install test runs in);
#   2. the virtualenv in .venv;
#   3. `pip install -e .[dev]`, skipped when pyproject.toml and the interpreter are
#      unchanged since the last successful install (stamp file in the venv).
#
# Idempotent and quick when everything is in place: no apt or pip call at all then.
# Environment: PYTHON (interpreter to build the venv from, default: python3 on PATH
# if it is >= 3.11 and can create venvs, else /usr/bin/python3), VENV (default .venv).
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.kvmctl-install-stamp"
MIN_PY="3.11"

say() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] error: %s\n' "$*" >&2; exit 1; }

# Debian packages not yet installed, among those given.
missing_debs() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [ "${status:0:2}" = "ii" ] || printf '%s\n' "$pkg"
    done
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_debs "$@")
    [ "${#missing[@]}" -eq 0 ] && return 0
    local -a SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 \
            || die "need root or sudo to install Debian packages: ${missing[*]}"
        SUDO=(sudo)
    fi
    say "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

py_ok() {  # usable: runs, new enough
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PY/./, }) else 1)" \
        >/dev/null 2>&1
}
py_can_venv() {
    "$1" -c "import venv, ensurepip" >/dev/null 2>&1
}

command -v dpkg-query >/dev/null 2>&1 || die "this bootstrap expects Debian (dpkg-query not found)"

# 1. Packages: python3 + python3-apt for Ansible on localhost; headers and a compiler
#    for libvirt-python (built from source against libvirt-dev).
apt_install python3 python3-apt python3-dev libvirt-dev pkg-config gcc mmdebstrap

# 2. Pick the interpreter for the venv.
if [ -n "${PYTHON:-}" ]; then
    py_ok "$PYTHON" || die "PYTHON=$PYTHON is not Python >= $MIN_PY"
elif command -v python3 >/dev/null 2>&1 && py_ok "$(command -v python3)" \
        && { py_can_venv "$(command -v python3)" || [ "$(command -v python3)" = /usr/bin/python3 ]; }; then
    PYTHON=$(command -v python3)
else
    PYTHON=/usr/bin/python3
    py_ok "$PYTHON" || die "/usr/bin/python3 is not Python >= $MIN_PY"
fi
# The real interpreter behind a pyenv shim or symlink, so the venv points at it.
PYTHON=$("$PYTHON" -c "import sys; print(sys.executable)")
# Debian splits venv/ensurepip into python3-venv.
if ! py_can_venv "$PYTHON"; then
    case "$(readlink -f "$PYTHON")" in
        /usr/bin/python3*) apt_install python3-venv ;;
    esac
    py_can_venv "$PYTHON" || die "$PYTHON cannot create virtual environments"
fi

# 3. The venv: (re)create when missing or broken (e.g. its interpreter was removed).
if ! "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then
    say "creating $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

# 4. pip install, only when the contract changed.
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c "import kvmctl" >/dev/null 2>&1; then
    say "pip install -e .[dev] into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    printf '%s\n' "$want" > "$STAMP"
else
    say "$VENV up to date (pyproject.toml unchanged)"
fi
