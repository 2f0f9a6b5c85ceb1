//! The published vectors (the workspace's `tests/data/ams-public.json`) and their test-only keys,
//! and the pay body the tests send.

use std::path::PathBuf;

use serde_json::Value;

/// The vectors file copied from the shared spec (data, not code).
pub fn vectors_file() -> &'static Value {
    static FILE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/ams-public.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors file"))
            .expect("vectors json")
    })
}

/// All vectors.
pub fn vectors() -> Vec<Value> {
    vectors_file()["vectors"]
        .as_array()
        .expect("vectors array")
        .clone()
}

/// One key text from `keys.<who>.<form>`, e.g. `key("merchant", "private_pkcs8_pem")`.
pub fn key(who: &str, form: &str) -> String {
    vectors_file()["keys"][who][form]
        .as_str()
        .unwrap_or_else(|| panic!("no key {who}.{form}"))
        .to_string()
}

/// `inputs.<field>` as a string.
pub fn input<'a>(v: &'a Value, field: &str) -> &'a str {
    v["inputs"][field]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no inputs.{field}", v["id"]))
}

/// One vector by id.
pub fn vector(id: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no vector {id}"))
}

/// A pay request body (`extra` is spliced in before the closing brace, e.g.
/// `,"mockFault":"drop"`).
pub fn pay_body(id: &str, value: &str, extra: &str) -> String {
    format!(
        r#"{{"paymentRequestId":"{id}","paymentAmount":{{"currency":"HKD","value":"{value}"}},"order":{{"orderDescription":"珍珠奶茶 🧋"}}{extra}}}"#
    )
}
