//! Unit-test support for the handlers (compiled for tests only): the published vectors and
//! their keys, a key set built from them, requests and answers as values, and one in-memory
//! upstream that stands in for the gateway (outbound) and the app (inbound).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::handler::{Reply, Request};
use crate::keyset::{Credential, KeySet, KeySources};
use crate::protocol::{content_to_sign, sign_content, PrivateKey, PublicKey, Verifier};
use crate::upstream::{UpstreamClient, UpstreamError, UpstreamRequest, UpstreamResponse};

/// `tests/data/ams-public.json`, parsed once.
pub(crate) fn vectors() -> &'static serde_json::Value {
    static V: OnceLock<serde_json::Value> = OnceLock::new();
    V.get_or_init(|| {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ams-public.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
            .expect("vectors json")
    })
}

/// The vector called `id`.
pub(crate) fn vector(id: &str) -> &'static serde_json::Value {
    vectors()["vectors"]
        .as_array()
        .expect("vector list")
        .iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
}

/// An input of vector `id` as text.
pub(crate) fn input(id: &str, field: &str) -> String {
    vector(id)["inputs"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no input {field}"))
        .to_string()
}

fn pem(role: &str, kind: &str) -> &'static str {
    vectors()["keys"][role][kind].as_str().expect("key pem")
}

/// The vectors' merchant private key.
pub(crate) fn merchant_key() -> PrivateKey {
    PrivateKey::from_text(pem("merchant", "private_pkcs8_pem")).expect("merchant key")
}

/// The vectors' merchant public key (to check what the sidecar signed).
pub(crate) fn merchant_public() -> Verifier {
    Verifier::new([(
        "1".to_string(),
        PublicKey::from_text(pem("merchant", "public_spki_pem")).expect("merchant public"),
    )])
}

/// The vectors' Alipay private key: the fakes sign answers and notifications with it.
pub(crate) fn alipay_key() -> PrivateKey {
    PrivateKey::from_text(pem("alipay", "private_pkcs8_pem")).expect("alipay key")
}

/// A key set for `client_id`: the vectors' merchant key (version 1) and Alipay's public key
/// as keyVersion 1.
pub(crate) fn keyset(client_id: &str) -> Arc<KeySet> {
    let alipay = PublicKey::from_text(pem("alipay", "public_spki_pem")).expect("alipay public");
    Arc::new(KeySet {
        client_id: client_id.to_string(),
        credential: Credential::Signing(crate::signer::SigningKey::file("default", merchant_key())),
        merchant_key_version: "1".to_string(),
        alipay: Verifier::new([("1".to_string(), alipay)]),
        sources: KeySources {
            credential: "merchant.pem".into(),
            alipay_public_keys: BTreeMap::new(),
        },
        warnings: Vec::new(),
        merchant_key_file: None,
    })
}

/// Alipay's `Signature` header over `POST <target>\n<client_id>.<time>.<body>` (keyVersion
/// `version`).
pub(crate) fn alipay_signature(
    version: &str,
    target: &str,
    client_id: &str,
    time: &str,
    body: &[u8],
) -> String {
    let content = content_to_sign("POST", target, client_id, time, body);
    sign_content(&alipay_key(), version, &content).expect("sign")
}

/// A whole request as the adapter hands it over.
pub(crate) fn request(target: &str, headers: &[(&str, &str)], body: &[u8]) -> Request {
    let mut head = RequestHeader::build("POST", target.as_bytes(), None).expect("head");
    for (name, value) in headers {
        head.append_header(name.to_string(), *value)
            .expect("header");
    }
    Request {
        head,
        target: target.to_string(),
        body: Bytes::copy_from_slice(body),
        local_addr: None,
    }
}

/// A complete upstream answer.
pub(crate) fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> UpstreamResponse {
    let mut header = ResponseHeader::build(status, None).expect("status");
    for (name, value) in headers {
        header
            .append_header(name.to_string(), *value)
            .expect("header");
    }
    UpstreamResponse {
        header,
        body: Bytes::copy_from_slice(body),
        elapsed: Duration::from_millis(3),
    }
}

type Respond = dyn Fn(&UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> + Send + Sync;

/// An in-memory upstream: answers with `respond` and keeps every request it was sent.
pub(crate) struct Fake {
    respond: Box<Respond>,
    seen: Mutex<Vec<UpstreamRequest>>,
}

impl Fake {
    /// An upstream that answers every request with `respond(request)`.
    pub(crate) fn new(
        respond: impl Fn(&UpstreamRequest) -> Result<UpstreamResponse, UpstreamError>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            respond: Box::new(respond),
            seen: Mutex::new(Vec::new()),
        })
    }

    /// The requests sent so far.
    pub(crate) fn seen(&self) -> Vec<UpstreamRequest> {
        self.seen.lock().expect("seen").clone()
    }

    /// The one request sent (panics unless exactly one was).
    pub(crate) fn only(&self) -> UpstreamRequest {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one upstream request");
        seen.into_iter().next().expect("one")
    }

    fn answer(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.seen.lock().expect("seen").push(request.clone());
        (self.respond)(request)
    }
}

impl UpstreamClient for Arc<Fake> {
    async fn send(&self, request: &UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        self.answer(request)
    }
}

/// A header of a request or reply head, as text.
pub(crate) fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The reply's `result.resultCode` (sidecar errors) or `None`.
pub(crate) fn result_code(reply: &Reply) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
    v["result"]["resultCode"].as_str().map(str::to_string)
}

