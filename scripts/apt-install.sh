# Sourced by scripts/setup.sh and scripts/bench-setup.sh: `apt_install LABEL PACKAGE...`
# installs Debian packages (as root, or through sudo) without starting their services, and
# sets `$sudo` for what the caller does afterwards. DEBCONF_SELECTIONS, when set, is given
# to debconf-set-selections first (answers to the packages' install questions).
apt_install() {
  local label=$1
  shift
  echo "$label: installing $*" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "$label: need root (or sudo) to install $*" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Debian starts a service on install (PostgreSQL's main cluster on port 5432, nginx on
  # port 80); exit code 101 from policy-rc.d forbids it, and the package's postinst then
  # leaves the daemon stopped: tests and benchmarks start their own on loopback. Only a
  # policy file made here is removed afterwards.
  local policy=/usr/sbin/policy-rc.d created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    created_policy="yes"
  fi
  if [ -n "${DEBCONF_SELECTIONS:-}" ]; then
    echo "$DEBCONF_SELECTIONS" | $sudo debconf-set-selections
  fi
  local status=0
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } || status=$?
  if [ -n "$created_policy" ]; then
    $sudo rm -f "$policy"
  fi
  return "$status"
}
