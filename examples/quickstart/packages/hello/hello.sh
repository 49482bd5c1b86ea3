#!/bin/sh
# Installed by Tessera's quickstart: checks the payload that came with it, leaves a trace
# and succeeds.
set -e
test "$(wc -c < payload.b64)" -gt 0
echo "hello from Tessera on $(hostname)"
mkdir -p /tmp/tessera-quickstart && date > /tmp/tessera-quickstart/hello.txt
