//! `alipay-sidecar notifications backfill` and `notifications audit` (issue 22): one walk of a
//! merchant's notification event log on demand, next to a running sidecar on the same store.
//!
//! The calls go through the running sidecar's plain outbound listener (`--via`, default
//! `[outbound] listen` of the merchant or the shared one), so they are signed with the merchant
//! key and their answers verified by the sidecar exactly like the background walk's; this
//! command holds no key. Recovered events are queued in the journal: the running sidecar's
//! delivery worker delivers them.
//!
//! Exit codes: 0 nothing was missing; 1 runtime failure (store or sidecar unreachable, the walk
//! did not reach the end of the list); 2 usage or configuration error; 3 events were missing
//! from the journal (`backfill`: recorded for delivery unless `--dry-run`; `audit`: not
//! recorded).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::walk::{Merchant, Mode, Walk, Walker};
use crate::cli::exit::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::config::Config;
use crate::exchange::now_millis;
use crate::headers::MERCHANT_HEADER;
use crate::reconcile::{Called, PayApi};
use crate::store::StateStore;

/// Exit code: events were missing from the journal.
pub const EXIT_MISSING: i32 = 3;

/// Largest answer read from the sidecar.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Options of `notifications backfill` and `notifications audit`.
#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub config: crate::tools::ConfigArgs,
    /// The merchant (its name in the config; `default` for a single-merchant file).
    #[arg(long, value_name = "NAME")]
    pub merchant: String,
    /// How far back (e.g. `2h`, `7d`; at most 30d, Antom's retention of the event log).
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Duration,
    /// Only report; record nothing (`backfill` only).
    #[arg(long)]
    pub dry_run: bool,
    /// The running sidecar's plain outbound listener (default: the merchant's or the shared
    /// `[outbound] listen` of the config).
    #[arg(long, value_name = "ADDR")]
    pub via: Option<SocketAddr>,
    /// Where a recovered event is delivered in the app when its notify path is unknown (no
    /// recorded pay with a paymentNotifyUrl); default: `[reconcile] deliver_path`.
    #[arg(long, value_name = "PATH")]
    pub deliver_path: Option<String>,
}

fn parse_since(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 2h, 7d"))?;
    if d.is_zero() || d > crate::config::MAX_BACKFILL_WINDOW {
        return Err(format!(
            "{s:?}: from 1s to 30d (Antom keeps its event log 30 days)"
        ));
    }
    Ok(d)
}

/// Runs `backfill` (`audit = false`) or `audit`; returns the exit code.
pub fn run(args: &BackfillArgs, audit: bool, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match execute(args, audit, err) {
        Ok(o) => {
            let _ = out.write_all(o.table.as_bytes());
            if let Some(e) = &o.incomplete {
                let _ = writeln!(
                    err,
                    "error: the walk did not reach the end of the list: {e}"
                );
            }
            o.code
        }
        Err(code) => code,
    }
}

/// What one on-demand walk found: the walk, its table as `notifications backfill|audit`
/// prints it, and the exit code. The demo ends with the same audit.
#[derive(Debug)]
pub struct Outcome {
    /// The counts by notify type.
    pub walk: Walk,
    /// The table and its closing line.
    pub table: String,
    /// Why the walk did not reach the end of the list (exit code 1).
    pub incomplete: Option<String>,
    /// The exit code (see the module doc).
    pub code: i32,
}

/// One walk as `run` does it; a usage or setup error is written to `err` and is `Err(code)`.
/// Call it outside a tokio runtime (it runs its own).
pub fn execute(args: &BackfillArgs, audit: bool, err: &mut dyn Write) -> Result<Outcome, i32> {
    let config = match Config::load(&args.config.config) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let Some(m) = config.merchants.iter().find(|m| m.name == args.merchant) else {
        let names: Vec<&str> = config.merchants.iter().map(|m| m.name.as_str()).collect();
        let _ = writeln!(
            err,
            "error: no merchant {:?} in the config; known: {}",
            args.merchant,
            names.join(", ")
        );
        return Err(EXIT_USAGE);
    };
    let Some(store_location) = &config.store else {
        let _ = writeln!(err, "error: the config has no [store] section, so there is no notification journal to compare with");
        return Err(EXIT_USAGE);
    };
    let via = args
        .via
        .or(m.listen)
        .or_else(|| config.outbound.as_ref().and_then(|o| o.listen));
    let Some(via) = via else {
        let _ = writeln!(err, "error: no plain outbound listener to call through; give --via ADDR (the running sidecar's [outbound] listen)");
        return Err(EXIT_USAGE);
    };
    let store = match StateStore::open(store_location, config.store_options.timeout) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return Err(EXIT_INVALID);
        }
    };
    if let Some(p) = &args.deliver_path {
        if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
            let _ = writeln!(err, "error: --deliver-path {p:?} is not a path; write the app's notify path, e.g. /alipay/notify");
            return Err(EXIT_USAGE);
        }
    }
    let deliver_path = args.deliver_path.clone().or_else(|| {
        config
            .backfill
            .as_ref()
            .and_then(|b| b.deliver_path.clone())
            .or_else(|| {
                config
                    .reconcile
                    .as_ref()
                    .and_then(|r| r.deliver_path.clone())
            })
    });
    let merchant = Merchant {
        name: m.name.clone(),
        client_id: m.client_id.clone(),
    };
    let mode = if audit || args.dry_run {
        Mode::Look
    } else {
        Mode::Recover
    };
    let now = now_millis();
    let from = now - i64::try_from(args.since.as_millis()).unwrap_or(i64::MAX);
    let api: Arc<dyn PayApi> = Arc::new(ListenerApi { addr: via });
    // under the payments' locks like the running sidecar's walk (across processes with
    // PostgreSQL; with SQLite only this process's)
    let walker =
        Walker::new(store.clone(), api, deliver_path).with_locks(crate::paylock::for_store(&store));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start a runtime: {e}");
            return Err(EXIT_INVALID);
        }
    };
    let walk = runtime.block_on(walker.walk(&merchant, from, now, mode));
    let table = report(&walk, audit, mode);
    let (incomplete, code) = if !walk.complete {
        (
            Some(walk.error.clone().unwrap_or_else(|| "-".into())),
            EXIT_INVALID,
        )
    } else if walk.missing() > 0 {
        (None, EXIT_MISSING)
    } else {
        (None, EXIT_OK)
    };
    Ok(Outcome {
        walk,
        table,
        incomplete,
        code,
    })
}

