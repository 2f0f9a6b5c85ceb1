//! The typed configuration sections: resolved, checked values every consumer can trust.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::choice::choice;

/// `[keys]`: the files holding the merchant private key and Alipay's public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeysConfig {
    /// How the merchant authenticates to the gateway: its private key (RSA signing) or an
    /// API key file, resolved against the config folder.
    pub credential: CredentialFile,
    /// The `keyVersion` written into outgoing `Signature` headers (digits), default `"1"`.
    pub merchant_key_version: String,
    /// Alipay public key files by `keyVersion` (at least one), resolved against the config
    /// folder. Several at once let Alipay rotate its key without a restart.
    pub alipay_public_keys: BTreeMap<String, PathBuf>,
}

/// The merchant's credential file: exactly one of `merchant_private_key` and `api_key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialFile {
    /// `merchant_private_key`: PEM or one-line base64; requests are RSA-signed.
    PrivateKey(PathBuf),
    /// `api_key`: one line `{isak|irak}_{TEST|PROD}_…`; requests carry
    /// `Authorization: Bearer <key>` instead of a signature.
    ApiKey(PathBuf),
    /// `merchant_private_key = "pkcs11:…"`: the key stays in a PKCS#11 token; requests are
    /// RSA-signed by the token.
    Pkcs11(Pkcs11Key),
}

impl CredentialFile {
    /// The file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            CredentialFile::PrivateKey(p) | CredentialFile::ApiKey(p) => p,
            // the file a token key depends on (and the reload watcher watches): the PIN file
            CredentialFile::Pkcs11(k) => &k.pin_file,
        }
    }

    /// The option naming the file, relative to the keys section (`merchant_private_key`,
    /// `api_key`).
    pub fn option(&self) -> &'static str {
        match self {
            CredentialFile::PrivateKey(_) | CredentialFile::Pkcs11(_) => "merchant_private_key",
            CredentialFile::ApiKey(_) => "api_key",
        }
    }
}

/// `merchant_private_key = "pkcs11:…"` (src/config/pkcs11.rs): where the merchant key lives
/// in a token, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Key {
    /// The URI as written (for messages; it holds no secret: `pin-value` is refused).
    pub uri: String,
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `object=`: the key's label.
    pub object: Option<String>,
    /// `id=`: the key's CKA_ID bytes.
    pub id: Option<Vec<u8>>,
    /// `[keys] pkcs11_module` (or the URI's `module-path`): the vendor's PKCS#11 library.
    pub module: PathBuf,
    /// `[keys] pkcs11_pin_file` (or the URI's `pin-source`): the file holding the user PIN.
    pub pin_file: PathBuf,
    /// `[keys] max_concurrent_signs`: `None` = the token's session limit, or 8.
    pub max_concurrent_signs: Option<usize>,
    /// `[keys] sign_timeout` (default 2 s).
    pub sign_timeout: Duration,
}

/// `[outbound]`: the signing proxy between the app and Alipay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Where the app sends its AMS calls over plain HTTP (default `127.0.0.1:8080`); `None`
    /// when only `tls_listen` is set.
    pub listen: Option<SocketAddr>,
    /// The HTTPS listener for SDKs that only speak HTTPS (Java, Python, PHP, .NET).
    pub tls: Option<OutboundTls>,
    /// The Alipay gateway, always HTTPS.
    pub gateway: Gateway,
    /// `upload_gateway`: where `product/uploadImage` goes (every merchant); `None` = derived
    /// from each merchant's gateway ([`crate::upload::derive_upload_gateway`]).
    pub upload_gateway: Option<Gateway>,
    /// Request paths the proxy forwards; anything else is refused.
    pub allowed_path_prefixes: Vec<String>,
    /// Largest request body accepted from the app (default 1 MiB).
    pub max_body_bytes: usize,
    /// Form of the `Request-Time` header the sidecar writes.
    pub request_time_format: RequestTimeFormat,
    /// Sent as `Agent-Token` when set (ISV / agent mode); an empty string means unset.
    pub agent_token: Option<String>,
    /// Rewrite `/ams/api/` to `/ams/sandbox/api/` before signing, for `SANDBOX_` client ids.
    pub sandbox_path_rewrite: bool,
    /// Extra CA certificate(s) (PEM) trusted for the gateway, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Connect timeout to the gateway (default 5 s).
    pub connect_timeout: Duration,
    /// Whole-exchange timeout to the gateway (default 15 s, as the SDKs use).
    pub request_timeout: Duration,
    /// Verify Alipay's response signatures before the app sees them (default true).
    pub verify_responses: bool,
    /// Refuse a signed answer whose `response-time` is further than this from now (default
    /// 10 min); off when `None` (`"off"`).
    pub max_response_time_skew: Option<Duration>,
    /// Allow a non-loopback `listen` address (the listener signs anything it is sent).
    pub allow_remote_clients: bool,
    /// Host names (besides loopback addresses and `localhost`) the app may put in `Host`
    /// on a loopback listener; anything else is refused as DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// Connections open at once on the outbound listener (default 256).
    pub max_connections: usize,
}

