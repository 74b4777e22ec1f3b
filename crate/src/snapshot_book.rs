//! Which Pyodide sandbox restores the page's runtime snapshot, which one makes it, and what a
//! refused or missing snapshot changes: the decisions behind `web::snapshots`, in plain Rust.
//!
//! One sandbox at a time makes a snapshot (the others load afresh meanwhile rather than wait);
//! every sandbox given one to restore may make a replacement if its restore fails; a refusal only
//! discards the snapshot that sandbox was given, never a newer one. A package snapshot fits only
//! sandboxes whose job loads its packages (`plan_where`); a sandbox that needs another one makes
//! the replacement.

use crate::small_map::SmallMap;

/// What one new Pyodide sandbox is told.
#[derive(Debug, PartialEq)]
pub struct SnapshotPlan<S> {
    /// Restore this snapshot instead of starting Pyodide afresh.
    pub restore: Option<S>,
    /// Make a snapshot if this sandbox ends up starting Pyodide afresh.
    pub make: bool,
    /// Names this plan when the sandbox reports back.
    pub ticket: u64,
}

#[derive(Debug)]
enum State<S> {
    /// The stored snapshot has not been looked up yet.
    Unknown,
    /// None, and nobody is making one.
    Missing,
    /// The sandbox holding this ticket is making one.
    Making(u64),
    /// This snapshot (of this generation) is handed to every new sandbox.
    Have(S, u64),
    /// Making one failed in a way that would fail again, or snapshots are switched off.
    Off,
}

/// The page's snapshot and the sandboxes' part in it. `S` is the snapshot (a `Blob` in the browser).
#[derive(Debug)]
pub struct SnapshotBook<S> {
    state: State<S>,
    next_ticket: u64,
    next_generation: u64,
    /// Tickets allowed to hand in a snapshot (each at most once).
    makers: SmallMap<u64, ()>,
    /// Tickets given a snapshot to restore, with that snapshot's generation.
    restorers: SmallMap<u64, u64>,
}

impl<S: Clone> SnapshotBook<S> {
    /// A book for a page; `enabled: false` plans every sandbox as a fresh start.
    pub fn new(enabled: bool) -> Self {
        SnapshotBook {
            state: if enabled { State::Unknown } else { State::Off },
            next_ticket: 1,
            next_generation: 1,
            makers: SmallMap::new(),
            restorers: SmallMap::new(),
        }
    }

    /// The stored snapshot was looked up (once per page; later calls change nothing).
    pub fn looked_up(&mut self, stored: Option<S>) {
        if matches!(self.state, State::Unknown) {
            self.state = match stored {
                Some(snapshot) => self.have(snapshot),
                None => State::Missing,
            };
        }
    }

    fn have(&mut self, snapshot: S) -> State<S> {
        let generation = self.next_generation;
        self.next_generation += 1;
        State::Have(snapshot, generation)
    }

    /// The plan for the next Pyodide sandbox.
    pub fn plan(&mut self) -> SnapshotPlan<S> {
        self.plan_where(&|_| true, true)
    }

