//! The PostgreSQL half of the per-payment lock (issue 22, `src/lock.rs`) on a real server,
//! whose URL is in `SIDECAR_TEST_PG_URL` (`scripts/test-postgres.sh start` makes one): two
//! pools (two replicas) exclude each other, a released lock is free again, a lease dropped
//! without release frees the lock by closing its session. SQLite has no such half.

use std::time::Duration;

use sidecar_store::{payment_lock_key, Store, StoreConfig};
use sqlx::Connection;

const PG_ENV: &str = "SIDECAR_TEST_PG_URL";

/// A fresh database on the test server, or `None` (said on stderr) outside CI.
async fn database(test: &str) -> Option<String> {
    let admin = match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{PG_ENV} is not set under CI=true: the PostgreSQL tests must not skip in CI")
        }
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {PG_ENV} is not set (export {PG_ENV}=\"$(scripts/test-postgres.sh start)\")"
            );
            return None;
        }
    };
    let name = format!("t_{test}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let start = admin.find("://").unwrap() + 3;
    let (head, tail) = admin.split_at(start);
    let end = tail.find(['/', '?']).unwrap_or(tail.len());
    let query = tail[end..]
        .find('?')
        .map(|i| &tail[end + i..])
        .unwrap_or("");
    Some(format!("{head}{}/{name}{query}", &tail[..end]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_advisory_lock_holds_across_pools_and_dies_with_its_session() {
    let Some(url) = database("payment_lock").await else {
        return;
    };
    let config = StoreConfig::postgres(url);
    // two replicas: two stores, two lock pools, one database
    let a = Store::open(&config).await.unwrap();
    let b = Store::open(&config).await.unwrap();
    let (pa, pb) = (
        a.payment_lock_pool(Duration::from_secs(2)).unwrap(),
        b.payment_lock_pool(Duration::from_secs(2)).unwrap(),
    );
    let key = payment_lock_key("T_1", "p-1");
    let held = pa.try_lock(key).await.unwrap().expect("A takes it");
    assert!(pb.try_lock(key).await.unwrap().is_none(), "B cannot");
    let other = pb
        .try_lock(payment_lock_key("T_1", "p-2"))
        .await
        .unwrap()
        .expect("another payment is free");
    other.release().await.unwrap();
    held.release().await.unwrap();
    let again = pb
        .try_lock(key)
        .await
        .unwrap()
        .expect("released: B takes it");
    // dropped without release (a task cancelled mid-cancel): its session ends, the lock frees
    drop(again);
    let mut freed = None;
    for _ in 0..200 {
        if let Some(l) = pa.try_lock(key).await.unwrap() {
            freed = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    freed
        .expect("the dropped lease's session closed and freed the lock")
        .release()
        .await
        .unwrap();
    // SQLite: no PostgreSQL half
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&StoreConfig::sqlite(dir.path().join("s.db")))
        .await
        .unwrap();
    assert!(sqlite.payment_lock_pool(Duration::from_secs(2)).is_none());
}
