#!/bin/sh
# Runs one HostFactory provider call through `orb-operator hostfactory <verb> -f <input>`, the
# way HostFactory runs a provider plugin's scripts:
#   HF_PROVIDER_CONFDIR  the plugin config (orb-operator.json: namespace, templateSelector) and,
#                        if present, a kubeconfig file used when KUBECONFIG is not set
#   HF_PROVIDER_WORKDIR  the directory the call runs in (relative input paths are kept working)
#   HF_PROVIDER_LOGDIR   where orb-operator-hostfactory.log is written
#   HF_LOGLEVEL          DEBUG or TRACE (LOG_DEBUG, LOG_TRACE as Symphony sets them) also logs
#                        each input; logging never fails the call
# Unset, the three directories default as IBM documents: $HF_CONFDIR/providers/$HF_PROVIDER_NAME,
# $HF_WORKDIR/providers/$HF_PROVIDER_NAME and $HF_LOGDIR. HF_PROVIDER_NAME (always set by
# HostFactory) also keeps this provider instance's requests apart from other instances'.
# ORB_OPERATOR_BIN names the binary (default: orb-operator on PATH).
set -eu
verb="$1"
shift
bin="${ORB_OPERATOR_BIN:-orb-operator}"
if [ -n "${HF_PROVIDER_NAME:-}" ]; then
    if [ -z "${HF_PROVIDER_CONFDIR:-}" ] && [ -n "${HF_CONFDIR:-}" ]; then
        HF_PROVIDER_CONFDIR="$HF_CONFDIR/providers/$HF_PROVIDER_NAME"
        export HF_PROVIDER_CONFDIR
    fi
    if [ -z "${HF_PROVIDER_WORKDIR:-}" ] && [ -n "${HF_WORKDIR:-}" ]; then
        HF_PROVIDER_WORKDIR="$HF_WORKDIR/providers/$HF_PROVIDER_NAME"
        export HF_PROVIDER_WORKDIR
    fi
fi
if [ -z "${HF_PROVIDER_LOGDIR:-}" ] && [ -n "${HF_LOGDIR:-}" ]; then
    HF_PROVIDER_LOGDIR="$HF_LOGDIR"
    export HF_PROVIDER_LOGDIR
fi
if [ -z "${KUBECONFIG:-}" ] && [ -n "${HF_PROVIDER_CONFDIR:-}" ] && [ -f "$HF_PROVIDER_CONFDIR/kubeconfig" ]; then
    KUBECONFIG="$HF_PROVIDER_CONFDIR/kubeconfig"
    export KUBECONFIG
fi
# HostFactory passes `-f <file>`: make the path absolute before changing directory.
if [ "${1:-}" = "-f" ] && [ -n "${2:-}" ]; then
    case "$2" in
        /*) input="$2" ;;
        *) input="$(pwd)/$2" ;;
    esac
    shift 2
    set -- -f "$input" "$@"
    case "${HF_LOGLEVEL:-}" in
        DEBUG | TRACE | LOG_DEBUG | LOG_TRACE)
            if [ -n "${HF_PROVIDER_LOGDIR:-}" ]; then
                { printf '%s %s input: ' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$verb"; tr -d '\n' < "$input"; echo; } \
                    >> "$HF_PROVIDER_LOGDIR/orb-operator-hostfactory.log" 2>/dev/null || true
            fi
            ;;
    esac
fi
if [ -n "${HF_PROVIDER_WORKDIR:-}" ] && [ -d "$HF_PROVIDER_WORKDIR" ]; then
    cd "$HF_PROVIDER_WORKDIR"
fi
exec "$bin" hostfactory "$verb" "$@"
