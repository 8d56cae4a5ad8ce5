#!/usr/bin/env bash
# End-to-end suite against a running WebUI with this extension installed (A1111 or Forge, UI or --nowebui).
# usage: tests/e2e/run.sh URL [pytest args...]     e.g. tests/e2e/run.sh http://127.0.0.1:7860 -x
# Uses .venv (README "Run the tests"); installs requests + Pillow into it if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
url=${1:?usage: tests/e2e/run.sh URL [pytest args]}; shift
py=.venv/bin/python
"$py" -c "import requests, PIL" 2>/dev/null || .venv/bin/pip install -q -r tests/e2e/requirements.txt
ASAG_E2E_URL=$url exec "$py" -m pytest -v -rs -p no:cacheprovider tests/e2e "$@"