/// The table: one line per notify type.
fn report(walk: &Walk, audit: bool, mode: Mode) -> String {
    let mut lines = vec![if audit {
        vec!["TYPE", "AT ALIPAY", "IN JOURNAL", "DELIVERED", "MISSING"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    } else {
        vec![
            "TYPE",
            "AT ALIPAY",
            "ALREADY JOURNALED",
            "MISSING",
            "RECOVERED",
            "FAILED",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }];
    for (t, c) in &walk.by_type {
        let name = if t.is_empty() {
            "-".to_string()
        } else {
            t.clone()
        };
        lines.push(if audit {
            vec![
                name,
                c.at_alipay.to_string(),
                c.journaled.to_string(),
                c.delivered.to_string(),
                c.missing.to_string(),
            ]
        } else {
            vec![
                name,
                c.at_alipay.to_string(),
                c.journaled.to_string(),
                c.missing.to_string(),
                c.recovered.to_string(),
                c.failed.to_string(),
            ]
        });
    }
    let mut text = crate::table::render(&lines);
    if walk.by_type.is_empty() {
        text.push_str("(no events at Alipay in this window)\n");
    }
    let missing = walk.missing();
    text.push_str(&match (audit, mode, missing) {
        (_, _, 0) => "nothing missing\n".to_string(),
        (true, _, n) => format!("{n} event(s) missing from the journal\n"),
        (false, Mode::Look, n) => format!("{n} event(s) missing (dry run: nothing recorded)\n"),
        (false, Mode::Recover, n) => format!(
            "{n} event(s) were missing; recorded ones are delivered by the running sidecar\n"
        ),
    });
    text
}

/// [`PayApi`] through a running sidecar's plain outbound listener (HTTP/1.1, one request per
/// connection): the sidecar signs the call and verifies the answer.
struct ListenerApi {
    addr: SocketAddr,
}

#[async_trait]
impl PayApi for ListenerApi {
    async fn call(&self, merchant: &str, client_id: &str, tail: &str, body: String) -> Called {
        let base = if client_id.starts_with("SANDBOX_") {
            "/ams/sandbox/api/"
        } else {
            "/ams/api/"
        };
        let request = format!(
            "POST {base}{tail} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json; charset=UTF-8\r\n{MERCHANT_HEADER}: {merchant}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.addr).await?;
            s.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            s.take(MAX_ANSWER).read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = match tokio::time::timeout(Duration::from_secs(60), exchange).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                return Called::Failed(format!("calling the sidecar at {}: {e}", self.addr))
            }
            Err(_) => {
                return Called::Failed(format!(
                    "the sidecar at {} did not answer within 60s",
                    self.addr
                ))
            }
        };
        parse_answer(&answer)
    }
}

/// Status, the verified marker and the body of an HTTP/1.1 answer read to its end.
fn parse_answer(answer: &[u8]) -> Called {
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Called::Failed("the sidecar's answer has no header end".into());
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let mut raw = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let mut verified = false;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    let mut error = String::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            continue;
        };
        let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
        match n.as_str() {
            "x-alipay-sidecar-verified" => verified = v == "true",
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "content-length" => length = v.parse().ok(),
            "x-alipay-sidecar-error" => error = v.to_string(),
            _ => {}
        }
    }
    let body: Vec<u8> = if chunked {
        let mut out = Vec::new();
        while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
            let size_text = String::from_utf8_lossy(&raw[..end]);
            let Ok(size) =
                usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            else {
                break;
            };
            if size == 0 || raw.len() < end + 2 + size {
                break;
            }
            out.extend_from_slice(&raw[end + 2..end + 2 + size]);
            raw = &raw[(end + 4 + size).min(raw.len())..];
        }
        out
    } else {
        raw[..length.unwrap_or(raw.len()).min(raw.len())].to_vec()
    };
    if status == 200 && verified {
        Called::Verified(Bytes::from(body))
    } else {
        Called::Failed(format!(
            "the sidecar answered HTTP {status}{}{}",
            if verified { "" } else { ", not verified" },
            if error.is_empty() {
                String::new()
            } else {
                format!(" ({error})")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_chunked_answers() {
        let a =
            b"HTTP/1.1 200 OK\r\nX-Alipay-Sidecar-Verified: true\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(a), Called::Verified(Bytes::from_static(b"{}")));
        let c = b"HTTP/1.1 200 OK\r\nx-alipay-sidecar-verified: true\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n3\r\na\":\r\n2\r\n1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_answer(c),
            Called::Verified(Bytes::from_static(b"{\"a\":1}"))
        );
        let f = b"HTTP/1.1 502 Bad Gateway\r\nX-Alipay-Sidecar-Error: SIDECAR_X\r\nContent-Length: 0\r\n\r\n";
        assert!(
            matches!(parse_answer(f), Called::Failed(m) if m.contains("502") && m.contains("SIDECAR_X"))
        );
        let u = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert!(matches!(parse_answer(u), Called::Failed(_)));
    }
}
