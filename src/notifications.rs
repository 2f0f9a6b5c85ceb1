//! `alipay-sidecar notifications …`: the operator's view of the notification journal (issue
//! 13): list, show, replay one event, retry the dead ones; prune finished work (issue 18 L3,
//! the rule in `sidecar_store`'s `retention` module: delivered notifications and closed pay
//! records only).
//!
//! Each command takes `--config FILE` (or `ALIPAY_SIDECAR_CONFIG`) like `run` and opens the
//! store named by its `[store]`, so it works next to a running sidecar on the same store
//! (SQLite in WAL mode lets it read while the sidecar writes; PostgreSQL is shared anyway).
//! `replay` and `retry --dead` only queue: the delivery worker of a running sidecar (any
//! replica, with PostgreSQL) delivers within a second, or the next sidecar started on the
//! store does.
//!
//! Exit codes follow the project's rule: 0 done; 1 runtime failure (store unreachable, no such
//! event); 2 usage or configuration error (including a config without `[store]`).

use std::io::Write;
use std::path::Path;

use clap::{Subcommand, ValueEnum};
use sidecar_store::{ListFilter, NotificationRecord, NotificationStatus};

use crate::cli::exit::{EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::config::{Config, StoreOptions};
use crate::exchange::now_millis;
use crate::protocol::format_iso8601;
use crate::store::StateStore;
use crate::tools::ConfigArgs;

/// `notifications` subcommands.
#[derive(Subcommand, Debug)]
pub enum NotificationsCommand {
    /// List recorded events (newest first): event id, type, business id, status, merchant.
    List(ListArgs),
    /// Show one event: its key, status, attempts, the stored headers and body.
    Show(EventArgs),
    /// Deliver one event to the app again (whatever its status), with the same event id.
    Replay(EventArgs),
    /// Deliver every dead event again (store-and-forward gave up after max_delivery_age).
    Retry(RetryArgs),
    /// Delete delivered notifications and closed pay records older than --older-than
    /// (default: [store] retention). Pending and dead notifications and open pay records are
    /// never deleted. A running sidecar also prunes by itself.
    Prune(PruneArgs),
    /// Walk Alipay's notification event log (inquireNotificationList) once, through the running
    /// sidecar, and record what the journal lacks for delivery; prints missing and already
    /// journaled events by type. Exit 0: nothing missing; 3: something was missing; 1: failure.
    Backfill(crate::backfill::cli::BackfillArgs),
    /// Compare Alipay's notification event log with the journal, by type: at Alipay, in the
    /// journal, delivered to the app, missing. Exit 0 only when nothing is missing (3: missing).
    Audit(crate::backfill::cli::BackfillArgs),
}

/// `--status` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Recorded, not delivered yet.
    Pending,
    /// The app answered 2xx.
    Delivered,
    /// Store-and-forward gave up.
    Dead,
}

impl From<StatusArg> for NotificationStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => NotificationStatus::Pending,
            StatusArg::Delivered => NotificationStatus::Delivered,
            StatusArg::Dead => NotificationStatus::Dead,
        }
    }
}

/// Options of `notifications list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Only events with this status.
    #[arg(long)]
    status: Option<StatusArg>,
    /// Only events of this merchant (its name in the config).
    #[arg(long, value_name = "NAME")]
    merchant: Option<String>,
    /// At most this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `notifications show` and `replay`.
#[derive(clap::Args, Debug)]
pub struct EventArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The event id (`evt_…`, the `X-Alipay-Sidecar-Event-Id` the app received).
    id: String,
    /// JSON instead of text (`show` only).
    #[arg(long)]
    json: bool,
}

/// Options of `notifications retry`.
#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Every dead event (required: the only kind retried in bulk).
    #[arg(long, required = true)]
    dead: bool,
}

/// Options of `notifications prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Delete what finished longer ago than this (e.g. `30d`, `12h`; `0s`: everything
    /// finished). Default: `[store] retention` of the config (30d unless set).
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    older_than: Option<std::time::Duration>,
    /// Only count what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30d, 12h, 90m"))
}

