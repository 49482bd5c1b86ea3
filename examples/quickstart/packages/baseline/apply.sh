#!/bin/sh
# The quickstart's "urgent" package: priority 0, so agents run it before anything else.
set -e
mkdir -p /tmp/tessera-quickstart
echo "baseline applied $(date -u +%Y-%m-%dT%H:%M:%SZ)" > /tmp/tessera-quickstart/baseline.txt
