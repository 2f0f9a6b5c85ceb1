//! Errors a user (or the sidecar's caller) can act on.

use std::path::PathBuf;

/// What went wrong with the store, worded for the person who configured `[store]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The SQLite file's folder is missing or not a folder.
    #[error(
        "store file {path}: the folder {folder} does not exist or is not a folder; create it \
         (or mount the volume) and make it writable by the sidecar's user"
    )]
    SqliteFolder { path: PathBuf, folder: PathBuf },
    /// The SQLite file cannot be created, opened or written.
    #[error(
        "store file {path} cannot be opened for writing ({detail}); the file and its folder must \
         be writable by the sidecar's user (SQLite also creates {path}-wal and {path}-shm beside it)"
    )]
    SqliteUnwritable { path: PathBuf, detail: String },
    /// The file exists but is not an SQLite database (or is damaged).
    #[error(
        "store file {path} is not a usable SQLite database ({detail}); point [store] path at a new \
         file or restore a backup"
    )]
    SqliteNotADatabase { path: PathBuf, detail: String },
    /// The `[store] url` cannot be parsed or uses an unsupported scheme.
    #[error(
        "invalid [store] url {url}: {detail} (expected postgres://user:password@host:5432/database)"
    )]
    InvalidUrl { url: String, detail: String },
    /// No connection to PostgreSQL (refused, DNS, timeout, TLS).
    #[error(
        "PostgreSQL at {url} is unreachable ({detail}); check the host and port in [store] url \
         and that the server is running and accepts connections from this host"
    )]
    PostgresUnreachable { url: String, detail: String },
    /// PostgreSQL answered but refused the login or the database.
    #[error(
        "PostgreSQL at {url} refused the connection ({detail}); check the user, password and \
         database name in [store] url and the server's pg_hba.conf"
    )]
    PostgresLogin { url: String, detail: String },
    /// The database's schema cannot be brought to this version.
    #[error("store schema: {detail}")]
    Schema { detail: String },
    /// The store was reachable at open but is not now (no connection within the acquire
    /// timeout, connection lost, disk I/O error).
    #[error("store unavailable ({op}): {detail}")]
    Unavailable { op: &'static str, detail: String },
    /// A statement failed for another reason.
    #[error("store query failed ({op}): {source}")]
    Query {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A row holds something this version cannot read (written by another version?).
    #[error("store row is unreadable ({what}): {detail}")]
    Corrupt { what: String, detail: String },
}

impl StoreError {
    /// True when the failure is the store being out of reach (as opposed to a bug or bad
    /// data): the caller lets notifications flow as without a store, or answers 503 in
    /// store-and-forward mode.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. }
                | StoreError::PostgresUnreachable { .. }
                | StoreError::SqliteUnwritable { .. }
        )
    }

    /// Maps an error of a statement on an open store.
    pub(crate) fn query(op: &'static str, e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable {
                op,
                detail: e.to_string(),
            },
            sqlx::Error::Database(ref db) if is_unavailable_code(db.code().as_deref()) => {
                StoreError::Unavailable {
                    op,
                    detail: e.to_string(),
                }
            }
            other => StoreError::Query { op, source: other },
        }
    }
}

/// SQLite primary codes (the low byte of the extended code) and PostgreSQL SQLSTATE classes
/// that mean "the store cannot be used right now" rather than "this statement is wrong".
fn is_unavailable_code(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    // PostgreSQL's SQLSTATE is always 5 characters; SQLite's extended result codes are
    // decimal numbers below 10000.
    if code.len() < 5 {
        let Ok(n) = code.parse::<i64>() else {
            return false;
        };
        // SQLite: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8, IOERR 10, FULL 13, CANTOPEN 14.
        return matches!(n & 0xff, 5..=8 | 10 | 13 | 14);
    }
    // PostgreSQL: 08 connection exception, 53 insufficient resources, 57 operator
    // intervention (admin shutdown, cannot connect now), 58 system error.
    ["08", "53", "57", "58"].iter().any(|c| code.starts_with(c))
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(
            redact_url("postgres://sidecar:s3cr@t@db:5432/alipay?sslmode=require"),
            "postgres://sidecar:***@db:5432/alipay?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://sidecar@db/alipay"),
            "postgres://sidecar@db/alipay"
        );
        assert_eq!(redact_url("postgres://db/a@b"), "postgres://db/a@b");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn unavailable_codes() {
        assert!(is_unavailable_code(Some("5")));
        assert!(is_unavailable_code(Some("1032"))); // SQLITE_READONLY_DBMOVED
        assert!(is_unavailable_code(Some("08006")));
        assert!(is_unavailable_code(Some("57P01")));
        assert!(!is_unavailable_code(Some("19"))); // SQLITE_CONSTRAINT
        assert!(!is_unavailable_code(Some("23505")));
        assert!(!is_unavailable_code(None));
    }
}
