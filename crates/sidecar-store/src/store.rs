//! Opening the store: backends, connection options, migrations.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqlSafeStr};

use crate::error::{redact_url, StoreError};

/// Where the state lives (`[store] path` or `[store] url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite file, created when missing (its folder must exist).
    Sqlite { path: PathBuf },
    /// PostgreSQL, shared by several sidecar replicas: `postgres://user:pw@host:5432/db`.
    Postgres { url: String },
}

impl StoreConfig {
    /// `[store] path = ...`
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        StoreConfig::Sqlite { path: path.into() }
    }

    /// `[store] url = ...`
    pub fn postgres(url: impl Into<String>) -> Self {
        StoreConfig::Postgres { url: url.into() }
    }

    /// The location for log lines and messages, without a password.
    pub fn display(&self) -> String {
        match self {
            StoreConfig::Sqlite { path } => format!("sqlite:{}", path.display()),
            StoreConfig::Postgres { url } => redact_url(url),
        }
    }
}

/// Which backend an open [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend. The SQL of both is
/// the same text (`$n` placeholders work in SQLite too); the body is compiled once per backend.
macro_rules! dispatch {
    ($backend:expr, |$pool:ident| $body:expr) => {
        match &$backend {
            $crate::store::Backend::Sqlite($pool) => $body,
            $crate::store::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch;

/// The default of [`Store::open_with_timeout`]'s timeout (`[store] timeout`): how long a
/// statement waits for a pooled connection before the store counts as unavailable (the
/// receiver then lets the notification flow without the store, or answers 503), and how long
/// opening waits for PostgreSQL to answer (a filtered port never refuses). Short: while
/// PostgreSQL is down every notification would wait this long. SQLite waits at least its
/// busy timeout (5 s) for a connection: a local file is busy, not down.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an SQLite writer waits for another writer (other task, process or the CLI).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The state store: notification journal, delivery queue and pay records.
///
/// Cheap to clone (a connection pool); all methods take `&self` and are safe to call from
/// many tasks and from several processes on the same database.
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish()
    }
}

/// The migrations, embedded in the binary (no files to ship). Never edit an applied one: the
/// migrator stores a checksum and refuses a changed migration; add a new numbered file.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            include_str!("../migrations/0001_init.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "pay answers".into(),
            MigrationType::Simple,
            include_str!("../migrations/0002_pay_answers.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "backfill".into(),
            MigrationType::Simple,
            include_str!("../migrations/0003_backfill.sql").into_sql_str(),
            false,
        ),
    ])
}

impl Store {
    /// Opens (creating an SQLite file when missing) and migrates the store. Safe to call from
    /// several processes at once on one database (PostgreSQL migrations hold an advisory lock).
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open_with_timeout(config, DEFAULT_TIMEOUT).await
    }

    /// [`Store::open`] with the store timeout (`[store] timeout`, see [`DEFAULT_TIMEOUT`]).
    pub async fn open_with_timeout(
        config: &StoreConfig,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        match config {
            StoreConfig::Sqlite { path } => open_sqlite(path, timeout).await,
            StoreConfig::Postgres { url } => open_postgres(url, timeout).await,
        }
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        match &self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// One round trip to the database (`SELECT 1`): whether it answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.backend, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop)
            .map_err(|e| StoreError::query("ping", e)))
    }

    /// Closes every connection, waiting for running statements (graceful shutdown).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(p) => p.close().await,
            Backend::Postgres(p) => p.close().await,
        }
    }
}

/// The checks of [`Store::open`] that write nothing, in the same order and with the same
/// errors: `check-config` runs these, `run` runs them as the first part of opening, so the two
/// cannot disagree about a store (issue 20, item 6: a missing SQLite folder passed
/// `check-config` and failed `run`).
///
/// SQLite: the folder exists, the path is not a folder, and an existing file opens for
/// reading and writing (nothing is created: a check run as another user, root say, must not
/// leave a file the sidecar's own user then cannot write). PostgreSQL: the URL parses and one
/// connection is made and closed (no migration); an unreachable server is
/// [`StoreError::PostgresUnreachable`], which `run` starts without.
pub async fn check_store(config: &StoreConfig, timeout: Duration) -> Result<(), StoreError> {
    match config {
        StoreConfig::Sqlite { path } => {
            check_sqlite(path)?;
            if path.exists() {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| StoreError::SqliteUnwritable {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })?;
            }
            Ok(())
        }
        StoreConfig::Postgres { url } => {
            let shown = redact_url(url);
            let options = postgres_options(url, &shown)?;
            let probe = probe_postgres(&options, &shown, timeout).await?;
            let _ = probe.close().await;
            Ok(())
        }
    }
}

