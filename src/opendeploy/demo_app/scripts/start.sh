#!/bin/bash
set -euo pipefail
. "$(dirname "$0")/common.sh"
say "starting release $RELEASE"
pace
echo "$DEPLOYMENT_ID $RELEASE" > "$STATE_DIR/running"
record "started"
say "serving $APP_DIR/site/index.html"