    /// The plan for a sandbox that `fits` some snapshots only (a package snapshot holds certain
    /// packages) and that can make one only when `can_make`. A snapshot that does not fit it is
    /// not handed to it; if it can make one, it makes the replacement.
    pub fn plan_where(&mut self, fits: &dyn Fn(&S) -> bool, can_make: bool) -> SnapshotPlan<S> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let (restore, make) = match &self.state {
            State::Off | State::Making(_) => (None, false),
            State::Have(snapshot, generation) if fits(snapshot) => {
                self.restorers.insert(ticket, *generation);
                (Some(snapshot.clone()), can_make)
            }
            State::Unknown | State::Missing | State::Have(..) if can_make => {
                self.state = State::Making(ticket);
                (None, true)
            }
            State::Unknown | State::Missing | State::Have(..) => (None, false),
        };
        if make {
            self.makers.insert(ticket, ());
        }
        SnapshotPlan { restore, make, ticket }
    }

    /// `ticket`'s sandbox handed in a snapshot: it becomes the page's, replacing any older one.
    /// False (and nothing changes) when that sandbox was not asked for one, or already gave one.
    pub fn made(&mut self, ticket: u64, snapshot: S) -> bool {
        if self.makers.remove(&ticket).is_none() || matches!(self.state, State::Off) {
            return false;
        }
        self.restorers.remove(&ticket);
        self.state = self.have(snapshot);
        true
    }

    /// `ticket`'s sandbox could not restore the snapshot it was given. True when that snapshot
    /// is still the page's and is now dropped (the caller forgets the stored copy); that
    /// sandbox is making the replacement.
    pub fn rejected(&mut self, ticket: u64) -> bool {
        let Some(given) = self.restorers.remove(&ticket) else { return false };
        match self.state {
            State::Have(_, generation) if generation == given => {
                self.state = if self.makers.contains_key(&ticket) { State::Making(ticket) } else { State::Missing };
                true
            }
            _ => false,
        }
    }

    /// `ticket`'s sandbox will not hand in the snapshot it was to make: it went away, or making
    /// failed (`lasting`: it would fail again here, so no sandbox is asked again).
    pub fn not_made(&mut self, ticket: u64, lasting: bool) {
        self.restorers.remove(&ticket);
        if self.makers.remove(&ticket).is_none() {
            return;
        }
        if lasting {
            self.state = State::Off;
        } else if matches!(self.state, State::Making(maker) if maker == ticket) {
            self.state = State::Missing;
        }
    }
}