/// The SQLite path checks shared by [`check_store`] and [`open_sqlite`].
fn check_sqlite(path: &Path) -> Result<(), StoreError> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(StoreError::SqliteFolder {
            path: path.to_path_buf(),
            folder,
        });
    }
    if path.is_dir() {
        return Err(StoreError::SqliteUnwritable {
            path: path.to_path_buf(),
            detail: "it is a folder".into(),
        });
    }
    Ok(())
}

async fn open_sqlite(path: &Path, timeout: Duration) -> Result<Store, StoreError> {
    check_sqlite(path)?;
    private_files(path)?;
    let unwritable = |e: sqlx::Error| sqlite_open_error(path, e);
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        // WAL: readers (the CLI's `list`) never block the writer; FULL: a commit is on disk
        // before it returns, so "acknowledged after the store" means durable.
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        // a local file is never "down": a connection may be busy for the busy timeout while
        // another writer commits, so waiting for one is allowed at least that long
        .acquire_timeout(timeout.max(SQLITE_BUSY_TIMEOUT))
        .connect_with(options)
        .await
        .map_err(unwritable)?;
    migrator()
        .run(&pool)
        .await
        .map_err(|e| migrate_error(e, |e| sqlite_open_error(path, e)))?;
    // Migrations write nothing when the schema is current, and SQLite opens a read-only file
    // read-only without complaint (even `BEGIN IMMEDIATE` succeeds in WAL mode): write once,
    // rolled back, so an unwritable file is an error now rather than at the first notification.
    let mut probe = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(unwritable)?;
    sqlx::query("CREATE TABLE _alipay_sidecar_write_probe (x INTEGER)")
        .execute(&mut *probe)
        .await
        .map_err(unwritable)?;
    probe.rollback().await.map_err(unwritable)?;
    Ok(Store {
        backend: Backend::Sqlite(pool),
    })
}

/// The SQLite database and its `-wal` and `-shm` files hold notification bodies (payment
/// data): owner-only (0600), issue 18 L2. A missing database file is created 0600 before
/// SQLite opens it; SQLite creates `-wal` and `-shm` with the database file's permissions.
/// Existing files readable by group or others are tightened to 0600 (an operator who wants a
/// backup group to read them should copy a snapshot, `sqlite3 .backup`, rather than widen
/// the live files): silently widening back would be the only other choice, and a warning
/// without the fix leaves the data exposed.
#[cfg(unix)]
fn private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |p: &Path, e: std::io::Error| StoreError::SqliteUnwritable {
        path: p.to_path_buf(),
        detail: format!("making it private (0600): {e}"),
    };
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| failed(path, e))?;
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for p in [path.to_path_buf(), PathBuf::from(wal), PathBuf::from(shm)] {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(|e| failed(&p, e))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_files(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn sqlite_open_error(path: &Path, e: sqlx::Error) -> StoreError {
    let path = path.to_path_buf();
    match &e {
        sqlx::Error::Database(db) => {
            let primary = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            match primary {
                // SQLITE_CORRUPT, SQLITE_NOTADB
                Some(11) | Some(26) => StoreError::SqliteNotADatabase {
                    path,
                    detail: db.message().to_owned(),
                },
                _ => StoreError::SqliteUnwritable {
                    path,
                    detail: db.message().to_owned(),
                },
            }
        }
        _ => StoreError::SqliteUnwritable {
            path,
            detail: e.to_string(),
        },
    }
}

async fn open_postgres(url: &str, timeout: Duration) -> Result<Store, StoreError> {
    let shown = redact_url(url);
    let options = postgres_options(url, &shown)?;
    // One direct connection first: the pool retries a refused connection until its acquire
    // timeout and then reports only the timeout; this reports the cause, at once.
    let probe = probe_postgres(&options, &shown, timeout).await?;
    let _ = probe.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|e| postgres_open_error(&shown, e, timeout))?;
    migrator()
        .run(&pool)
        .await
        .map_err(|e| migrate_error(e, |e| postgres_open_error(&shown, e, timeout)))?;
    Ok(Store {
        backend: Backend::Postgres(pool),
    })
}

fn postgres_options(url: &str, shown: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl {
        url: shown.to_owned(),
        detail: e.to_string(),
    })
}

/// One direct connection, within `timeout`, its failure classified as [`Store::open`] does.
async fn probe_postgres(
    options: &PgConnectOptions,
    shown: &str,
    timeout: Duration,
) -> Result<PgConnection, StoreError> {
    tokio::time::timeout(timeout, PgConnection::connect_with(options))
        .await
        .map_err(|_| StoreError::PostgresUnreachable {
            url: shown.to_owned(),
            detail: format!("no answer within {timeout:?}"),
        })?
        .map_err(|e| postgres_open_error(shown, e, timeout))
}

