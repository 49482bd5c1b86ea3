#!/bin/sh
# Installed by Tessera's quickstart: leaves a trace and succeeds.
echo "hello from Tessera on $(hostname)"
mkdir -p /tmp/tessera-quickstart && date > /tmp/tessera-quickstart/hello.txt
