#!/usr/bin/env bash
# System packages the test suite needs: PostgreSQL server binaries (for the vendor store's
# PostgreSQL tests) and Debian's chromium (for the dashboard browser tests).
set -euo pipefail
need=()
command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (install them as root)" >&2
    exit 1
  fi
fi
