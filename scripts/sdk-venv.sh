#!/usr/bin/env bash
# Builds the two virtual environments with the official Alipay Python SDKs that
# tests/it/python_sdk.rs drives (one run builds both; .ci/run calls it):
#   target/sdk-venv       global-alipay-sdk-python 1.0.1 (what legacy apps run), or $1
#   target/sdk-venv-open  global-open-sdk-python[http2] 1.7.1 (the current release, with the
#                         `http2` extra: httpx + h2, which meter/uploadEvent needs), or $2
# Needs python3 with venv and pip (Debian: python3-venv).
#
# global-alipay-sdk-python 1.0.1 declares `enum34`, which breaks every Python >= 3.6, and
# leaves out `cryptography`, which it imports: so it is installed with --no-deps, plus the
# packages it really uses, each pinned. global-open-sdk-python 1.7.1 installs plainly (exact
# pin: it is the release whose TLS check the sidecar's local CA is tested against).
set -euo pipefail
cd "$(dirname "$0")/.."
legacy=${1:-target/sdk-venv}
open=${2:-target/sdk-venv-open}

if [ -x "$legacy/bin/python" ] && "$legacy/bin/python" -c "import com.alipay.ams.api, cryptography" 2>/dev/null; then
  echo "sdk venv ready: $legacy"
else
  python3 -m venv "$legacy"
  "$legacy/bin/pip" install -q --disable-pip-version-check \
    pytz==2024.1 pycryptodome==3.20.0 rsa==4.9 cryptography==43.0.3
  "$legacy/bin/pip" install -q --disable-pip-version-check --no-deps global-alipay-sdk-python==1.0.1
  "$legacy/bin/python" -c "import com.alipay.ams.api.default_alipay_client"
  echo "sdk venv ready: $legacy"
fi

open_ready() {
  [ -x "$open/bin/python" ] && "$open/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata, sys
import com.alipay.ams.api.default_alipay_client
import h2, httpx  # the [http2] extra (meter/uploadEvent)
sys.exit(importlib.metadata.version("global-open-sdk-python") != "1.7.1")
PY
}
if open_ready; then
  echo "sdk venv ready: $open"
else
  python3 -m venv "$open"
  "$open/bin/pip" install -q --disable-pip-version-check 'global-open-sdk-python[http2]==1.7.1'
  open_ready || { echo "global-open-sdk-python[http2] 1.7.1 did not install into $open" >&2; exit 1; }
  echo "sdk venv ready: $open"
fi
