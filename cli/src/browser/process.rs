//! Chromium's processes: started so that they die with `tessera worker`, and ended as a whole.
//!
//! Three arrangements make sure no browser outlives the worker, however the worker ends:
//! - `tessera worker` is a *child subreaper*: a helper Chromium daemonizes (e.g. a crashpad
//!   handler) is re-parented to the worker instead of to init, so every browser process stays
//!   among the worker's descendants, where [`end_descendants`] finds and ends it by its PID.
//! - Chromium gets `PR_SET_PDEATHSIG = SIGKILL` in the child between fork and exec, *after* std
//!   has dropped it to `nobody` (the kernel clears the death signal on a credential change, so the
//!   order matters; `the_death_signal_survives_the_drop_to_nobody` checks it): a `kill -9` of the
//!   worker kills the browser, and its helpers, whose IPC channels close, follow it.
//! - Chromium runs in a process group of its own, so a Ctrl-C on the worker's terminal reaches
//!   only the worker, which then closes the browser in order.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so that
/// Chromium's daemonized helpers stay in its process tree.
pub(super) fn adopt_orphans() -> Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
    let outcome = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if outcome != 0 {
        return Err(Error::io("becoming the reaper of the browser's processes")(io::Error::last_os_error()));
    }
    Ok(())
}

/// What the browser's child process does between fork and exec, after std has set its uid, gid,
/// working directory and process group (std runs `pre_exec` closures last): ask for SIGKILL when
/// the thread that started it ends, and refuse to run if that already happened.
///
/// `parent` is the worker's PID, read before the fork. The death signal follows the *thread* that
/// forked, so the browser must be spawned from a thread that lives as long as the worker (the
/// runtime's `block_on` thread or one of its workers, never a `spawn_blocking` thread).
///
/// Only async-signal-safe calls (prctl, getppid) run here.
pub(super) fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) sets a flag on the calling (child) process only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } as u32 != parent {
        // The worker died between the fork and the prctl: nobody would end this browser.
        return Err(io::Error::other("tessera worker exited while starting the browser"));
    }
    Ok(())
}

/// Makes `source` the child's file descriptor `target` for each pair (between fork and exec; only
/// fcntl and dup2, both async-signal-safe). Every source is first lifted above the targets, so that
/// no dup2 overwrites a source still to be moved; dup2 leaves the targets open across exec.
pub(super) fn install_fds(pairs: &[(RawFd, RawFd); 2]) -> io::Result<()> {
    let mut lifted = [(-1, -1); 2];
    for (slot, (source, target)) in lifted.iter_mut().zip(pairs) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) duplicates an fd we own onto a free number ≥ 10.
        let copy = unsafe { libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, 10) };
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = (copy, *target);
    }
    for (copy, target) in lifted {
        // SAFETY: dup2 onto a fixed number the browser expects; the copy stays close-on-exec.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `signal` to one process by its PID; false when there is no such process (any more).
pub(super) fn send_signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill(2) with a positive PID signals exactly that process; no memory is shared.
    pid > 0 && unsafe { libc::kill(pid as libc::pid_t, signal) } == 0
}

/// The direct children of a process (those of all its threads), from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return found };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(text.split_whitespace().filter_map(|child| child.parse::<u32>().ok()));
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// Every descendant of a process, from /proc (breadth first).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found: Vec<u32> = Vec::new();
    let mut queue = children(pid);
    while let Some(next) = queue.pop() {
        if !found.contains(&next) {
            found.push(next);
            queue.extend(children(next));
        }
    }
    found
}

/// Whether a process has exited and only waits to be reaped (or is gone).
fn is_zombie_or_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_none_or(|state| state == "Z")
}

/// Reaps the worker's exited children without blocking. Called only once the browser's own
/// `Child` has been waited for: every child left is an adopted orphan of the browser's.
fn reap_adopted() {
    for pid in children(std::process::id()) {
        if is_zombie_or_gone(pid) {
            let mut status = 0;
            // SAFETY: waitpid on one exited child of ours, non-blocking; the status is ours to drop.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        }
    }
}

/// Ends every process below `tessera worker`. All of them are the browser's (the worker starts
/// nothing else): they get `grace` to exit on their own after the browser closed, then SIGKILL by
/// PID; orphans re-parented to us are reaped. Returns the PIDs still running at the end (none,
/// unless the kernel could not deliver a SIGKILL within seconds).
pub(super) async fn end_descendants(grace: Duration) -> Vec<u32> {
    let me = std::process::id();
    let started = Instant::now();
    loop {
        reap_adopted();
        let running: Vec<u32> = descendants(me).into_iter().filter(|pid| !is_zombie_or_gone(*pid)).collect();
        if running.is_empty() || started.elapsed() > grace + Duration::from_secs(3) {
            return running;
        }
        if started.elapsed() >= grace {
            for pid in &running {
                send_signal(*pid, libc::SIGKILL);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};

    use super::*;

    /// The death signal is set after std changed the child's credentials, so it survives the drop
    /// to `nobody` (as root) and fires when the starting thread ends.
    #[test]
    fn the_death_signal_survives_the_drop_to_nobody() {
        let parent = std::process::id();
        let starter = std::thread::spawn(move || {
            let mut command = Command::new("sleep");
            command.arg("30").stdin(Stdio::null());
            // SAFETY: getuid has no preconditions.
            if unsafe { libc::getuid() } == 0 {
                command.uid(super::super::UNPRIVILEGED_ID).gid(super::super::UNPRIVILEGED_ID);
            }
            // SAFETY: die_with_parent makes only async-signal-safe calls.
            unsafe { command.pre_exec(move || die_with_parent(parent)) };
            command.spawn().expect("spawn sleep")
        });
        let mut child = starter.join().expect("the starting thread");
        // The thread that forked it has ended: the kernel sends SIGKILL.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the child outlived the thread that started it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn descendants_include_grandchildren() {
        let mut child = Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().expect("spawn sh");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut below = descendants(child.id());
        while below.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            below = descendants(child.id());
        }
        assert_eq!(below.len(), 1, "{below:?}");
        assert!(descendants(std::process::id()).contains(&below[0]));
        send_signal(below[0], libc::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
}
