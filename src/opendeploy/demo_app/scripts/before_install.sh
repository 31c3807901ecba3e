#!/bin/bash
set -euo pipefail
. "$(dirname "$0")/common.sh"
say "preparing $APP_DIR for release $RELEASE"
mkdir -p "$STATE_DIR"
pace
record "prepared"