/// Runs a `notifications` subcommand; returns the exit code.
pub fn run(command: &NotificationsCommand, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match command {
        NotificationsCommand::Backfill(a) => return crate::backfill::cli::run(a, false, out, err),
        NotificationsCommand::Audit(a) => return crate::backfill::cli::run(a, true, out, err),
        _ => {}
    }
    let config = match command {
        NotificationsCommand::List(a) => &a.config,
        NotificationsCommand::Show(a) | NotificationsCommand::Replay(a) => &a.config,
        NotificationsCommand::Retry(a) => &a.config,
        NotificationsCommand::Prune(a) => &a.config,
        NotificationsCommand::Backfill(a) | NotificationsCommand::Audit(a) => &a.config,
    };
    let (store, options) = match open(&config.config, err) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let result = match command {
        NotificationsCommand::List(a) => list(&store, a, out),
        NotificationsCommand::Show(a) => show(&store, a, out),
        NotificationsCommand::Replay(a) => replay(&store, &a.id, out),
        NotificationsCommand::Retry(_) => retry_dead(&store, out),
        NotificationsCommand::Prune(a) => prune(
            &store,
            a.older_than.unwrap_or(options.retention),
            a.dry_run,
            out,
        ),
        NotificationsCommand::Backfill(_) | NotificationsCommand::Audit(_) => Ok(()),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_INVALID
        }
    }
}

/// The store of the config at `path`: 2 for a config that cannot be used or has no
/// `[store]`, 1 for a store that cannot be opened.
fn open(
    path: &Path,
    err: &mut dyn Write,
) -> Result<(std::sync::Arc<StateStore>, StoreOptions), i32> {
    let config = Config::load(path).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        EXIT_USAGE
    })?;
    let Some(store) = &config.store else {
        let _ = writeln!(
            err,
            "error: {} has no [store] section, so there is no notification journal; add \
             [store] path = \"/var/lib/alipay-sidecar/state.db\" (or url = \"postgres://…\") \
             and run the sidecar with it",
            path.display()
        );
        return Err(EXIT_USAGE);
    };
    let options = config.store_options;
    StateStore::open(store, options.timeout)
        .map(|s| (s, options))
        .map_err(|e| {
            let _ = writeln!(err, "error: {e}");
            EXIT_INVALID
        })
}

/// `notifications prune`: what finished before now − `older_than` goes (or is counted).
fn prune(
    store: &StateStore,
    older_than: std::time::Duration,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let before = now_millis().saturating_sub(age).max(0);
    let n = store
        .block_on(|s| async move { s.prune(before, dry_run).await })
        .map_err(|e| e.to_string())?;
    let verb = if dry_run { "would prune" } else { "pruned" };
    writeln!(
        out,
        "{verb} {} delivered notification(s) and {} closed pay record(s) finished before {} \
         (older than {}); pending and dead notifications and open pay records are kept",
        n.notifications,
        n.pays,
        format_iso8601(before),
        humantime::format_duration(older_than)
    )
    .map_err(|e| e.to_string())
}

fn list(store: &StateStore, args: &ListArgs, out: &mut dyn Write) -> Result<(), String> {
    let status = args.status.map(NotificationStatus::from);
    let merchant = args.merchant.clone();
    let limit = args.limit.map(i64::from);
    let rows = store
        .block_on(|s| async move {
            s.list(&ListFilter {
                status,
                merchant: merchant.as_deref(),
                limit,
            })
            .await
        })
        .map_err(|e| e.to_string())?;
    let text = if args.json {
        let v: Vec<serde_json::Value> = rows.iter().map(summary_json).collect();
        format!("{}\n", serde_json::Value::from(v))
    } else {
        table(&rows)
    };
    out.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the list: {e}"))
}

/// The `list` table: one line per event, columns padded to their widest value.
fn table(rows: &[NotificationRecord]) -> String {
    let header = [
        "EVENT ID",
        "TYPE",
        "BUSINESS ID",
        "RESULT",
        "STATUS",
        "MERCHANT",
        "FIRST SEEN",
        "COPIES",
        "ATTEMPTS",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r.event_id.clone(),
            r.notify_type.clone(),
            r.business_id.clone(),
            result_text(r),
            r.status.to_string(),
            r.merchant.clone(),
            format_iso8601(r.first_seen),
            r.seen_count.to_string(),
            r.attempts.to_string(),
        ]);
    }
    let mut text = crate::table::render(&lines);
    if rows.is_empty() {
        text.push_str("(no events)\n");
    }
    text
}

