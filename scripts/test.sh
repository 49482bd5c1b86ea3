#!/usr/bin/env bash
# The whole test suite: installs the test peers (scripts/setup.sh), then runs every unit,
# integration and doc test (benchmarks are separate: see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test "$@"
