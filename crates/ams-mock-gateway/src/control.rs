//! Payments that become final later (outcome delays), completion on demand, and the
//! unsigned `/mock/…` control endpoints a test or demo uses to decide when "Alipay" acts.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;

use super::api::{js, obj};
use super::clock::stamp;
use super::notify;
use super::state::{stopped, Shared};
use super::switches::{
    check_fail_code, ControlError, PaymentResult, PaymentStatus, DEFAULT_FAIL_CODE,
};

/// Longest paymentRequestId accepted in a control path (Alipay's limit is 64).
const MAX_ID_LEN: usize = 64;

/// After `after`, makes the payment final with `result` and sends its notification as its
/// notify mode says; nothing happens if it was completed or cancelled meanwhile. Counts as a
/// notification in flight until then.
pub(crate) fn settle_after(
    shared: &Arc<Shared>,
    request_id: String,
    after: Duration,
    result: PaymentResult,
) {
    let guard = notify::InFlight::start(shared);
    let mut shutdown = shared.shutdown_rx.clone();
    let shared = shared.clone();
    shared.runtime.clone().spawn(async move {
        let _guard = guard;
        tokio::select! {
            _ = tokio::time::sleep(after) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if let Err(e) = complete(&shared, &request_id, &result) {
            tracing::debug!(error = %e, "mock-gateway: outcome delay ended with nothing to do");
        }
    });
}

/// Makes a PROCESSING payment final now and sends its notification as its notify mode says.
pub(crate) fn complete(
    shared: &Arc<Shared>,
    request_id: &str,
    result: &PaymentResult,
) -> Result<PaymentStatus, ControlError> {
    let status = {
        let mut store = shared.store.lock().map_err(|_| ControlError::Stopped)?;
        store.settle(request_id, result, &stamp())?;
        store
            .status(request_id)
            .unwrap_or(PaymentStatus::Processing)
    };
    tracing::info!(
        payment_request_id = request_id,
        %status,
        "mock-gateway: payment completed"
    );
    notify::due(shared, request_id);
    Ok(status)
}

/// `POST /mock/notify/<id>`, `POST /mock/succeed/<id>`, `POST /mock/fail/<id>[?code=CODE]`:
/// the HTTP form of `notify_now` / `complete_payment`. Unsigned on purpose (they are the
/// test's remote control, not Alipay APIs); JSON answers, 404 for an unknown payment, 409
/// when the payment's state does not allow it.
pub(crate) fn http(
    shared: &Arc<Shared>,
    method: &hyper::Method,
    target: &str,
) -> (StatusCode, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest = path.strip_prefix("/mock/").unwrap_or("");
    let Some((action, raw_id)) = rest.split_once('/') else {
        return not_found(target);
    };
    let id = match percent_encoding::percent_decode_str(raw_id).decode_utf8() {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID_LEN && !id.contains('/') => id.into_owned(),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                error_body("the paymentRequestId in the path must be 1 to 64 characters"),
            )
        }
    };
    if !matches!(action, "notify" | "succeed" | "fail") {
        return not_found(target);
    }
    if method != hyper::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            error_body("the /mock/ control endpoints take POST"),
        );
    }
    let done = match action {
        "notify" => notify::now(shared, &id).map(|()| "notification started"),
        "succeed" => complete(shared, &id, &PaymentResult::Success).map(|_| "payment succeeded"),
        _ => {
            let code = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("code="))
                .unwrap_or(DEFAULT_FAIL_CODE);
            match check_fail_code(code) {
                Ok(code) => {
                    complete(shared, &id, &PaymentResult::Fail { code }).map(|_| "payment failed")
                }
                Err(e) => return (StatusCode::BAD_REQUEST, error_body(&e)),
            }
        }
    };
    let status = shared.store.lock().ok().and_then(|s| s.status(&id));
    match done {
        Ok(what) => (
            StatusCode::OK,
            obj(&[
                ("paymentRequestId", js(&id)),
                (
                    "paymentStatus",
                    js(status.map(PaymentStatus::as_str).unwrap_or("")),
                ),
                ("done", js(what)),
            ]),
        ),
        Err(e) => {
            let code = match e {
                ControlError::UnknownPayment(_) => StatusCode::NOT_FOUND,
                ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::CONFLICT,
            };
            (code, error_body(&e.to_string()))
        }
    }
}

fn not_found(target: &str) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        error_body(&format!(
            "no control endpoint {target}; known: POST /mock/notify/<paymentRequestId>, \
             /mock/succeed/<paymentRequestId>, /mock/fail/<paymentRequestId>[?code=CODE]"
        )),
    )
}

fn error_body(message: &str) -> String {
    obj(&[("error", js(message))])
}
