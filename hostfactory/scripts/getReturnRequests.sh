#!/bin/sh
# HostFactory's getReturnRequests call: `getReturnRequests.sh -f <input.json>`, answered on stdout.
exec "$(dirname "$0")/invoke.sh" getReturnRequests "$@"
