# Sourced by every hook: where the app lives on this host, and a little pacing so the
# live view has something to show.
APP_DIR="${DESTINATION_ROOT:-}/srv/opendeploy-demo"
STATE_DIR="$APP_DIR/state"
HOST="${DEMO_HOST:-$(hostname)}"
RELEASE="$(cat "$(dirname "$0")/../site/VERSION" 2>/dev/null || echo unknown)"

say() { echo "[$HOST] $LIFECYCLE_EVENT: $*"; }
record() {
    mkdir -p "$STATE_DIR"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $DEPLOYMENT_ID release $RELEASE $LIFECYCLE_EVENT $*" \
        >> "$STATE_DIR/history.log"
}
pace() { sleep "${DEMO_PACE:-0.3}"; }
