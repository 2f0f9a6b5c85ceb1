//! All integration tests in one binary (one link of pingora instead of one per file). A module
//! per concern; "real binary" means the test starts `alipay-sidecar` on 127.0.0.1 port-0
//! listeners (see `support/`).
mod admin; // the admin listener (/healthz, /readyz, /metrics, reload), who may reach it, `healthcheck`
mod api_keys; // merchant credentials: API-key mode, the app's credential headers, refused-signature warnings
mod backfill; // the backfill from Alipay's notification event log: dropped notifications recovered once
mod cli; // the one-shot commands on the vectors: `sign`, `verify`, `keygen`, `check-config`
mod config; // the config file and key loading through the library: example, env overrides, errors
mod demo; // `alipay-sidecar demo` killed every way a terminal or harness kills it, nothing left behind
mod deployment; // static checks of Dockerfile, Kubernetes examples, dashboard and alert rules
mod engine; // the crypto provider really is aws-lc-rs; the benchmark harness stays valid shell
mod inbound; // the inbound listener: notifications verified, forwarded byte-identical, or refused
mod journal; // the notification journal: de-duplication, store-and-forward, the `notifications` CLI
mod limits; // what a peer can make a listener hold, smuggling shapes, non-file keys, check-config refusals
mod listeners; // keep-alive, framing errors, slots per peer, only configured listeners, a 128 MiB crowd
mod logs; // what the logs never show: key material, Signature values, at any level
mod merchants; // several merchants in one sidecar: routing by listener, header and client-id
mod messages; // the messages a newcomer's mistakes get: each names the cause and the fix, once
mod metrics; // metric families and labels the dashboard and alerts rely on
mod mock_gateway; // the real binary's `mock-gateway` subcommand (the library's tests: crates/ams-mock-gateway/tests/)
mod notifications; // notifications under pressure: held bodies, replays, stale ones, concurrent copies
mod outbound; // the outbound listener: sign, forward over verified TLS, verify the answer
mod pkcs11; // the merchant key in a real PKCS#11 token (SoftHSM): check-config, pay, ack, reload, budget, CLI
mod properties; // property tests: round trips, tamper detection, parser robustness
mod python_sdk; // the official Python SDKs, unmodified, through the sidecar (port 443; api_key: API-key mode)
mod reconcile; // the missed-notification reconciler against the fake gateway and a real store
mod reload; // hot key reload: symlink swap, SIGHUP, POST /admin/reload, broken keys, reloads under traffic
mod sdk_compat; // legacy SDKs unchanged: the HTTPS outbound listener, absolute-form targets, gzip answers
mod shutdown; // SIGTERM drains the requests in flight, then exit 0
mod startup; // a first deploy: exit codes, the ready file, key-file and client-id checks, help, completions
mod store; // the store's files and servers: private SQLite files, retention, PostgreSQL down and back
mod support; // shared helpers: the rig, the sidecar process, the fake gateway, the app stand-in, HTTP
mod tls; // TLS files: the CA bundle's folder, the local CA, generated certificates, the trust bundle
mod transports; // the SDKs' other transports: multipart uploadImage (signed over its `body` part, upload host)
mod vectors; // every published vector through the library
mod walkthrough; // the README's fake-gateway walkthrough run as pasted; `mock-gateway --out-dir` restarted under a sidecar
