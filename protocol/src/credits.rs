//! Credits: what a contributor's browsers have computed, as the scheduler's ledger counts it.
//!
//! A contributor is an anonymous volunteer's stable identity: a random id the browser keeps and
//! sends when it registers a worker (`RegisterRequest::contributor`). Each slice accepted with
//! outcome `ok` credits the worker's contributor with the compute time the worker core measured
//! around the sandbox call (`ResultItem::compute_ms`), capped by the lease's age. One credit is one
//! second of sandbox compute ([`COMPUTE_MS_PER_CREDIT`]). `GET /v1/workers/{contributor}` answers
//! with the totals ([`ContributorTotals`]).

use serde::{Deserialize, Serialize};

/// Fewest characters in a contributor id: short ids would be guessable.
pub const MIN_CONTRIBUTOR_ID_CHARS: usize = 16;
/// Most characters in a contributor id.
pub const MAX_CONTRIBUTOR_ID_CHARS: usize = 64;

/// Milliseconds of sandbox compute that make one credit (one second).
pub const COMPUTE_MS_PER_CREDIT: u64 = 1_000;

/// Whether `id` has the shape of a contributor id: [`MIN_CONTRIBUTOR_ID_CHARS`] to
/// [`MAX_CONTRIBUTOR_ID_CHARS`] of `A-Z a-z 0-9 _ -`, so it is safe in a URL path and a log line.
/// Shared so the worker core can check the id it keeps before sending it.
pub fn is_contributor_id(id: &str) -> bool {
    (MIN_CONTRIBUTOR_ID_CHARS..=MAX_CONTRIBUTOR_ID_CHARS).contains(&id.len())
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// `GET /v1/workers/{contributor}`: what the ledger credits a contributor with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContributorTotals {
    pub contributor: String,
    /// Slices accepted with outcome `ok` from this contributor's workers.
    pub slices: u64,
    /// Their sandbox compute time in milliseconds, as credited (each capped by its lease's age).
    pub compute_ms: u64,
    /// `compute_ms / 1000`: one credit per second of sandbox compute.
    pub credits: f64,
    /// When the scheduler first saw this contributor (ms since the Unix epoch).
    pub since_ms: u64,
}

impl ContributorTotals {
    /// Totals with `credits` derived from `compute_ms`, so the two never disagree.
    pub fn new(contributor: String, slices: u64, compute_ms: u64, since_ms: u64) -> Self {
        let credits = compute_ms as f64 / COMPUTE_MS_PER_CREDIT as f64;
        ContributorTotals { contributor, slices, compute_ms, credits, since_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributor_ids_are_16_to_64_url_safe_characters() {
        assert!(is_contributor_id("abcdefghijklmnop"));
        assert!(is_contributor_id(&"A-_9".repeat(16)));
        assert!(!is_contributor_id("abcdefghijklmno"), "15 characters are too few");
        assert!(!is_contributor_id(&"a".repeat(65)));
        assert!(!is_contributor_id("abcdefghijklmnop/"));
        assert!(!is_contributor_id("abcdefghijklmnop "));
        assert!(!is_contributor_id("abcdéfghijklmnopq"), "ASCII only");
    }

    #[test]
    fn totals_spell_credits_as_seconds_of_compute() {
        let totals = ContributorTotals::new("c".repeat(16), 3, 2_500, 7);
        assert_eq!(
            serde_json::to_value(&totals).unwrap(),
            serde_json::json!({"contributor": "c".repeat(16), "slices": 3, "compute_ms": 2500, "credits": 2.5,
                               "since_ms": 7})
        );
    }
}
