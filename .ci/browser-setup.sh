#!/usr/bin/env bash
# Installs what the browser test (make test-browser) needs on a fresh Debian machine: Debian's own
# Chromium at /usr/bin/chromium. Nothing here (or in the test) downloads a browser: Playwright is
# pointed at this Chromium with executable_path. The playwright Python package itself comes with the
# project's [test] extra (make setup). Idempotent: does nothing when /usr/bin/chromium already runs.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ] && "$CHROMIUM" --version >/dev/null 2>&1; then
  echo "browser-setup: $("$CHROMIUM" --version 2>/dev/null) already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser-setup: apt-get not found. This script is for Debian; install Chromium with your system's" >&2
  echo "package manager so that it is at $CHROMIUM (or set SPEECHBOOK_CHROMIUM=/path/to/chromium)." >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "browser-setup: not root and no sudo: run 'apt-get update && apt-get install -y chromium' as root" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium

if ! "$CHROMIUM" --version >/dev/null 2>&1; then
  echo "browser-setup: $CHROMIUM was not installed or does not run" >&2
  exit 1
fi
echo "browser-setup: $("$CHROMIUM" --version 2>/dev/null) ready"
