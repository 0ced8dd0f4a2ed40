#!/usr/bin/env bash
# Installs headless Chromium from Debian's packages for tests/test_html_report.py (rendered with Playwright
# driving /usr/bin/chromium; Playwright's own browser download is never used). Called by .ci/run.
# Does nothing when Chromium is present; when it cannot install, it says why and the test skips with a reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  echo "browser: $(command -v chromium || command -v chromium-browser) present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: not installed (no apt-get on this machine); the headless-Chromium report test will skip"
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "browser: not installed (apt-get needs root and sudo is not available); the report test will skip"
    exit 1
  fi
fi
echo "browser: installing Debian's chromium (apt-get)"
if $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null; then
  echo "browser: $(chromium --version 2>/dev/null) installed"
else
  echo "browser: apt-get install chromium failed; the headless-Chromium report test will skip"
  exit 1
fi
