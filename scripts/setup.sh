#!/usr/bin/env bash
# Installs what Tessera's tests need from Debian's packages: real peers (curl, openssl,
# tar, md5sum, Python's zipfile, Java's keytool, the OCS Inventory NG Unix agent, git for
# `tessera serve --git` and its local bare repositories, Prometheus's promtool, headless Chromium for the
# web console) that tests drive against the
# server, and the PostgreSQL server that scripts/postgres.sh starts for the state-store
# tests. And cargo-deny, which .ci/run checks the dependency tree with (deny.toml).
# Idempotent; quick when everything is there.
set -euo pipefail

# From crates.io, with its own lock file, once per machine (it lands in ~/.cargo/bin): 206 s
# of CPU, measured 8 min 16 s on a 2-core machine busy with other builds (about half that idle).
if ! cargo deny --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deny (cargo install cargo-deny --locked)" >&2
  cargo install cargo-deny --locked
fi

# The agent's deployment module disables itself (one log line) without Perl's LWP https
# support, which Debian only recommends; --no-install-recommends would leave it out.
# nginx and its stream module: the relay sending PROXY protocol v1 in tests/it/proxy_protocol.rs
# (apt-install.sh keeps its service stopped).
packages=(curl openssl ca-certificates tar coreutils python3 binutils git liblwp-protocol-https-perl postgresql
  nginx libnginx-mod-stream)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Java's keytool opens the JKS keystores in the tests; any JDK or JRE on the PATH will do.
command -v keytool >/dev/null || missing+=(openjdk-17-jre-headless)
command -v ocsinventory-agent >/dev/null || missing+=(ocsinventory-agent)
# promtool (from Prometheus's package; its service stays stopped) checks /metrics and the
# chart's alerting rules in tests/it/metrics.rs and tests/it/chart.rs.
command -v promtool >/dev/null || missing+=(prometheus)
# Headless Chromium drives the web console in tests/it/console.rs (DevTools protocol).
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

source "$(dirname "$0")/apt-install.sh"
# The agent's package asks how to report (local or http) and for a TAG. Answer "local": its
# cfg then says local=..., which the tests override with --nolocal and --server.
DEBCONF_SELECTIONS="ocsinventory-agent ocsinventory-agent/method select local" \
  apt_install setup "${missing[@]}"
