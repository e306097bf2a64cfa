#!/usr/bin/env bash
# System packages the test suite needs: PostgreSQL server binaries (for the vendor store's
# PostgreSQL tests), Debian's chromium (for the dashboard browser tests), swtpm and
# tpm2-tools (a software TPM 2.0 for the TPM anchor tests), libtss2-dev with pkg-config
# (the headers tpm2-pytss is built against; run this before `pip install -e .`), and
# Node.js with npm (for the Cryptolens Node SDK tests), etcd-server (etcd 3.4 at
# /usr/bin/etcd, for the cluster tests' three-member etcd cluster), iproute2 (`ip`, for the
# cluster acceptance drills' network namespaces), then the unmodified npm
# `cryptolens` package into tests/node/node_modules from the committed lock file.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v swtpm >/dev/null 2>&1 || need+=(swtpm)
command -v swtpm_setup >/dev/null 2>&1 || need+=(swtpm-tools)
command -v tpm2_nvcertify >/dev/null 2>&1 || need+=(tpm2-tools)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
[ -f /usr/include/tss2/tss2_esys.h ] || need+=(libtss2-dev)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (install them as root)" >&2
    exit 1
  fi
fi
if [ ! -f tests/node/node_modules/cryptolens/package.json ] \
  || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