/// Whether two package lists name the same packages, in any order.
pub fn same_packages(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Whether a snapshot a sandbox made, holding `holds`, is the one it was asked for: the plain
/// snapshot (`asked: None`) holds no packages; a package snapshot holds some — the ones asked
/// for, or any when its job was not known (`Some([])`).
pub fn holds_what_was_asked(asked: Option<&[String]>, holds: &[String]) -> bool {
    match asked {
        None => holds.is_empty(),
        Some(wanted) => !holds.is_empty() && (wanted.is_empty() || same_packages(wanted, holds)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_made_snapshot_must_hold_what_was_asked() {
        assert!(holds_what_was_asked(None, &[]));
        assert!(!holds_what_was_asked(None, &names(&["numpy"])), "the plain snapshot holds no packages");
        assert!(holds_what_was_asked(Some(&names(&["scipy", "numpy"])), &names(&["numpy", "scipy"])));
        assert!(!holds_what_was_asked(Some(&names(&["numpy"])), &names(&["numpy", "scipy"])));
        assert!(holds_what_was_asked(Some(&[]), &names(&["pandas"])), "a job not known yet: any packages");
        assert!(!holds_what_was_asked(Some(&[]), &[]), "a package snapshot holds packages");
    }

    fn plan(book: &mut SnapshotBook<&'static str>) -> (Option<&'static str>, bool, u64) {
        let SnapshotPlan { restore, make, ticket } = book.plan();
        (restore, make, ticket)
    }

    #[test]
    fn the_first_sandbox_makes_one_while_the_others_start_afresh() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(None);
        let (restore, make, maker) = plan(&mut book);
        assert_eq!((restore, make), (None, true));
        let (restore, make, _) = plan(&mut book);
        assert_eq!((restore, make), (None, false), "only one sandbox makes a snapshot at a time");
        assert!(book.made(maker, "snapshot"));
        let (restore, make, _) = plan(&mut book);
        assert_eq!((restore, make), (Some("snapshot"), true));
    }

    #[test]
    fn a_stored_snapshot_is_restored_from_the_first_sandbox() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(Some("stored"));
        book.looked_up(None);
        assert_eq!(plan(&mut book).0, Some("stored"));
        assert_eq!(plan(&mut book).0, Some("stored"));
    }

    #[test]
    fn only_a_sandbox_asked_for_one_can_hand_in_a_snapshot_and_only_once() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(None);
        let (_, _, maker) = plan(&mut book);
        let (_, _, other) = plan(&mut book);
        assert!(!book.made(other, "forged"));
        assert!(!book.made(99, "forged"));
        assert!(book.made(maker, "real"));
        assert!(!book.made(maker, "again"));
        assert_eq!(plan(&mut book).0, Some("real"));
    }

    #[test]
    fn a_rejected_snapshot_is_replaced_by_the_sandbox_that_rejected_it() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(Some("old build"));
        let (_, make, first) = plan(&mut book);
        assert!(make, "a restoring sandbox may make the replacement");
        let (_, _, second) = plan(&mut book);
        assert!(book.rejected(first));
        assert!(!book.rejected(second), "already dropped: nothing more to forget");
        assert_eq!(plan(&mut book).0, None, "no sandbox is handed the rejected snapshot");
        assert!(book.made(first, "new"));
        assert_eq!(plan(&mut book).0, Some("new"));
    }

    #[test]
    fn a_late_rejection_does_not_drop_a_newer_snapshot() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(Some("old"));
        let (_, _, slow) = plan(&mut book);
        let (_, _, fast) = plan(&mut book);
        assert!(book.rejected(fast));
        assert!(book.made(fast, "new"));
        assert!(!book.rejected(slow));
        assert_eq!(plan(&mut book).0, Some("new"));
    }

    #[test]
    fn a_maker_that_goes_away_lets_the_next_sandbox_make_one() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(None);
        let (_, _, maker) = plan(&mut book);
        book.not_made(maker, false);
        let (restore, make, next) = plan(&mut book);
        assert_eq!((restore, make), (None, true));
        assert!(!book.made(maker, "too late"));
        assert!(book.made(next, "snapshot"));
    }

    #[test]
    fn a_lasting_failure_stops_asking() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(None);
        let (_, _, maker) = plan(&mut book);
        book.not_made(maker, true);
        assert_eq!(plan(&mut book), (None, false, 2));
    }

    #[test]
    fn a_snapshot_that_does_not_fit_is_not_handed_over_and_is_replaced_by_one_that_can_make_it() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(Some("numpy"));
        let fits = |wanted: &'static str| move |snapshot: &&'static str| *snapshot == wanted;
        let SnapshotPlan { restore, make, .. } = book.plan_where(&fits("numpy"), false);
        assert_eq!((restore, make), (Some("numpy"), false), "a sandbox that cannot make one still restores");
        let SnapshotPlan { restore, make, .. } = book.plan_where(&fits("pandas"), false);
        assert_eq!((restore, make), (None, false));
        let SnapshotPlan { restore, make, ticket } = book.plan_where(&fits("pandas"), true);
        assert_eq!((restore, make), (None, true), "a sandbox that can make the one it needs does");
        assert!(!book.plan_where(&fits("pandas"), true).make, "one maker at a time");
        assert!(book.made(ticket, "pandas"));
        assert_eq!(book.plan_where(&fits("pandas"), false).restore, Some("pandas"));
        assert_eq!(book.plan_where(&fits("numpy"), false).restore, None, "the page keeps one");
    }

    #[test]
    fn a_sandbox_that_cannot_make_one_never_blocks_the_makers() {
        let mut book = SnapshotBook::new(true);
        book.looked_up(None);
        assert_eq!(book.plan_where(&|_: &&str| true, false), SnapshotPlan { restore: None, make: false, ticket: 1 });
        assert!(book.plan_where(&|_| true, true).make);
    }

    #[test]
    fn switched_off_every_sandbox_starts_afresh() {
        let mut book = SnapshotBook::new(false);
        book.looked_up(Some("stored"));
        let (restore, make, ticket) = plan(&mut book);
        assert_eq!((restore, make), (None, false));
        assert!(!book.made(ticket, "snapshot"));
    }
}
