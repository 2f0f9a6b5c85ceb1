//! One `/metrics` scrape, parsed (the Prometheus text format).

use std::collections::BTreeMap;

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name (a histogram's `_bucket`, `_sum`, `_count` as written).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One `/metrics` scrape, parsed.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The text as scraped.
    pub text: String,
    /// Every sample line.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses every sample line; fails on a line that is none.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                parse_sample(l).unwrap_or_else(|| panic!("not a Prometheus sample line: {l:?}"))
            })
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over the matching samples (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// `name{label="value",…} value` (no crate fits: `prometheus-parse` does not decode escaped
/// quotes in label values and folds `_bucket` lines into histograms, which the tests read
/// one by one).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        loop {
            // label name up to '=', or the closing brace
            let mut key = String::new();
            let mut closed_at = None;
            for (i, c) in chars.by_ref() {
                match c {
                    '}' => {
                        closed_at = Some(i);
                        break;
                    }
                    '=' => break,
                    ',' if key.is_empty() => {}
                    c => key.push(c),
                }
            }
            if let Some(i) = closed_at {
                rest = &body[i + 1..];
                break;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[test]
fn prometheus_sample_parser_reads_labels_and_values() {
    let m = Metrics::parse(
        "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nz_bucket{le=\"+Inf\"} 7\nw{} 1e3\n",
    );
    assert_eq!(m.sum("x", &[("a", "1")]), 3.0);
    assert_eq!(m.sum("x", &[("b", "q\"uote")]), 3.0);
    assert_eq!(m.sum("x", &[("a", "2")]), 0.0);
    assert_eq!(m.sum("y", &[]), 2.5);
    assert_eq!(m.sum("z_bucket", &[("le", "+Inf")]), 7.0);
    assert_eq!(m.sum("w", &[]), 1000.0);
}
