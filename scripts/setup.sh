#!/usr/bin/env bash
# Installs what Tessera's tests need from Debian's packages: real peers (curl, openssl,
# tar, md5sum, Python's zipfile, Java's keytool)
# that tests drive against the server. Idempotent; quick when everything is there.
set -euo pipefail

packages=(curl openssl ca-certificates tar coreutils python3)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Java's keytool opens the JKS keystores in the tests; any JDK or JRE on the PATH will do.
command -v keytool >/dev/null || missing+=(openjdk-17-jre-headless)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
