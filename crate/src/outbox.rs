//! Finished results waiting to be delivered, sent in batches that fit the scheduler's limits.
//!
//! A batch whose answer never came is put back in front and sent again: acceptance is
//! idempotent per lease, so a resend is safe. Results are trimmed to the scheduler's limits
//! before they are queued (an oversized value becomes that slice's error; console output is
//! capped), so one slice can never make a whole batch unsendable.

use std::collections::VecDeque;

use tessera_protocol::json::ToJson;
use tessera_protocol::{ConsoleLine, ResultItem, SliceOutcome};

/// Console output kept per slice; the rest is counted in one closing line.
pub const MAX_CONSOLE_LINES: usize = 1_000;
pub const MAX_CONSOLE_BYTES: usize = 256 * 1024;

/// Results waiting to go, and the batch on its way.
#[derive(Debug)]
pub struct Outbox {
    waiting: VecDeque<(ResultItem, usize)>,
    sending: Vec<(ResultItem, usize)>,
    oldest_at: Option<u64>,
    max_items: usize,
    max_bytes: usize,
}

impl Outbox {
    /// Batches of at most `max_items` results and about `max_bytes` of JSON (a single larger
    /// result still goes alone).
    pub fn new(max_items: usize, max_bytes: usize) -> Outbox {
        Outbox {
            waiting: VecDeque::new(),
            sending: Vec::new(),
            oldest_at: None,
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Adapts the batch bounds to what the scheduler said it accepts.
    pub fn set_limits(&mut self, max_items: usize, max_bytes: usize) {
        self.max_items = max_items.max(1);
        self.max_bytes = max_bytes.max(1);
    }

    /// Queues a finished result.
    pub fn push(&mut self, item: ResultItem, now: u64) {
        let bytes = json_len(&item);
        if self.waiting.is_empty() {
            self.oldest_at = Some(now);
        }
        self.waiting.push_back((item, bytes));
    }

    /// Results waiting (not counting the batch on its way).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Results not yet acknowledged: waiting plus on their way.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.sending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the oldest waiting result was queued.
    pub fn oldest_at(&self) -> Option<u64> {
        self.oldest_at.filter(|_| !self.waiting.is_empty())
    }

    /// Whether a batch is on its way.
    pub fn sending(&self) -> bool {
        !self.sending.is_empty()
    }

    /// Takes the next batch (in order, within the bounds) and remembers it until it is answered.
    pub fn take_batch(&mut self) -> Vec<ResultItem> {
        let mut bytes = 0;
        while let Some((_, size)) = self.waiting.front() {
            let full =
                self.sending.len() >= self.max_items || (!self.sending.is_empty() && bytes + size > self.max_bytes);
            if full {
                break;
            }
            bytes += size;
            if let Some(entry) = self.waiting.pop_front() {
                self.sending.push(entry);
            }
        }
        if self.waiting.is_empty() {
            self.oldest_at = None;
        }
        self.sending.iter().map(|(item, _)| item.clone()).collect()
    }

    /// The batch on its way was answered.
    pub fn delivered(&mut self) {
        self.sending.clear();
    }

    /// The batch on its way got no answer: it goes first next time.
    pub fn undelivered(&mut self, now: u64) {
        if self.sending.is_empty() {
            return;
        }
        for entry in self.sending.drain(..).rev() {
            self.waiting.push_front(entry);
        }
        self.oldest_at = Some(self.oldest_at.map_or(now, |at| at.min(now)));
    }

    /// The scheduler found the batch too large: send half as many from now on.
    pub fn shrink(&mut self) {
        self.max_items = (self.max_items / 2).max(1);
        self.max_bytes = (self.max_bytes / 2).max(1);
    }

    /// Every unacknowledged result, the batch on its way first (for a last delivery on stop).
    pub fn drain(&mut self) -> Vec<ResultItem> {
        self.oldest_at = None;
        self.sending.drain(..).chain(self.waiting.drain(..)).map(|(item, _)| item).collect()
    }
}

/// Bytes of `value`'s JSON encoding, as the worker sends it.
pub fn json_len<T: ToJson + ?Sized>(value: &T) -> usize {
    tessera_protocol::json::write(value).len()
}

/// The outcome as the scheduler will store it: a value whose JSON is over `max_bytes` becomes the
/// slice's error, so the deployer learns why instead of the batch being refused.
pub fn fit_outcome(outcome: SliceOutcome, max_bytes: u64) -> SliceOutcome {
    let size = match &outcome {
        SliceOutcome::Ok { value } => json_len(value),
        SliceOutcome::Error { message, stack } => message.len() + stack.as_ref().map_or(0, String::len),
        _ => 0,
    };
    if size as u64 <= max_bytes {
        return outcome;
    }
    let what = if matches!(outcome, SliceOutcome::Ok { .. }) { "result" } else { "error report" };
    SliceOutcome::Error {
        message: format!("the slice's {what} is {size} bytes, over the scheduler's limit of {max_bytes} bytes"),
        stack: None,
    }
}

/// Keeps at most [`MAX_CONSOLE_LINES`] lines and [`MAX_CONSOLE_BYTES`] of text, then one line
/// saying how many were dropped.
pub fn cap_console(lines: Vec<ConsoleLine>) -> Vec<ConsoleLine> {
    let total = lines.len();
    let mut bytes = 0;
    let mut kept = Vec::with_capacity(total.min(MAX_CONSOLE_LINES + 1));
    let mut last_slice = None;
    for line in lines {
        if kept.len() >= MAX_CONSOLE_LINES || bytes + line.text.len() > MAX_CONSOLE_BYTES {
            break;
        }
        bytes += line.text.len();
        last_slice = line.slice;
        kept.push(line);
    }
    let dropped = total - kept.len();
    if dropped > 0 {
        kept.push(ConsoleLine {
            slice: last_slice,
            stream: "stderr".into(),
            text: format!("[tessera] {dropped} more console lines dropped (limit {MAX_CONSOLE_LINES} lines, {MAX_CONSOLE_BYTES} bytes per slice)"),
            seq: None,
        });
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(n: u64) -> ResultItem {
        ResultItem {
            lease_id: format!("l{n}"),
            token: "t".into(),
            outcome: SliceOutcome::Ok { value: json!(n) },
            console: vec![],
            compute_ms: None,
        }
    }

    fn ids(items: &[ResultItem]) -> Vec<String> {
        items.iter().map(|item| item.lease_id.clone()).collect()
    }

    #[test]
    fn batches_respect_the_item_bound_and_keep_order() {
        let mut outbox = Outbox::new(2, 1 << 20);
        for n in 0..5 {
            outbox.push(item(n), n);
        }
        assert_eq!(ids(&outbox.take_batch()), ["l0", "l1"]);
        assert_eq!(outbox.len(), 5, "a batch on its way is still unacknowledged");
        outbox.delivered();
        assert_eq!(ids(&outbox.take_batch()), ["l2", "l3"]);
    }

    #[test]
    fn an_unanswered_batch_goes_first_again() {
        let mut outbox = Outbox::new(2, 1 << 20);
        for n in 0..3 {
            outbox.push(item(n), 0);
        }
        outbox.take_batch();
        outbox.undelivered(10);
        assert_eq!(ids(&outbox.take_batch()), ["l0", "l1"]);
        outbox.undelivered(10);
        assert_eq!(ids(&outbox.drain()), ["l0", "l1", "l2"]);
        assert!(outbox.is_empty());
    }

    #[test]
    fn batches_respect_the_byte_bound_but_never_starve() {
        let big = ResultItem { outcome: SliceOutcome::Ok { value: json!("x".repeat(1_000)) }, ..item(9) };
        let mut outbox = Outbox::new(100, 500);
        outbox.push(big, 0);
        outbox.push(item(1), 0);
        assert_eq!(ids(&outbox.take_batch()), ["l9"], "an item over the byte bound still goes, alone");
        outbox.delivered();
        assert_eq!(ids(&outbox.take_batch()), ["l1"]);
        outbox.shrink();
    }

    #[test]
    fn oversized_values_become_errors() {
        let small = SliceOutcome::Ok { value: json!("ok") };
        assert_eq!(fit_outcome(small.clone(), 100), small);
        let big = fit_outcome(SliceOutcome::Ok { value: json!("x".repeat(300)) }, 100);
        match big {
            SliceOutcome::Error { message, .. } => {
                assert!(message.contains("302 bytes") && message.contains("100"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn console_is_capped_with_a_closing_line() {
        let lines: Vec<ConsoleLine> = (0..MAX_CONSOLE_LINES + 5)
            .map(|n| ConsoleLine { slice: Some(3), stream: "stdout".into(), text: format!("{n}"), seq: None })
            .collect();
        let kept = cap_console(lines);
        assert_eq!(kept.len(), MAX_CONSOLE_LINES + 1);
        assert!(kept.last().unwrap().text.contains("5 more console lines dropped"));
        assert_eq!(cap_console(vec![]).len(), 0);
    }
}
