//! `meter/uploadEvent` (spec §8, E65): unsigned, HTTP/2 only, authenticated by the
//! `X-Session-Id` of a signed `meter/createSession`; the answer is unsigned. The request is
//! recorded like any other (its headers show the session id and that no signature came).

use hyper::StatusCode;

use super::json::{envelope, js, obj, result, Status};

/// Whether `path` is `meter/createSession` (signed, like every other API).
pub(crate) fn is_create_session(path: &str) -> bool {
    matches!(
        path,
        "/ams/api/v1/meter/createSession" | "/ams/sandbox/api/v1/meter/createSession"
    )
}

/// A signed `meter/createSession` answer with a fresh session id.
pub(crate) fn create() -> String {
    let id = format!("mock_session_{:016x}", getrandom::u64().unwrap_or(0));
    obj(&[
        ("result", result("SUCCESS", Status::S, "success")),
        ("sessionId", js(&id)),
    ])
}

/// Whether `path` is the session route.
pub(crate) fn is_session_route(path: &str) -> bool {
    path == "/ams/api/v1/meter/uploadEvent"
}

/// The answer: `505` over HTTP/1.x, an F without a session id, else `SUCCESS`.
pub(crate) fn answer(http2: bool, session_id: Option<&str>) -> (StatusCode, String) {
    if !http2 {
        let body = envelope(
            "METHOD_NOT_SUPPORTED",
            Status::F,
            "meter/uploadEvent is served over HTTP/2 only (mock-gateway)",
        );
        return (StatusCode::HTTP_VERSION_NOT_SUPPORTED, body);
    }
    match session_id.map(str::trim).filter(|s| !s.is_empty()) {
        None => (
            StatusCode::OK,
            envelope(
                "INVALID_SESSION",
                Status::F,
                "X-Session-Id is missing (mock-gateway)",
            ),
        ),
        Some(_) => (StatusCode::OK, envelope("SUCCESS", Status::S, "success")),
    }
}
