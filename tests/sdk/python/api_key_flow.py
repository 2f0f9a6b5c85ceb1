"""The official Python SDK's API-key client (global-open-sdk-python 1.7.1), unmodified,
through the sidecar's HTTPS listener with a merchant in API-key mode.

Run by tests/it/python_sdk/api_key.rs with the virtual environment target/sdk-venv-open and
SSL_CERT_FILE naming a bundle of the system roots plus the sidecar's CA (the SDK verifies
TLS with ssl.create_default_context()). The app holds only a DUMMY key of the right shape:
the sidecar replaces it with the merchant's own, so the gateway never sees the app's.

ApiKeyAlipayClient honours the gateway URL's port (unlike the RSA client, which always
connects to 443) and sends origin-form targets. Prints one JSON line per step; exits
non-zero on the first failure.
"""

import argparse
import json
import sys

from com.alipay.ams.api.api_key_alipay_client import ApiKeyAlipayClient
from com.alipay.ams.api.model.amount import Amount
from com.alipay.ams.api.model.product_code_type import ProductCodeType
from com.alipay.ams.api.request.pay.alipay_pay_request import AlipayPayRequest


def step(name, **fields):
    print(json.dumps(dict(step=name, **fields)), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True, help="https://127.0.0.1:PORT")
    p.add_argument("--app-key", required=True, help="the app's dummy API key")
    p.add_argument("--run-id", required=True)
    a = p.parse_args()

    client = ApiKeyAlipayClient(a.gateway, a.app_key, timeout=60)
    req = AlipayPayRequest()
    req.product_code = ProductCodeType.CASHIER_PAYMENT
    req.payment_request_id = "api-key-pay-" + a.run_id
    req.payment_amount = Amount("HKD", "5800")
    try:
        body = client.execute(req)
    except Exception as e:  # the SDK redacts the key from its own errors
        step("pay", ok=False, error=str(e))
        sys.exit(1)
    result = json.loads(body).get("result", {})
    ok = result.get("resultStatus") == "S"
    step("pay", ok=ok, result=result)
    if not ok:
        sys.exit(1)
    step("done", ok=True)


if __name__ == "__main__":
    main()
