"""The official Alipay Python SDK, unmodified, through the sidecar.

Run by tests/it/python_sdk.rs with the virtual environments that scripts/sdk-venv.sh builds:
global-alipay-sdk-python 1.0.1 (target/sdk-venv) and global-open-sdk-python 1.7.1
(target/sdk-venv-open); both ship the same `com.alipay.ams.api` modules used here. The SDK
always opens HTTPS to port 443 of the gateway URL's host and writes absolute-form request
lines; the sidecar's HTTPS listener on 127.0.0.1:443 takes both. 1.7.x verifies the
listener's certificate against the default trust store: the test points SSL_CERT_FILE at the
sidecar's tls_trust_out (system roots + the sidecar's CA), nothing else changes in the app.

With --restart-after STEP the script stops after that step, prints a "restart" step and waits
for --resume-file to appear (the test restarts the sidecar meanwhile), then goes on: the calls
after it show that a restart under the same CA needs nothing from the app.

Flow (the Alipay "Entry Code payment" page): pay (IN_STORE_PAYMENT, EntryCode,
CONNECT_WALLET) -> the PAYMENT_RESULT notification arrives at a small app that checks it with
the SDK's own webhook check -> inquiryPayment -> refund; a second pay -> cancel. Every answer
goes through the SDK's own response verification (DefaultAlipayClient.execute raises when it
fails). Prints one JSON line per step; exits non-zero on the first failure.
"""

import argparse
import http.server
import importlib.metadata
import json
import os
import sys
import threading
import time

from com.alipay.ams.api.default_alipay_client import DefaultAlipayClient
from com.alipay.ams.api.model.amount import Amount
from com.alipay.ams.api.model.env import Env
from com.alipay.ams.api.model.merchant import Merchant
from com.alipay.ams.api.model.order import Order
from com.alipay.ams.api.model.store import Store
from com.alipay.ams.api.request.pay.alipay_pay_cancel_request import AlipayPayCancelRequest
from com.alipay.ams.api.request.pay.alipay_pay_query_request import AlipayPayQueryRequest
from com.alipay.ams.api.request.pay.alipay_refund_request import AlipayRefundRequest
from com.alipay.ams.api.request.pay.entry_code_payment_request import EntryCodePaymentRequest
from com.alipay.ams.api.tools.webhook_tool import check_signature

ACK = b'{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}'


def step(name, **fields):
    print(json.dumps(dict(step=name, **fields)), flush=True)


def fail(name, why):
    step(name, ok=False, error=str(why))
    sys.exit(1)


def serve_app(port, alipay_public_key, received):
    """The merchant app behind the sidecar's inbound listener."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode("utf-8")
            ok = check_signature(
                "POST",
                self.path,
                self.headers.get("client-id"),
                self.headers.get("request-time"),
                body,
                self.headers.get("signature"),
                alipay_public_key,
            )
            received.append(
                dict(
                    path=self.path,
                    sdk_verified=bool(ok),
                    sidecar_verified=self.headers.get("X-Alipay-Sidecar-Verified"),
                    body=json.loads(body),
                )
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ACK)))
            self.end_headers()
            self.wfile.write(ACK)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def entry_code_pay(request_id, notify_url):
    order = Order()
    order.order_description = "Entry Code payment through alipay-sidecar"
    order.order_amount = Amount("HKD", "5800")
    merchant = Merchant()
    merchant.reference_merchant_id = "M0001"
    merchant.merchant_mcc = "5812"
    merchant.merchant_name = "Tea House"
    store = Store()
    store.store_mcc = "5812"
    store.store_name = "Tea House Central"
    store.reference_store_id = "S0001"
    merchant.store = store
    order.merchant = merchant
    order.env = Env()
    order.env.user_agent = "Mozilla/5.0 AlipayClient/10.1.32.600"
    return EntryCodePaymentRequest(
        payment_request_id=request_id,
        order=order,
        currency="HKD",
        amount_in_cents="5800",
        payment_notify_url=notify_url,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--merchant-private-key", required=True)
    p.add_argument("--alipay-public-key", required=True)
    p.add_argument("--notify-url", required=True)
    p.add_argument("--app-port", type=int, required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--restart-after", default=None)
    p.add_argument("--resume-file", default=None)
    a = p.parse_args()
    merchant_key = open(a.merchant_private_key, encoding="utf-8").read()
    alipay_key = open(a.alipay_public_key, encoding="utf-8").read()

    received = []
    serve_app(a.app_port, alipay_key, received)
    client = DefaultAlipayClient(a.gateway, a.client_id, merchant_key, alipay_key)

    def pause_if_asked(after):
        if a.restart_after != after:
            return
        step("restart", ok=True)
        deadline = time.time() + 120
        while not os.path.exists(a.resume_file):
            if time.time() > deadline:
                fail("restart", "no resume file within 120 s")
            time.sleep(0.1)

    def call(name, request):
        try:
            body = json.loads(client.execute(request))
        except Exception as e:  # the SDK raises when its own verification fails
            fail(name, e)
        step(name, ok=True, result=body.get("result"), body=body)
        pause_if_asked(name)
        return body

    pay_id = "py_sdk_pay_" + a.run_id
    paid = call("pay", entry_code_pay(pay_id, a.notify_url))

    deadline = time.time() + 60
    while not received and time.time() < deadline:
        time.sleep(0.2)
    if not received:
        fail("notification", "no PAYMENT_RESULT reached the app within 60 s")
    n = received[0]
    if not n["sdk_verified"] or n["sidecar_verified"] != "true":
        fail("notification", "not verified: %r" % n)
    step("notification", ok=True, notify_type=n["body"].get("notifyType"), payment_request_id=n["body"].get("paymentRequestId"))

    q = AlipayPayQueryRequest()
    q.payment_request_id = pay_id
    inquiry = call("inquiryPayment", q)

    r = AlipayRefundRequest()
    r.refund_request_id = "py_sdk_refund_" + a.run_id
    r.payment_id = inquiry.get("paymentId") or paid.get("paymentId")
    r.refund_amount = Amount("HKD", "100")
    call("refund", r)

    second = "py_sdk_cancel_" + a.run_id
    call("pay (to cancel)", entry_code_pay(second, a.notify_url))
    c = AlipayPayCancelRequest()
    c.payment_request_id = second
    call("cancel", c)
    step("done", ok=True, sdk=sdk_version())


def sdk_version():
    for dist in ("global-open-sdk-python", "global-alipay-sdk-python"):
        try:
            return "%s %s" % (dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


if __name__ == "__main__":
    main()
