#!/bin/sh
# HostFactory's getRequestStatus call: `getRequestStatus.sh -f <input.json>`, answered on stdout.
exec "$(dirname "$0")/invoke.sh" getRequestStatus "$@"
