#!/usr/bin/env bash
# Browser tests against a running WebUI started with its UI (A1111 or Forge, this checkout as extension).
# usage: tests/browser/run.sh URL [screenshot.png] [pytest args...]
#   e.g. tests/browser/run.sh http://127.0.0.1:7860 docs/screenshot-a1111.png
# Needs a system Chromium (Debian: apt-get install -y chromium); installs Playwright's Python package into
# .venv (no browser download: the tests drive the system Chromium, or $ASAG_CHROMIUM).
set -euo pipefail
cd "$(dirname "$0")/../.."
url=${1:?usage: tests/browser/run.sh URL [screenshot.png] [pytest args...]}; shift
shot=""
if [ $# -gt 0 ] && [[ $1 == *.png ]]; then shot=$(realpath -m "$1"); shift; fi
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt; }
.venv/bin/python -c 'import playwright' 2>/dev/null || .venv/bin/pip install -q playwright
ASAG_BROWSER_URL=$url ASAG_BROWSER_SCREENSHOT=$shot exec .venv/bin/python -m pytest -q -rs tests/browser "$@"
