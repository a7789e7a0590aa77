#!/bin/sh
# The container image's install and start steps, in one place (the Dockerfile only calls this).
#
#   docker/image.sh install PREFIX   create a virtual environment at PREFIX and install the server
#                                    from this source tree (runtime dependencies only)
#   docker/image.sh start [ARGS...]  run `realtime-channels serve` with the container's defaults
#
# The same script runs outside a container (tests/integration/test_image.py does), so install
# assumes nothing about the machine beyond a Python 3.11 and, for curl, apt-get.
set -eu

SRC=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
DEFAULT_PREFIX=/opt/realtime-channels

usage() {
    echo "usage: $0 install PREFIX | start [serve flags...]" >&2
    exit 2
}

install() {
    prefix=$1
    python=${PYTHON:-python3.11}
    # curl is what the HEALTHCHECK runs (the same command as Supabase's compose file)
    if ! command -v curl >/dev/null 2>&1; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "error: curl is needed for the health check and apt-get is not available" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates
        rm -rf /var/lib/apt/lists/*
    fi
    "$python" -m venv "$prefix"
    # the OpenTelemetry extra is a runtime feature (traces, docs/observability.md), not a dev tool
    "$prefix/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
        "$SRC[otel]"
    "$prefix/bin/realtime-channels" --version
}

start() {
    prefix=${REALTIME_CHANNELS_PREFIX:-$DEFAULT_PREFIX}
    # Reachable from the other containers of the compose network, not only from inside this one.
    export REALTIME_HOST="${REALTIME_HOST:-0.0.0.0}"
    # Supabase's realtime listens on $PORT (4000 in its compose file); an explicit REALTIME_PORT wins.
    export REALTIME_PORT="${REALTIME_PORT:-${PORT:-4000}}"
    exec "$prefix/bin/realtime-channels" serve "$@"
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
    install)
        [ $# -eq 1 ] || usage
        install "$1"
        ;;
    start)
        start "$@"
        ;;
    *)
        usage
        ;;
esac