/// `[outbound] tls_listen` and its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundTls {
    /// The HTTPS listener's address (the Python SDK always connects to port 443).
    pub listen: SocketAddr,
    /// Where the certificate comes from: generated at start, `tls_cert`/`tls_key`, or
    /// issued from `tls_ca_cert`/`tls_ca_key`.
    pub source: CertSource,
    /// Extra names for a generated or issued certificate (besides localhost, 127.0.0.1, ::1).
    pub names: Vec<String>,
    /// Where to write the generated certificate's CA (public part), for apps that verify.
    pub ca_out: Option<PathBuf>,
    /// Where to write the trust bundle (system roots + the CA apps must trust), for
    /// `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`.
    pub trust_out: Option<PathBuf>,
}

/// Where the HTTPS listener's certificate comes from (`[outbound]` tls_* keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// A private CA and a leaf generated at start, in memory (no tls_cert, no tls_ca_cert).
    Generated,
    /// `tls_cert` / `tls_key`: a chain issued elsewhere and its key.
    Files {
        /// The certificate chain (PEM, leaf first).
        cert: PathBuf,
        /// Its private key (PEM).
        key: PathBuf,
    },
    /// `tls_ca_cert` / `tls_ca_key`: a leaf issued at start (and reload) from this CA.
    Ca {
        /// The CA certificate (PEM).
        cert: PathBuf,
        /// The CA's private key (PKCS#8 PEM).
        key: PathBuf,
    },
}

impl CertSource {
    /// The files a reload re-reads (none for a generated certificate).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            CertSource::Generated => Vec::new(),
            CertSource::Files { cert, key } | CertSource::Ca { cert, key } => {
                vec![cert.clone(), key.clone()]
            }
        }
    }

    /// The config key an error of this source is reported at.
    pub fn config_key(&self) -> &'static str {
        match self {
            CertSource::Generated => "outbound.tls_listen",
            CertSource::Files { .. } => "outbound.tls_cert",
            CertSource::Ca { .. } => "outbound.tls_ca_cert",
        }
    }
}

impl OutboundConfig {
    /// Every outbound listener address (plain, TLS).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen
            .into_iter()
            .chain(self.tls.as_ref().map(|t| t.listen))
            .collect()
    }
}

/// An HTTPS Alipay gateway (TLS is mandatory: the scheme is not stored because it is always
/// `https`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Host name or IP address (IPv6 without brackets); also the TLS server name.
    pub host: String,
    /// TCP port (443 unless the URL says otherwise).
    pub port: u16,
}

impl Gateway {
    /// The gateway as a URL (`https://host` or `https://host:port`), for logs and summaries.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            format!("https://{host}")
        } else {
            format!("https://{host}:{}", self.port)
        }
    }
}

choice! {
/// The region shortcuts of `[outbound] region` (`region = "sea"` for
/// `gateway = "https://open-sea-global.alipay.com"`), as used by Alipay's current SDK samples
/// (spec §8). One declaration, so the documentation, the errors and the code cannot disagree.
pub enum Region {
    /// North America.
    Na = "na",
    /// Asia.
    Sea = "sea",
    /// Europe.
    Eu = "eu",
}
}

impl Region {
    /// The gateway host the shortcut stands for (Europe's is Alipay's `-de-global` one).
    pub fn host(self) -> &'static str {
        match self {
            Region::Na => "open-na-global.alipay.com",
            Region::Sea => "open-sea-global.alipay.com",
            Region::Eu => "open-de-global.alipay.com",
        }
    }
}

choice! {
/// How the sidecar writes `Request-Time` (the value is signed verbatim either way, spec §1.2).
pub enum RequestTimeFormat {
    /// Epoch milliseconds (`1714538096000`), what the Java and Go SDKs send. Default.
    EpochMillis = "epoch_millis",
    /// ISO-8601 UTC with milliseconds (`2024-05-01T04:34:56.123Z`).
    Iso8601 = "iso8601",
}
}

