#!/bin/sh
# HostFactory's requestReturnMachines call: `requestReturnMachines.sh -f <input.json>`, answered on stdout.
exec "$(dirname "$0")/invoke.sh" requestReturnMachines "$@"
