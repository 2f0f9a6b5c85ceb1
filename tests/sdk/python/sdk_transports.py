"""The current Python SDK's other transports, unmodified, through the sidecar (issue 24).

Run by tests/it/python_sdk/transports.rs with target/sdk-venv-open (global-open-sdk-python
1.7.1 with its `[http2]` extra, scripts/sdk-venv.sh). SSL_CERT_FILE names the sidecar's
trust bundle (tls_trust_out); the SDK's http.client and httpx both read it.

1. meter/createSession (signed, verified by the SDK) -> its sessionId;
2. meter/uploadEvent with X-Session-Id over HTTP/2 (httpx, http1=False: the SDK itself
   refuses a connection that did not negotiate HTTP/2);
3. product/uploadImage, multipart, with set_upload_gateway_url pointing at the sidecar (the
   SDK signs the `body` part, the sidecar re-signs it with the merchant key and sends it to
   its upload gateway; the SDK verifies the answer by its upload rule).
Prints one JSON line per step; exits non-zero on the first failure.
"""

import argparse
import io
import json
import sys

from com.alipay.ams.api.default_alipay_client import DefaultAlipayClient
from com.alipay.ams.api.model.meter_event_batch import MeterEventBatch
from com.alipay.ams.api.request.billing.alipay_meter_create_session_request import (
    AlipayMeterCreateSessionRequest,
)
from com.alipay.ams.api.request.billing.alipay_meter_upload_event_request import (
    AlipayMeterUploadEventRequest,
)
from com.alipay.ams.api.request.billing.alipay_product_upload_image_request import (
    AlipayProductUploadImageRequest,
)


def step(name, **fields):
    print(json.dumps(dict(step=name, **fields)), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True)
    p.add_argument("--upload-gateway", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--merchant-private-key", required=True)
    p.add_argument("--alipay-public-key", required=True)
    a = p.parse_args()
    merchant_key = open(a.merchant_private_key, encoding="utf-8").read()
    alipay_key = open(a.alipay_public_key, encoding="utf-8").read()
    client = DefaultAlipayClient(a.gateway, a.client_id, merchant_key, alipay_key)

    create = AlipayMeterCreateSessionRequest()
    create.request_id = "meter-session-1"
    answer = json.loads(client.execute(create))
    session_id = answer.get("sessionId")
    if answer["result"]["resultStatus"] != "S" or not session_id:
        raise SystemExit("createSession: " + json.dumps(answer))
    step("createSession", session_id=session_id)

    batch = MeterEventBatch()
    batch.event_name = "api_calls"
    batch.events = [{"identifier": "evt-1", "value": 3}]
    upload = AlipayMeterUploadEventRequest()
    upload.meters = [batch]
    answer = json.loads(client.execute_with_headers(upload, {"X-Session-Id": session_id}))
    if answer["result"]["resultStatus"] != "S":
        raise SystemExit("uploadEvent: " + json.dumps(answer))
    step("uploadEvent", session_id=session_id)

    client.set_upload_gateway_url(a.upload_gateway)
    image = AlipayProductUploadImageRequest()
    image.product_id = "prod_sdk_1"
    image.set_file(io.BytesIO(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64), "shoe.png")
    response = client.upload_file(image)
    status = response.result.result_status
    status = getattr(status, "value", status)
    if status != "S" or response.product_id != "prod_sdk_1":
        raise SystemExit("uploadImage: " + str(response.to_ams_dict()))
    step("uploadImage", image_url=response.image_url)
    step("done")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the SDK's own checks raise AlipayApiException
        print("FAILED: {}: {}".format(type(e).__name__, e), file=sys.stderr)
        sys.exit(1)