/// `[inbound]`: the listener that verifies Alipay's notifications before the app sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundConfig {
    /// Where Alipay's notifications arrive (default `0.0.0.0:8081`).
    pub listen: SocketAddr,
    /// The app that receives verified notifications.
    pub forward_to: AppUpstream,
    /// Notify path → app path; paths not listed are forwarded unchanged.
    pub path_map: BTreeMap<String, String>,
    /// Largest notification body accepted (default 64 KiB: notifications are a few KB).
    pub max_body_bytes: usize,
    /// Bytes of notification bodies read (not yet verified) at once, across all connections
    /// (default 8 MiB); beyond it a notification gets a retryable 503.
    pub unverified_body_budget_bytes: usize,
    /// How long the app may take to answer a forwarded notification (default 10 s).
    pub forward_timeout: Duration,
    /// Refuse notifications whose `Request-Time` is further than this from now (default
    /// 48 h, longer than Alipay's whole re-send schedule); off when `None` (`"off"`).
    pub max_request_time_skew: Option<Duration>,
    /// Digests of delivered notifications remembered against exact replays when there is
    /// no `[store]` (default 16,384; 0 = off).
    pub replay_window_entries: usize,
    /// Who answers Alipay.
    pub acknowledge: Acknowledge,
    /// Sign the acknowledgement with the merchant key (legacy Java SDK style).
    pub sign_acknowledgements: bool,
    /// Enforce (default) or only record verification results.
    pub mode: InboundMode,
    /// Connections open at once on the inbound listener (default 1024).
    pub max_connections: usize,
    /// What happens to a re-send of an event already delivered (needs `[store]` to suppress;
    /// `suppress` is the default with a store, `forward` without).
    pub duplicates: Duplicates,
    /// Store-and-forward (`acknowledge = "after-store"`): gaps between deliveries to the app;
    /// the last one repeats until `max_delivery_age`.
    pub delivery_schedule: Vec<Duration>,
    /// Store-and-forward: after this long undelivered, a notification is marked dead.
    pub max_delivery_age: Duration,
}

choice! {
/// What the inbound verifier does with a re-send of an event the app already took.
pub enum Duplicates {
    /// Acknowledge it to Alipay without delivering it again (the default with a store).
    Suppress = "suppress",
    /// Deliver every copy, as without a store.
    Forward = "forward",
}
}

/// Where the sidecar keeps its state (`[store]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite in this file (one sidecar, or one per pod on a volume).
    Sqlite(PathBuf),
    /// PostgreSQL at this URL, shared by several sidecar replicas.
    Postgres(String),
}

/// How the store is used (`[store] timeout`, `retention`; issue 18 L3, L5). The defaults
/// when there is no `[store]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// How long one store call may wait (a pooled connection, PostgreSQL's answer to a
    /// connect) before the store counts as unavailable: short, because while PostgreSQL is
    /// down every notification would wait this long.
    pub timeout: Duration,
    /// Delivered notifications and closed pay records older than this are pruned.
    pub retention: Duration,
}

/// Bounds of `[store] timeout`: below, a busy store looks down; above, a down one stalls
/// every notification.
pub const STORE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));
/// Shortest `[store] retention`: Alipay re-sends a notification for 24 h; a pruned event's
/// re-send would be delivered again instead of recognised.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The missed-notification reconciler (`[reconcile]` with `enabled = true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// No result notification this long after the pay answer → start inquiring.
    pub reconcile_after: Duration,
    /// Gaps between inquiries; the last one repeats until the close time.
    pub inquiry_schedule: Vec<Duration>,
    /// The close time of a pay whose request has no `paymentExpireTime`.
    pub default_close_after: Duration,
    /// At the close time without a final status, call `payments/cancel`.
    pub cancel_on_expiry: bool,
    /// Where a reconciled result is delivered in the app, instead of the path of the pay's
    /// `paymentNotifyUrl`.
    pub deliver_path: Option<String>,
}

/// The backfill from Alipay's notification event log (`[reconcile] backfill = true`, issue 22).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillConfig {
    /// Time between walks of each merchant's event log.
    pub interval: Duration,
    /// How far back the first walk (and any walk after a long pause) looks; at most 30 days,
    /// Antom's retention of the event log.
    pub window: Duration,
    /// `[reconcile] deliver_path`: where a recovered event goes when its notify path is not
    /// known from a pay record.
    pub deliver_path: Option<String>,
    /// The merchants whose log the worker walks, in config order: `[reconcile] backfill`, or
    /// the merchant's own `[merchants.reconcile] backfill` where set. Never empty.
    pub merchants: Vec<String>,
}

/// Longest `[reconcile] backfill_window`: Antom keeps its notification event log 30 days.
pub const MAX_BACKFILL_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// The app behind the inbound listener (plain HTTP: it runs next to the sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppUpstream {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 unless the URL says otherwise).
    pub port: u16,
    /// Path prefix put in front of every forwarded path; empty or `/x` without a trailing `/`.
    pub base_path: String,
}

