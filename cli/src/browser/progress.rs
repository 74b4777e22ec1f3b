//! What `tessera worker` shows on its terminal: the page's `[tessera]` lines as they come, and
//! under them one status line (sandboxes running, slices done, errors, elapsed time) kept up to
//! date from those lines. Without a terminal on stdout (a log file, a pipe, the e2e harness) only
//! the lines are printed, unchanged: scripts and tests read them.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the page's lines have said so far.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Tally {
    /// Sandboxes created and not yet removed, by number.
    pub sandboxes: BTreeSet<u64>,
    pub done: u64,
    pub errors: u64,
    /// What the page is doing, in a word or two.
    pub state: &'static str,
}

/// The numbers of a "`D` done, `E` errors" phrase (the page ends `submitted:` and `exit:` lines
/// with one).
fn done_and_errors(text: &str) -> Option<(u64, u64)> {
    let (before, after) = text.rsplit_once(" done, ")?;
    let done = before.rsplit(['(', ' ']).next()?.parse().ok()?;
    let errors = after.split(' ').next()?.parse().ok()?;
    Some((done, errors))
}

impl Tally {
    /// Takes in one page line (without its `[tessera] ` prefix).
    pub(super) fn read(&mut self, body: &str) {
        if let Some(rest) = body.strip_prefix("sandbox ") {
            let mut words = rest.split(' ');
            if let (Some(Ok(number)), Some(verb)) = (words.next().map(str::parse::<u64>), words.next()) {
                if verb == "created" {
                    self.sandboxes.insert(number);
                } else if verb.starts_with("removed") {
                    self.sandboxes.remove(&number);
                }
            }
        } else if let Some(rest) = body.strip_prefix("sandbox-removed sandbox=") {
            if let Some(Ok(number)) = rest.split(' ').next().map(str::parse::<u64>) {
                self.sandboxes.remove(&number);
            }
        } else if body.starts_with("started") {
            self.state = "starting";
        } else if body.starts_with("leased") || body.starts_with("submitted") {
            self.state = "working";
        } else if body.starts_with("no work") {
            self.state = "idle";
        } else if body.starts_with("scheduler unreachable") {
            self.state = "scheduler unreachable";
        } else if body.starts_with("exit") || body.starts_with("stopped") {
            self.state = "stopped";
        }
        if body.starts_with("submitted") || body.starts_with("exit") {
            if let Some((done, errors)) = done_and_errors(body) {
                (self.done, self.errors) = (done, errors);
            }
        }
    }

    /// The status line's text (the elapsed time is the bar's own).
    fn status(&self) -> String {
        let count = self.sandboxes.len();
        let plural = if count == 1 { "" } else { "es" };
        let state = if self.state.is_empty() { "opening the page" } else { self.state };
        format!("{count} sandbox{plural} · {} slices done · {} errors · {state}", self.done, self.errors)
    }
}

/// The worker's output: page lines, notes on stderr, and the status line when stdout is a terminal.
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    tally: Tally,
    started: Instant,
}

impl Progress {
    /// A status line on stdout if it is a terminal; plain lines otherwise.
    pub(super) fn for_stdout() -> Progress {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            // Redrawn every second so the elapsed time moves while the page is quiet.
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        let progress = Progress { bar, tally: Tally::default(), started: Instant::now() };
        progress.redraw();
        progress
    }

    /// Plain lines only, whatever stdout is.
    #[cfg(test)]
    pub(super) fn plain() -> Progress {
        Progress { bar: None, tally: Tally::default(), started: Instant::now() }
    }

    /// Prints a page line (`[tessera] …`) as is, above the status line, and counts it.
    pub(super) fn page_line(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
        if let Some(body) = line.strip_prefix("[tessera] ") {
            self.tally.read(body);
            self.redraw();
        }
    }

    /// Writes a note of the worker's own to stderr without tearing the status line.
    pub(super) fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("tessera worker: {text}")),
            None => eprintln!("tessera worker: {text}"),
        }
    }

    fn redraw(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.tally.status());
        }
    }

    /// Clears the status line and says what was done, on stderr.
    pub(super) fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.tally.state.is_empty() {
            return;
        }
        eprintln!(
            "tessera worker: {} slices done, {} errors in {:.0?}",
            self.tally.done,
            self.tally.errors,
            Duration::from_secs(self.started.elapsed().as_secs())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sandboxes_slices_and_errors_from_the_page_lines() {
        let mut tally = Tally::default();
        for line in [
            "started with 3 sandbox(es)",
            "registered as w-1 with 3 sandbox(es)",
            "sandbox 1 created (map-basic)",
            "sandbox 2 created (pyodide)",
            "sandbox 3 created (pyodide)",
            "leased 40 slice(s)",
            "submitted: 38 accepted, 0 duplicate, 0 stale, 0 requeued, 0 released, 0 refused (37 done, 1 errors)",
            "sandbox 2 removed: idle",
            "sandbox-removed sandbox=3 reason=crashed (out of memory)",
        ] {
            tally.read(line);
        }
        assert_eq!(tally.sandboxes, BTreeSet::from([1]));
        assert_eq!((tally.done, tally.errors, tally.state), (37, 1, "working"));
        assert_eq!(tally.status(), "1 sandbox · 37 slices done · 1 errors · working");
        tally.read("no work; idle");
        assert_eq!(tally.state, "idle");
        tally.read("exit: idle; 40 done, 2 errors");
        assert_eq!((tally.done, tally.errors, tally.state), (40, 2, "stopped"));
        // A line that only looks like one changes nothing.
        tally.read("sandbox x created");
        tally.read("scheduler unreachable for lease (timeout); retrying in 500 ms");
        assert_eq!((tally.sandboxes.len(), tally.done, tally.state), (1, 40, "scheduler unreachable"));
    }

    #[test]
    fn reads_done_and_errors_phrases() {
        assert_eq!(done_and_errors("x (12 done, 3 errors)"), Some((12, 3)));
        assert_eq!(done_and_errors("exit: idle; 5 done, 0 errors"), Some((5, 0)));
        assert_eq!(done_and_errors("no numbers"), None);
    }
}
