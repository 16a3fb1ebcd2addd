#!/usr/bin/env bash
# Install acme-mt into .venv on a Debian machine and run it on the embedded defaults
# (SQLite files and an encrypted file key store in ./acme-mt-data). Arguments go to
# `acme-mt serve`, e.g. --config FILE or --data-dir DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q .
exec .venv/bin/acme-mt serve "$@"