impl AppUpstream {
    /// The app's base URL, for logs and summaries.
    pub fn url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("http://{host}:{}{}", self.port, self.base_path)
    }
}

choice! {
/// Who answers Alipay's notification.
pub enum Acknowledge {
    /// Relay the app's own answer (default).
    App = "app",
    /// Answer with the exact SUCCESS body once the app returned 2xx.
    Sidecar = "sidecar",
    /// Answer SUCCESS once the notification is durably stored, then deliver it to the app
    /// with retries (store-and-forward; needs `[store]`).
    AfterStore = "after-store",
}
}

choice! {
/// Whether a failed notification verification blocks the notification.
pub enum InboundMode {
    /// Refuse what does not verify (default).
    Enforce = "enforce",
    /// Verify and record, but forward anyway (marked unverified), for roll-outs.
    Shadow = "shadow",
}
}

/// `[admin]`: the metrics / health / reload listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
    /// Connections open at once on the admin listener (default 64).
    pub max_connections: usize,
    /// Host names (besides IP literals and `localhost`) the admin listener answers to.
    pub allowed_hosts: Vec<String>,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `None`: JSON when stdout is not a terminal, text otherwise.
    pub format: Option<LogFormat>,
    /// A tracing filter (`info`, `alipay_sidecar=debug,info`, …); `RUST_LOG` wins when set.
    pub level: String,
}

choice! {
/// Log line format.
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json = "json",
    /// Human-readable lines.
    Text = "text",
}
}

/// `[server]`: process-level settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Worker threads per listener (default 2).
    pub threads: usize,
    /// After SIGTERM, keep accepting for this long so load balancers notice (default 5 s).
    pub shutdown_grace: Duration,
    /// Then wait at most this long for in-flight requests (default 30 s).
    pub shutdown_timeout: Duration,
    /// Largest request head on every listener (default 16 KiB); more gets 431.
    pub max_header_bytes: usize,
    /// The whole request head must arrive within this (default 10 s).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may wait idle for its next request (default 5 s).
    pub idle_timeout: Duration,
    /// The whole request body must arrive within this (default 30 s).
    pub body_read_timeout: Duration,
}

/// One merchant (client id) the sidecar signs and verifies for, with every value resolved:
/// its own setting where `[[merchants]]` gives one, else the shared `[outbound]`/`[inbound]`
/// default. A single-merchant file (top-level `client_id` and `[keys]`) is the merchant
/// named [`DEFAULT_MERCHANT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerchantConfig {
    /// `[a-z0-9_-]`, unique: the `merchant` label of metrics and log lines, and the value of
    /// the `X-Alipay-Sidecar-Merchant` header.
    pub name: String,
    /// The merchant's Alipay client id (`SANDBOX_…` for the sandbox), unique.
    pub client_id: String,
    /// Sent as `Agent-Token` when set (ISV / agent mode).
    pub agent_token: Option<String>,
    /// Where the merchant's keys are; re-read on reload.
    pub keys: KeysConfig,
    /// The gateway for this merchant; `None` when there is no `[outbound]`.
    pub gateway: Option<Gateway>,
    /// Extra CA certificate(s) trusted for this merchant's gateway.
    pub ca_file: Option<PathBuf>,
    /// The merchant's own plain-HTTP outbound listener, besides the shared one.
    pub listen: Option<SocketAddr>,
    /// The merchant's own HTTPS outbound listener (certificate as for the shared one).
    pub tls_listen: Option<SocketAddr>,
    /// Where this merchant's verified notifications go; `None` when there is no `[inbound]`.
    pub forward_to: Option<AppUpstream>,
    /// Notify path → app path for this merchant.
    pub path_map: BTreeMap<String, String>,
    /// Dotted prefix of this merchant's options in the file (`""` for the single-merchant
    /// form, `merchants.1` for the second `[[merchants]]`), to locate its values in errors.
    pub(crate) at: String,
}

/// The name of the one merchant of a single-merchant config.
pub const DEFAULT_MERCHANT: &str = "default";

impl MerchantConfig {
    /// The dotted key of one of this merchant's options (`client_id`,
    /// `keys.merchant_private_key`) as located in the file: `merchants.1.client_id` for the
    /// second `[[merchants]]`, the key itself for the single-merchant form.
    pub fn key(&self, option: &str) -> String {
        if self.at.is_empty() {
            option.to_string()
        } else {
            format!("{}.{option}", self.at)
        }
    }

    /// Whether the client id is a sandbox one (`SANDBOX_…`).
    pub fn is_sandbox(&self) -> bool {
        self.client_id.starts_with("SANDBOX_")
    }

    /// The merchant's own outbound listener addresses (plain, TLS).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.into_iter().chain(self.tls_listen).collect()
    }
}
