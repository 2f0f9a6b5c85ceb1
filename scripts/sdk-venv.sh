#!/usr/bin/env bash
# Builds the virtual environment with the official Alipay Python SDK that tests/it/python_sdk.rs
# drives: target/sdk-venv (or $1). Needs python3 with venv and pip (Debian: python3-venv).
#
# global-alipay-sdk-python 1.0.1 declares `enum34`, which breaks every Python >= 3.6, and
# leaves out `cryptography`, which it imports: so it is installed with --no-deps, plus the
# packages it really uses, each pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-target/sdk-venv}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import com.alipay.ams.api, cryptography" 2>/dev/null; then
  echo "sdk venv ready: $venv"
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check \
  pytz==2024.1 pycryptodome==3.20.0 rsa==4.9 cryptography==43.0.3
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps global-alipay-sdk-python==1.0.1
"$venv/bin/python" -c "import com.alipay.ams.api.default_alipay_client" 
echo "sdk venv ready: $venv"
