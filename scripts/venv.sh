# shellcheck shell=bash
# Sourced (not run) by scripts/test and scripts/demo, from the repository's root.
#
# The project's virtual environment, .venv/ (gitignored): scripts/test and scripts/demo install
# into it and run from it, never into the interpreter itself.  That is what makes them work on an
# "externally managed" python3 (PEP 668: Debian's /usr/bin/python3 since Debian 12, where
# `python3 -m pip install` stops with `error: externally-managed-environment`) and on any other
# python3 alike.
#
# PYTHON picks the interpreter that makes .venv/ (default: python3 on PATH), for instance
# `PYTHON=/usr/bin/python3 bash scripts/test`.  Without PYTHON an existing, working .venv/ is
# kept whatever made it; with PYTHON, a .venv/ made by another interpreter is made anew.
#
# Debian ships what `python3 -m venv` needs to put pip in (ensurepip) apart, in the package
# python3-venv (python3.X-venv for a python3.X that is not the default one): the scripts install
# it when it is missing (as root, or through sudo), or say which package to install.
VENV=.venv
PYTHON_GIVEN="${PYTHON:-}"
PYTHON="${PYTHON:-python3}"

# say MESSAGE: one line on stderr, naming the script that says it.
say() {
    echo "scripts/${0##*/}: $*" >&2
}

# check_python: stop unless $PYTHON runs and is Python 3.11 or newer (pyproject.toml).
check_python() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        say "no Python interpreter '$PYTHON': install Python 3.11 or newer (Debian: apt-get install python3 python3-venv), or name one with PYTHON=/path/to/python3"
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        say "$PYTHON is Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); tunnelguard needs 3.11 or newer: name one with PYTHON=/path/to/python3"
        exit 1
    fi
}

# venv_package: prints the Debian package that `$PYTHON -m venv` still needs (python3-venv, or
# python3.X-venv for a Python that is not Debian's default python3), nothing when none is needed.
# Stops when the interpreter cannot make a virtual environment and is not Debian's own.
venv_package() {
    if "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        return 0
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' || ! command -v apt-get >/dev/null 2>&1; then
        say "$PYTHON cannot make a virtual environment (no ensurepip or venv module): name another interpreter with PYTHON=/path/to/python3"
        exit 1
    fi
    "$PYTHON" -c '
import os, sys
default = os.path.realpath("/usr/bin/python3") == os.path.realpath(sys.executable)
print("python3-venv" if default else "python3.%d-venv" % sys.version_info[1])'
}

# apt_install PACKAGE...: Debian's packages, as root or through sudo; otherwise says what to run.
apt_install() {
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            say "missing Debian packages; as root, run: apt-get install $*"
            exit 1
        fi
        as_root=(sudo)
    fi
    say "installing Debian packages: $*"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@"
}

# make_venv: .venv/ exists, works (its python imports pip) and, when PYTHON was given, was made
# by that interpreter.  Run after venv_package's package, if any, is installed.
make_venv() {
    local want have
    want=$("$PYTHON" -c 'import sys; print(sys.base_prefix, *sys.version_info[:2])')
    if [ -x "$VENV/bin/python" ] &&
        have=$("$VENV/bin/python" -c 'import sys, pip; print(sys.base_prefix, *sys.version_info[:2])' 2>/dev/null) &&
        { [ -z "$PYTHON_GIVEN" ] || [ "$have" = "$want" ]; }; then
        return 0
    fi
    if [ -e "$VENV" ]; then
        say "making $VENV/ anew with $PYTHON (the one there is broken or another interpreter's)"
        rm -rf "$VENV"
    else
        say "making the virtual environment $VENV/ with $PYTHON"
    fi
    if ! "$PYTHON" -m venv "$VENV"; then
        rm -rf "$VENV"
        say "$PYTHON -m venv failed; on Debian, install python3-venv (apt-get install python3-venv)"
        exit 1
    fi
}
