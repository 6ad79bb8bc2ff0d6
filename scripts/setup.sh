#!/usr/bin/env bash
# Install the Debian packages the project needs (broker, TPM simulator, TSS headers, iproute2 for the
# two-host test's network namespaces, deployment checkers).
# As root: apt-get update once, then install whatever is missing.
# Otherwise: print the exact `sudo apt-get install ...` to run and exit non-zero.
# Safe to run repeatedly: does nothing (and needs no network) when all are present.
set -euo pipefail

# systemd: systemd-analyze and systemd-sysusers check deploy/systemd/; docker-compose validates deploy/compose.yaml
# (tests/test_deploy.py; no container runtime is needed for that). chromium and chromium-driver: the console's
# browser tests (Selenium drives the system browser headless).
PACKAGES=(mosquitto mosquitto-clients swtpm swtpm-tools libtss2-dev pkg-config iproute2 systemd docker-compose chromium chromium-driver)

# `python3 -m venv` needs Debian's python3-venv when python3 is Debian's own and .venv is missing.
if [[ ! -x .venv/bin/python ]] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    PACKAGES+=(python3-venv)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "setup: not a Debian-based system (no dpkg-query); install these yourself: ${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    {
        echo "setup: missing Debian packages: ${missing[*]}"
        echo "setup: run this, then 'make setup' again:"
        echo "    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    } >&2
    exit 1
fi

echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
