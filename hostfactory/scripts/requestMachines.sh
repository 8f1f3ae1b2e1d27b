#!/bin/sh
# HostFactory's requestMachines call: `requestMachines.sh -f <input.json>`, answered on stdout.
exec "$(dirname "$0")/invoke.sh" requestMachines "$@"
