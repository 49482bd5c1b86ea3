#!/usr/bin/env bash
# Installs what `cargo bench --bench serve` compares Tessera against: Debian's nginx,
# serving the same fragment files, and socat, as a plain TCP relay next to `tessera gateway`;
# and Debian's PostgreSQL server, which `cargo bench --bench store` starts on loopback
# (scripts/postgres.sh) to measure the state database on it.
# The bench starts its own nginx and socat on loopback ports; the system nginx service is
# stopped so nothing is left on port 80. Idempotent; quick when both are there.
set -euo pipefail

missing=()
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  missing+=(nginx)
fi
if ! command -v socat >/dev/null && [ ! -x /usr/bin/socat ]; then
  missing+=(socat)
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

source "$(dirname "$0")/apt-install.sh"
apt_install bench-setup "${missing[@]}"

# Belt and braces: where a service manager did start nginx anyway, stop and disable it.
if [[ " ${missing[*]} " != *" nginx "* ]]; then
  exit 0
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
elif [ -f /run/nginx.pid ]; then
  $sudo nginx -s quit 2>/dev/null || true
fi