/// One event as [`FakeJournal`] holds it.
#[derive(Debug, Clone)]
pub(crate) struct FakeEvent {
    pub(crate) entry: crate::journal::Entry,
    pub(crate) status: sidecar_store::NotificationStatus,
    pub(crate) copies: i64,
    pub(crate) failures: Vec<String>,
}

/// An in-memory notification journal with the store's insert-or-get semantics; `broken`
/// makes every call fail as an unreachable store does.
#[derive(Default)]
pub(crate) struct FakeJournal {
    pub(crate) events: Mutex<BTreeMap<String, FakeEvent>>,
    pub(crate) broken: std::sync::atomic::AtomicBool,
}

impl FakeJournal {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn broken() -> Arc<Self> {
        let j = Self::new();
        j.broken.store(true, std::sync::atomic::Ordering::SeqCst);
        j
    }

    /// Every event, by event id.
    pub(crate) fn events(&self) -> BTreeMap<String, FakeEvent> {
        self.events.lock().expect("events").clone()
    }

    fn check(&self) -> Result<(), sidecar_store::StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(sidecar_store::StoreError::Unavailable {
                op: "fake",
                detail: "the fake store is down".into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::journal::Journal for FakeJournal {
    fn location(&self) -> &str {
        "fake.db"
    }

    async fn record(
        &self,
        entry: crate::journal::Entry,
    ) -> Result<sidecar_store::Recorded, sidecar_store::StoreError> {
        use sidecar_store::NotificationStatus;
        self.check()?;
        let id = entry.key.event_id();
        let mut events = self.events.lock().expect("events");
        let inserted = !events.contains_key(&id);
        let e = events.entry(id.clone()).or_insert_with(|| FakeEvent {
            entry: entry.clone(),
            status: NotificationStatus::Pending,
            copies: 0,
            failures: Vec::new(),
        });
        e.copies += 1;
        Ok(sidecar_store::Recorded {
            event_id: id,
            status: e.status,
            first_seen: e.entry.now,
            inserted,
            already_delivered: e.status == NotificationStatus::Delivered,
            seen_count: e.copies,
        })
    }

    async fn delivered(&self, event_id: &str, _now: i64) -> Result<(), sidecar_store::StoreError> {
        self.check()?;
        if let Some(e) = self.events.lock().expect("events").get_mut(event_id) {
            e.status = sidecar_store::NotificationStatus::Delivered;
        }
        Ok(())
    }

    async fn failed(
        &self,
        event_id: &str,
        error: &str,
        _now: i64,
    ) -> Result<(), sidecar_store::StoreError> {
        self.check()?;
        if let Some(e) = self.events.lock().expect("events").get_mut(event_id) {
            e.failures.push(error.to_string());
        }
        Ok(())
    }
}

/// What [`FakeQueue`] was told about a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueueOutcome {
    Delivered(String),
    Retry {
        event_id: String,
        error: String,
        next_at: i64,
    },
    Dead {
        event_id: String,
        error: String,
    },
}

/// An in-memory delivery queue: every row put in is due; a claim takes them out (as a lease
/// would hide them); the outcomes are kept in order. `broken` makes every call fail as an
/// unreachable store does.
#[derive(Default)]
pub(crate) struct FakeQueue {
    rows: Mutex<Vec<sidecar_store::Delivery>>,
    outcomes: Mutex<Vec<QueueOutcome>>,
    pub(crate) broken: std::sync::atomic::AtomicBool,
}

impl FakeQueue {
    pub(crate) fn with(rows: impl IntoIterator<Item = sidecar_store::Delivery>) -> Arc<Self> {
        let q = Arc::new(Self::default());
        q.rows.lock().expect("rows").extend(rows);
        q
    }

    /// The outcomes recorded so far, in order.
    pub(crate) fn outcomes(&self) -> Vec<QueueOutcome> {
        self.outcomes.lock().expect("outcomes").clone()
    }

    fn check(&self) -> Result<(), sidecar_store::StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(sidecar_store::StoreError::Unavailable {
                op: "fake",
                detail: "the fake store is down".into(),
            });
        }
        Ok(())
    }

    fn push(&self, o: QueueOutcome) -> Result<(), sidecar_store::StoreError> {
        self.check()?;
        self.outcomes.lock().expect("outcomes").push(o);
        Ok(())
    }
}

#[async_trait::async_trait]
impl crate::journal::DeliveryQueue for FakeQueue {
    fn location(&self) -> &str {
        "fake.db"
    }

    async fn claim_due(
        &self,
        _now: i64,
        _owner: &str,
        _lease: Duration,
        limit: i64,
    ) -> Result<Vec<sidecar_store::Delivery>, sidecar_store::StoreError> {
        self.check()?;
        let mut rows = self.rows.lock().expect("rows");
        let n = rows.len().min(usize::try_from(limit).unwrap_or(0));
        Ok(rows.drain(..n).collect())
    }

    async fn mark_delivered(
        &self,
        event_id: &str,
        _now: i64,
    ) -> Result<(), sidecar_store::StoreError> {
        self.push(QueueOutcome::Delivered(event_id.into()))
    }

    async fn retry_at(
        &self,
        event_id: &str,
        error: &str,
        next_at: i64,
        _now: i64,
    ) -> Result<(), sidecar_store::StoreError> {
        self.push(QueueOutcome::Retry {
            event_id: event_id.into(),
            error: error.into(),
            next_at,
        })
    }

    async fn mark_dead(
        &self,
        event_id: &str,
        error: &str,
        _now: i64,
    ) -> Result<(), sidecar_store::StoreError> {
        self.push(QueueOutcome::Dead {
            event_id: event_id.into(),
            error: error.into(),
        })
    }
}
