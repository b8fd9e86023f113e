#!/usr/bin/env bash
# Debian's Chromium for the Dagster UI browser test (never a Playwright browser download).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
  echo "browser-setup: /usr/bin/chromium missing and cannot install it; browser tests will skip"
fi
