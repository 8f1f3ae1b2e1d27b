#!/bin/sh
# HostFactory's getAvailableTemplates call: `getAvailableTemplates.sh -f <input.json>`, answered on stdout.
exec "$(dirname "$0")/invoke.sh" getAvailableTemplates "$@"
