//! Byte spans of JSON values, so a recovered notification is delivered with the exact bytes
//! of `notificationData` in Alipay's signed answer (never re-serialised: serde_json would
//! reorder the keys). Only called on bytes `serde_json` already parsed, so the input is valid
//! JSON; the scanner still never panics and gives up on anything unexpected.

use std::ops::Range;

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `i` (a `"`).
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End (exclusive) of the value starting at `i` (after whitespace).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// The span of member `key` of the object spanning `obj`.
pub(super) fn member(b: &[u8], obj: Range<usize>, key: &str) -> Option<Range<usize>> {
    let mut i = ws(b, obj.start);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    while i < obj.end && b.get(i) == Some(&b'"') {
        let kend = string_end(b, i)?;
        let name: String = serde_json::from_slice(&b[i..kend]).ok()?;
        i = ws(b, kend);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let vstart = ws(b, i + 1);
        let vend = value_end(b, vstart)?;
        if name == key {
            return Some(vstart..vend);
        }
        i = ws(b, vend);
        if b.get(i) == Some(&b',') {
            i = ws(b, i + 1);
        }
    }
    None
}

/// The spans of the items of the array spanning `arr`.
pub(super) fn items(b: &[u8], arr: Range<usize>) -> Option<Vec<Range<usize>>> {
    let mut i = ws(b, arr.start);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = ws(b, i + 1);
    let mut out = Vec::new();
    while i < arr.end && b.get(i) != Some(&b']') {
        let end = value_end(b, i)?;
        out.push(i..end);
        i = ws(b, end);
        if b.get(i) == Some(&b',') {
            i = ws(b, i + 1);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_bytes() {
        let b = br#"{"result":{"a":"}"},"notifications":[ {"eventId":"e\"1","notificationData":{"z":1, "a":[1,{"b":"]"}]}} ,{"notificationData":"x"}],"hasMore":false}"#;
        let all = 0..b.len();
        let arr = member(b, all, "notifications").unwrap();
        let it = items(b, arr).unwrap();
        assert_eq!(it.len(), 2);
        let d = member(b, it[0].clone(), "notificationData").unwrap();
        assert_eq!(&b[d], br#"{"z":1, "a":[1,{"b":"]"}]}"#);
        let d = member(b, it[1].clone(), "notificationData").unwrap();
        assert_eq!(&b[d], br#""x""#);
        assert!(member(b, 0..b.len(), "nope").is_none());
        assert!(member(b"[1]", 0..3, "a").is_none());
    }
}
