#!/bin/bash
set -euo pipefail
. "$(dirname "$0")/common.sh"
say "configuring release $RELEASE"
pace
cat > "$STATE_DIR/config.json" <<JSON
{"release": "$RELEASE", "deployment": "$DEPLOYMENT_ID", "host": "$HOST"}
JSON
record "configured"
say "wrote $STATE_DIR/config.json"
