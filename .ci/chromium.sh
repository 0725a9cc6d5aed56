#!/usr/bin/env bash
# Debian's headless Chromium and its WebDriver for the chat page's browser test (tests/test_web_page.py).
# Installs `chromium` and `chromium-driver` when either is missing (root + apt); a no-op when both are there.
# Without root it says what to install and fails; the test then skips locally and fails under CI.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium.sh: chromium/chromedriver missing and installing needs root: apt-get install chromium chromium-driver" >&2
    exit 1
fi
echo "chromium.sh: installing Debian's chromium and chromium-driver (apt-get update first)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
command -v chromedriver >/dev/null || { echo "chromium.sh: installed, but no chromedriver on PATH" >&2; exit 1; }
