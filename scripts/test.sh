#!/usr/bin/env bash
# The whole test suite: installs the test peers (scripts/setup.sh), starts a throwaway
# PostgreSQL server on loopback (scripts/postgres.sh) so the state-store suite and the
# several-servers tests run on it as well as on SQLite, then runs every unit, integration
# and doc test (benchmarks are separate: see the README). The server is stopped afterwards,
# whatever the outcome. `--no-fail-fast`: a failing test binary does not stop the ones after
# it (the doc tests come last), so one run shows every failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
postgres_dir=$(mktemp -d /tmp/tessera-test-postgres.XXXXXX)
trap 'scripts/postgres.sh stop "$postgres_dir"' EXIT
TESSERA_TEST_POSTGRES=$(POSTGRES_FSYNC=off scripts/postgres.sh start "$postgres_dir")
export TESSERA_TEST_POSTGRES
cargo test --no-fail-fast "$@"