fn postgres_open_error(url: &str, e: sqlx::Error, timeout: Duration) -> StoreError {
    let url = url.to_owned();
    match &e {
        sqlx::Error::Configuration(_) => StoreError::InvalidUrl {
            url,
            detail: e.to_string(),
        },
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 28xxx invalid authorization, 3D000 no such database, 42501 no privilege.
            if code.starts_with("28") || code == "3D000" || code == "42501" {
                StoreError::PostgresLogin {
                    url,
                    detail: db.message().to_owned(),
                }
            } else if is_connection_class(&code) {
                StoreError::PostgresUnreachable {
                    url,
                    detail: db.message().to_owned(),
                }
            } else {
                StoreError::Query {
                    op: "open",
                    source: e,
                }
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::PostgresUnreachable {
            url,
            detail: format!("no connection within {timeout:?}"),
        },
        _ => StoreError::PostgresUnreachable {
            url,
            detail: e.to_string(),
        },
    }
}

fn is_connection_class(code: &str) -> bool {
    ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
}

fn migrate_error(e: MigrateError, on_sql: impl Fn(sqlx::Error) -> StoreError) -> StoreError {
    match e {
        MigrateError::Execute(e) => on_sql(e),
        MigrateError::ExecuteMigration(e, version) => match on_sql(e) {
            StoreError::Query { source, .. } => StoreError::Schema {
                detail: format!("migration {version} failed: {source}"),
            },
            other => other,
        },
        MigrateError::VersionMissing(v) => StoreError::Schema {
            detail: format!(
                "the database has schema migration {v}, which this alipay-sidecar does not know: \
                 it was used by a newer version; run that version (or newer) on it"
            ),
        },
        MigrateError::VersionMismatch(v) => StoreError::Schema {
            detail: format!(
                "schema migration {v} applied to the database differs from this version's; the \
                 database was migrated by a modified build"
            ),
        },
        MigrateError::Dirty(v) => StoreError::Schema {
            detail: format!(
                "schema migration {v} was interrupted earlier and left the database partially \
                 migrated; restore a backup or repair it by hand"
            ),
        },
        other => StoreError::Schema {
            detail: other.to_string(),
        },
    }
}

/// The statements of one lease claim ([`Store::claim`]): the PostgreSQL form (row locks,
/// `SKIP LOCKED`) and the SQLite form (run inside `BEGIN IMMEDIATE`); both bind `$1` owner,
/// `$2` lease end, `$3` now, `$4` limit.
pub(crate) struct ClaimSql {
    pub(crate) op: &'static str,
    pub(crate) postgres: &'static str,
    pub(crate) sqlite: &'static str,
}

impl Store {
    /// Claims due rows for `owner` until `now + lease`, at most `limit`, in one atomic
    /// statement (see the crate doc, "the lease model"), each row mapped by `map`.
    pub(crate) async fn claim<T>(
        &self,
        sql: &ClaimSql,
        now: i64,
        owner: &str,
        lease: Duration,
        limit: i64,
        map: fn(&dyn Cols) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let until = now.saturating_add(millis(lease));
        let limit = limit.max(0);
        let op = sql.op;
        match &self.backend {
            Backend::Postgres(pool) => {
                let rows = sqlx::query(sql.postgres)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| StoreError::query(op, e))?;
                rows.iter().map(|r| map(r)).collect()
            }
            Backend::Sqlite(pool) => {
                let mut tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(|e| StoreError::query(op, e))?;
                let rows = sqlx::query(sql.sqlite)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| StoreError::query(op, e))?;
                tx.commit().await.map_err(|e| StoreError::query(op, e))?;
                rows.iter().map(|r| map(r)).collect()
            }
        }
    }
}

/// Column access shared by both backends' rows, with errors mapped to [`StoreError`].
pub(crate) trait Cols {
    fn text(&self, c: &str) -> Result<String, StoreError>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, c: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, c: &str) -> Result<Vec<u8>, StoreError>;
}

macro_rules! impl_cols {
    ($row:ty) => {
        impl Cols for $row {
            fn text(&self, c: &str) -> Result<String, StoreError> {
                self.try_get(c).map_err(|e| corrupt(c, e))
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError> {
                self.try_get(c).map_err(|e| corrupt(c, e))
            }
            fn int(&self, c: &str) -> Result<i64, StoreError> {
                self.try_get(c).map_err(|e| corrupt(c, e))
            }
            fn opt_int(&self, c: &str) -> Result<Option<i64>, StoreError> {
                self.try_get(c).map_err(|e| corrupt(c, e))
            }
            fn bytes(&self, c: &str) -> Result<Vec<u8>, StoreError> {
                self.try_get(c).map_err(|e| corrupt(c, e))
            }
        }
    };
}
impl_cols!(SqliteRow);
impl_cols!(PgRow);

fn corrupt(column: &str, e: sqlx::Error) -> StoreError {
    StoreError::Corrupt {
        what: format!("column {column}"),
        detail: e.to_string(),
    }
}

/// Milliseconds of a lease, saturating (a lease of years is a caller bug, not an overflow).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Bounds text that comes from outside (an app's error answer) before it is stored.
pub(crate) fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
