//! Rounds into one JSON result (medians with ranges), merging it into `bench/results.json`, and
//! the table printed for people.

use serde_json::{Map, Value};

use crate::stats::median_range;

/// Numeric keys of a throughput round that are summarised across rounds.
pub const THROUGHPUT_KEYS: [&str; 14] = [
    "throughput_slices_per_s",
    "throughput_steady_slices_per_s",
    "elapsed_s",
    "deploy_ms",
    "lease_p50_ms",
    "lease_p99_ms",
    "lease_max_ms",
    "submit_p50_ms",
    "submit_p99_ms",
    "submit_max_ms",
    "scheduler_cpu_s",
    "generator_cpu_s",
    "scheduler_cpu_ms_per_slice",
    "db_bytes",
];

/// Numeric keys of a concurrency round that are summarised across rounds.
pub const CONCURRENCY_KEYS: [&str; 9] = [
    "deploy_to_lease_p50_ms",
    "deploy_to_lease_p99_ms",
    "deploy_to_lease_max_ms",
    "deploy_ms",
    "connect_s",
    "repolls",
    "rss_before_kb",
    "rss_waiting_kb",
    "memory_per_idle_connection_kb",
];

/// Summarises `rounds` into `into`: for each key in `keys` the median across rounds under the key
/// and `[min, max]` under `<key>_range`, each name prefixed with `prefix`. Rounds missing a key
/// are skipped for it.
pub fn summarize(rounds: &[Value], keys: &[&str], prefix: &str, into: &mut Map<String, Value>) {
    for key in keys {
        let values: Vec<f64> = rounds.iter().filter_map(|round| round.get(*key).and_then(Value::as_f64)).collect();
        if let Some((median, low, high)) = median_range(&values) {
            into.insert(format!("{prefix}{key}"), Value::from(median));
            into.insert(format!("{prefix}{key}_range"), Value::from(vec![low, high]));
        }
    }
}

/// Whether `key` is `true` in every round (and there is at least one round).
pub fn all_true(rounds: &[Value], key: &str) -> bool {
    !rounds.is_empty() && rounds.iter().all(|round| round.get(key).and_then(Value::as_bool) == Some(true))
}

/// `existing` (the text of a results file, if it exists) with `value` set under `key`, every other
/// key kept. A missing or empty file becomes a new object; a file that is not a JSON object is an
/// error, so nothing is overwritten by mistake.
pub fn merge_under_key(existing: Option<&str>, key: &str, value: Value) -> Result<Value, String> {
    let mut object = match existing.map(str::trim) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err("the results file is JSON but not an object".into()),
            Err(error) => return Err(format!("the results file is not JSON: {error}")),
        },
    };
    object.insert(key.to_string(), value);
    Ok(Value::Object(object))
}

/// `median (min–max)` of a summarised key, scaled and with `digits` decimals, or `—` when absent.
pub fn cell(summary: &Map<String, Value>, key: &str, scale: f64, digits: usize, unit: &str) -> String {
    let Some(median) = summary.get(key).and_then(Value::as_f64) else {
        return "—".into();
    };
    let range = summary.get(&format!("{key}_range")).and_then(Value::as_array).and_then(|range| {
        let low = range.first()?.as_f64()?;
        let high = range.get(1)?.as_f64()?;
        Some((low, high))
    });
    let text = format!("{}{unit}", thousands(median * scale, digits));
    match range {
        Some((low, high)) if (high - low).abs() > f64::EPSILON => {
            format!("{text} ({}–{})", thousands(low * scale, digits), thousands(high * scale, digits))
        }
        _ => text,
    }
}

/// `x` with `digits` decimals and thin commas between thousands: `12,345.6`.
pub fn thousands(x: f64, digits: usize) -> String {
    let text = format!("{:.*}", digits, x.abs());
    let (whole, fraction) = text.split_once('.').map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if x < 0.0 && text.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    match fraction {
        Some(fraction) => format!("{sign}{grouped}.{fraction}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_keeps_other_keys() {
        let existing = r#"{"rounds": 3, "cold_ratio": 1.1, "load": {"old": true}}"#;
        let merged = merge_under_key(Some(existing), "load", json!({"lease_p50_ms": 2.0})).unwrap();
        assert_eq!(merged, json!({"rounds": 3, "cold_ratio": 1.1, "load": {"lease_p50_ms": 2.0}}));
        assert_eq!(merge_under_key(None, "load", json!(1)).unwrap(), json!({"load": 1}));
        assert_eq!(merge_under_key(Some("  \n"), "load", json!(1)).unwrap(), json!({"load": 1}));
        assert!(merge_under_key(Some("[1]"), "load", json!(1)).is_err());
        assert!(merge_under_key(Some("{oops"), "load", json!(1)).is_err());
    }

    #[test]
    fn rounds_become_medians_and_ranges() {
        let rounds = vec![
            json!({"lease_p50_ms": 3.0, "ok": true}),
            json!({"lease_p50_ms": 1.0, "ok": true}),
            json!({"lease_p50_ms": 2.0, "ok": false}),
        ];
        let mut summary = Map::new();
        summarize(&rounds, &["lease_p50_ms", "absent"], "", &mut summary);
        assert_eq!(Value::Object(summary.clone()), json!({"lease_p50_ms": 2.0, "lease_p50_ms_range": [1.0, 3.0]}));
        assert!(!all_true(&rounds, "ok"));
        assert!(all_true(&rounds[..2], "ok"));
        assert!(!all_true(&[], "ok"));
        assert_eq!(cell(&summary, "lease_p50_ms", 1.0, 1, " ms"), "2.0 ms (1.0–3.0)");
        assert_eq!(cell(&summary, "absent", 1.0, 1, ""), "—");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.891, 1), "1,234,567.9");
        assert_eq!(thousands(999.0, 0), "999");
        assert_eq!(thousands(1000.0, 0), "1,000");
        assert_eq!(thousands(-12345.0, 0), "-12,345");
        assert_eq!(thousands(0.25, 2), "0.25");
    }
}
