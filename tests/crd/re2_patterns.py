"""Compiles schema `pattern`s the way the Kubernetes API server does: with RE2 (Go's regexp
shares its syntax and its cap of 1000 on a repeat count). Reads a JSON list of
{"field": ..., "pattern": ...} on stdin and prints a JSON list of {"field", "pattern", "error"}
for each pattern RE2 refuses."""

import json
import sys

import re2

refused = []
for entry in json.load(sys.stdin):
    try:
        re2.compile(entry["pattern"])
    except re2.error as e:
        message = e.args[0] if e.args else e
        refused.append({**entry, "error": message.decode() if isinstance(message, bytes) else str(message)})
json.dump(refused, sys.stdout)
