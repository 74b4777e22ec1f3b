//! A private `tessera serve` for one scenario: started on a loopback port with its database in a
//! fresh temporary directory, killed by PID when dropped (whatever ended the scenario).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::BoxError;

/// What the scheduler prints first on stdout, followed by its URL.
const LISTENING: &str = "tessera scheduler listening on ";

/// A running scheduler; dropping it kills the process and deletes its database.
pub struct Scheduler {
    child: Child,
    /// Base URL such as `http://127.0.0.1:41234` (no trailing slash).
    pub url: String,
    /// The admin API key it made for its new database (deploys and job status need a key).
    pub api_key: String,
    db: PathBuf,
    dir: tempfile::TempDir,
}

impl Scheduler {
    /// Starts `tessera serve --addr 127.0.0.1:0 --db <tempdir>/load.db` and waits (at most 30 s) for
    /// the line that names its URL. Its log (`RUST_LOG=warn`) goes to `serve.log` in the tempdir,
    /// where it prints its first admin key before that line (and saves it there too, not in the
    /// user's credentials file: `TESSERA_CONFIG_DIR` is the tempdir).
    pub fn start(tessera: &Path) -> Result<Scheduler, BoxError> {
        let dir = tempfile::Builder::new().prefix("tessera-load-").tempdir()?;
        let db = dir.path().join("load.db");
        let log = std::fs::File::create(dir.path().join("serve.log"))?;
        let mut command = Command::new(tessera);
        command
            .args(["serve", "--addr", "127.0.0.1:0", "--db"])
            .arg(&db)
            .env("RUST_LOG", "warn")
            .env("TESSERA_CONFIG_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the scheduler if this
        // process dies without running its destructors (SIGKILL), so no scheduler outlives us.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|error| format!("starting {} serve: {error}", tessera.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the scheduler's stdout was not captured".into());
        };
        // Read the first line on a thread (so we can time out), then keep draining stdout.
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = sender.send(reader.read_line(&mut line).map(|_| line));
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let mut scheduler = Scheduler { child, url: String::new(), api_key: String::new(), db, dir };
        let line = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) => line,
            Ok(Err(error)) => return Err(format!("reading the scheduler's stdout: {error}").into()),
            Err(_) => return Err(format!("the scheduler did not start within 30 s; {}", scheduler.log_tail()).into()),
        };
        match line.trim().strip_prefix(LISTENING) {
            Some(url) => scheduler.url = url.trim_end_matches('/').to_string(),
            None => {
                return Err(
                    format!("unexpected first line from the scheduler: {line:?}; {}", scheduler.log_tail()).into()
                )
            }
        }
        let log = std::fs::read_to_string(scheduler.dir.path().join("serve.log"))?;
        match log.lines().find_map(|line| line.strip_prefix("TESSERA_API_KEY=")) {
            Some(key) => scheduler.api_key = key.trim().to_string(),
            None => return Err(format!("the scheduler printed no API key; {}", scheduler.log_tail()).into()),
        }
        Ok(scheduler)
    }

    /// The scheduler's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes of the database on disk: the main file plus its write-ahead log.
    pub fn db_bytes(&self) -> u64 {
        let wal = PathBuf::from(format!("{}-wal", self.db.display()));
        [self.db.as_path(), wal.as_path()].iter().filter_map(|path| std::fs::metadata(path).ok()).map(|m| m.len()).sum()
    }

    /// Resident set size of the scheduler in KiB (`VmRSS` in `/proc/<pid>/status`).
    pub fn rss_kb(&self) -> Result<u64, BoxError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc/<pid>/status".into())
    }

    /// How many file descriptors the scheduler holds open (sockets included).
    pub fn open_fds(&self) -> Result<usize, BoxError> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// CPU time the scheduler has used so far, in clock ticks (user + system, `/proc/<pid>/stat`).
    pub fn cpu_ticks(&self) -> Result<u64, BoxError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |index: usize| fields.get(index).and_then(|text| text.parse::<u64>().ok());
        match (field(11), field(12)) {
            (Some(user), Some(system)) => Ok(user + system),
            _ => Err("malformed /proc/<pid>/stat".into()),
        }
    }

    /// The last lines of the scheduler's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("scheduler log tail: {:?}", &lines[lines.len().saturating_sub(5)..])
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID (SIGKILL); wait reaps it before the tempdir goes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds per clock tick of `/proc/<pid>/stat` CPU times.
pub fn seconds_per_tick() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        1.0 / ticks as f64
    } else {
        0.01
    }
}

/// CPU seconds (user + system, every thread) this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Raises this process's open-file limit to its hard limit (children such as the scheduler
/// inherit it) and returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64, BoxError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
    }
    Ok(limit.rlim_cur)
}