fn result_text(r: &NotificationRecord) -> String {
    match (r.result_status.as_str(), r.result_code.as_str()) {
        ("", "") => "-".into(),
        (s, "") => s.into(),
        (s, c) => format!("{s}/{c}"),
    }
}

fn summary_json(r: &NotificationRecord) -> serde_json::Value {
    serde_json::json!({
        "event_id": r.event_id,
        "merchant": r.merchant,
        "client_id": r.client_id,
        "path": r.path,
        "notify_type": r.notify_type,
        "business_id_kind": r.business_id_kind.as_str(),
        "business_id": r.business_id,
        "result_status": r.result_status,
        "result_code": r.result_code,
        "body_sha256": r.body_sha256,
        "status": r.status.as_str(),
        "first_seen": format_iso8601(r.first_seen),
        "last_seen": format_iso8601(r.last_seen),
        "copies": r.seen_count,
        "attempts": r.attempts,
        "last_error": r.last_error,
        "next_attempt_at": r.next_attempt_at.map(format_iso8601),
        "delivered_at": r.delivered_at.map(format_iso8601),
    })
}

fn find(store: &StateStore, id: &str) -> Result<NotificationRecord, String> {
    let key = id.to_string();
    store
        .block_on(|s| async move { s.show(&key).await })
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("no event {id:?} in the store (see `alipay-sidecar notifications list`)")
        })
}

fn show(store: &StateStore, args: &EventArgs, out: &mut dyn Write) -> Result<(), String> {
    let r = find(store, &args.id)?;
    let body = String::from_utf8_lossy(&r.body);
    let text = if args.json {
        let mut v = summary_json(&r);
        v["headers"] = r
            .headers
            .iter()
            .map(|(n, v)| serde_json::json!([n, v]))
            .collect();
        v["body"] = body.as_ref().into();
        format!("{v}\n")
    } else {
        let mut t = String::new();
        let opt = |v: Option<i64>| v.map(format_iso8601).unwrap_or_else(|| "-".into());
        for (k, v) in [
            ("event id", r.event_id.clone()),
            ("status", r.status.to_string()),
            ("merchant", r.merchant.clone()),
            ("client id", r.client_id.clone()),
            ("path", r.path.clone()),
            ("type", r.notify_type.clone()),
            (
                "business id",
                format!("{} ({})", r.business_id, r.business_id_kind.as_str()),
            ),
            ("result", result_text(&r)),
            ("body sha256", r.body_sha256.clone()),
            ("first seen", format_iso8601(r.first_seen)),
            ("last seen", format_iso8601(r.last_seen)),
            ("copies", r.seen_count.to_string()),
            ("failed attempts", r.attempts.to_string()),
            (
                "last error",
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ),
            ("next attempt", opt(r.next_attempt_at)),
            ("delivered at", opt(r.delivered_at)),
        ] {
            t.push_str(&format!("{k:<16} {v}\n"));
        }
        t.push_str("headers:\n");
        for (n, v) in &r.headers {
            t.push_str(&format!("  {n}: {v}\n"));
        }
        t.push_str("body:\n");
        t.push_str(&body);
        t.push('\n');
        t
    };
    out.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the event: {e}"))
}

fn replay(store: &StateStore, id: &str, out: &mut dyn Write) -> Result<(), String> {
    let key = id.to_string();
    let now = now_millis();
    let found = store
        .block_on(|s| async move { s.replay(&key, now).await })
        .map_err(|e| e.to_string())?;
    if !found {
        return Err(format!(
            "no event {id:?} in the store (see `alipay-sidecar notifications list`)"
        ));
    }
    writeln!(
        out,
        "{id} queued for delivery; a running sidecar on this store delivers it (same event id)"
    )
    .map_err(|e| e.to_string())
}

fn retry_dead(store: &StateStore, out: &mut dyn Write) -> Result<(), String> {
    let now = now_millis();
    let n = store
        .block_on(|s| async move { s.retry_dead(now).await })
        .map_err(|e| e.to_string())?;
    writeln!(
        out,
        "{n} dead event(s) queued for delivery; a running sidecar on this store delivers them"
    )
    .map_err(|e| e.to_string())
}
