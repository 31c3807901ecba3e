#!/bin/bash
# ApplicationStop runs the scripts of the release installed before this deployment.
set -euo pipefail
. "$(dirname "$0")/common.sh"
say "stopping release $RELEASE"
pace
rm -f "$STATE_DIR/running"
record "stopped"
say "stopped"
