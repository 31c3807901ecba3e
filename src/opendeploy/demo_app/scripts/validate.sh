#!/bin/bash
# The health check. A release that ships config/break-on-host fails it on that host:
# `opendeploy demo` uses this to show a failed deployment and its rollback.
set -euo pipefail
. "$(dirname "$0")/common.sh"
say "checking the site"
pace
test -f "$APP_DIR/site/index.html" || { echo "index.html is missing" >&2; exit 1; }
test -f "$STATE_DIR/running" || { echo "the app is not running" >&2; exit 1; }
broken="$(cat "$(dirname "$0")/../config/break-on-host" 2>/dev/null || true)"
if [ -n "$broken" ] && [ "$broken" = "$HOST" ]; then
    say "GET /healthz -> 500 Internal Server Error"
    echo "health check failed on $HOST: release $RELEASE answers 500 (see config/break-on-host)" >&2
    record "unhealthy"
    exit 1
fi
record "healthy"
say "GET /healthz -> 200 OK (release $RELEASE)"
