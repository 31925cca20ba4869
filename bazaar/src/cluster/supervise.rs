//! Supervision of a cluster's children: a service that exits with
//! [`common::EXIT_RESTART`] (its storage failed; what is on disk is intact)
//! is started again after a backoff; any other exit (`kill -9`, a crash, a
//! bad flag) is recorded and left for a person, so a `bazaar kill` stays
//! killed. Every exit is recorded with the last line the service wrote to its
//! log, which is what [`Supervised`] shows in `bazaar status`.
//!
//! The supervisor is a thread of the process that owns the children, looking
//! every [`SUPERVISE_EVERY`]; see [`Cluster::supervise`](super::Cluster::supervise).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use serde::{Deserialize, Serialize};

use super::procs::Procs;
use super::{Cluster, Service};

/// Delay before the first restart after an exit with `EXIT_RESTART`. A
/// service exits so only once its storage works again (space was freed) or
/// after its own bound, so it is restarted soon: trades must work again
/// within seconds of the space being freed.
pub const RESTART_FIRST_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between restarts. Each quick exit doubles the delay, so a
/// service that keeps failing at start-up (the disk still full) costs one
/// start, and a few log lines, per 8 s instead of a busy loop; and it is back
/// at most 8 s after the cause is gone.
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(8);
/// A run at least this long ends a streak of failures: the next exit is a new
/// incident and waits only [`RESTART_FIRST_DELAY`] again. Longer than the
/// longest start-up (a replica's catch-up at 1,000,000 orders).
pub const RESTART_STABLE_AFTER: Duration = Duration::from_secs(30);
/// How often the supervisor looks at the children: a small part of the first
/// delay, and negligible work (a `waitpid` per child).
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// The last line of a log is read from at most this many final bytes.
const LOG_TAIL_BYTES: u64 = 8 * 1024;
/// A longer last line is cut to this many characters.
const MAX_LINE_CHARS: usize = 300;

/// What the supervisor knows of one service: `bazaar status` shows it, the
/// control socket carries it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervised {
    /// `catalog`, `order-N` or `frontend`.
    pub service: String,
    /// `running`, `paused`, `exited` or `restarting` (exited, restart pending).
    pub state: String,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// Restarts by the supervisor (not `bazaar resume`).
    pub restarts: u32,
    /// Exits the supervisor saw (not those of `bazaar kill` or `stop`).
    pub exits: u32,
    /// The latest of those exits.
    pub last_exit: Option<LastExit>,
    /// The wait before the latest (or pending) restart, in milliseconds.
    pub backoff_ms: Option<u64>,
    /// When the pending restart happens: milliseconds from the answer...
    pub next_restart_in_ms: Option<u64>,
    /// ... and as Unix time in milliseconds.
    pub next_restart_at_ms: Option<u64>,
}

/// How a service ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastExit {
    /// Its exit code, when it exited (`None` when a signal ended it).
    pub code: Option<i32>,
    /// The signal that ended it (9 for `kill -9`).
    pub signal: Option<i32>,
    /// Whether this exit is restarted (`code` is `EXIT_RESTART`).
    pub restarted: bool,
    /// Unix time in milliseconds, when the supervisor saw it.
    pub at_ms: u64,
    /// The last line the service wrote to its log (stderr) before it ended.
    pub last_line: Option<String>,
}

impl LastExit {
    /// `exit code 75` or `signal 9`.
    pub fn how(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            (None, None) => "an unknown status".into(),
        }
    }
}

/// The supervisor's state of one service.
#[derive(Debug, Default)]
pub(super) struct Watch {
    restarts: u32,
    exits: u32,
    last_exit: Option<LastExit>,
    /// When the pending restart is due.
    next_at: Option<Instant>,
    /// The delay used for the latest restart, doubled by the next quick exit.
    delay: Option<Duration>,
    /// When the current (or last) process was started.
    started_at: Option<Instant>,
    /// The process whose exit is recorded already (a child that is not
    /// restarted stays in the table, as without supervision).
    recorded_pid: Option<u32>,
}

impl Watch {
    /// A process of this service was started (by its owner or by a restart).
    pub(super) fn started(&mut self, now: Instant) {
        self.started_at = Some(now);
        self.next_at = None;
    }

    /// The owner killed or stopped it: no restart is pending any more.
    pub(super) fn cancel(&mut self) {
        self.next_at = None;
    }

    pub(super) fn pending(&self) -> bool {
        self.next_at.is_some()
    }

    pub(super) fn snapshot(&self, service: Service, now: Instant) -> Supervised {
        let next_in = self.next_at.map(|t| t.saturating_duration_since(now));
        Supervised {
            service: service.to_string(),
            state: String::new(),
            pid: None,
            restarts: self.restarts,
            exits: self.exits,
            last_exit: self.last_exit.clone(),
            backoff_ms: self.delay.map(millis),
            next_restart_in_ms: next_in.map(millis),
            next_restart_at_ms: next_in.map(|d| unix_ms(SystemTime::now() + d)),
        }
    }
}

/// The delay before the next restart: the first one after a run of at least
/// [`RESTART_STABLE_AFTER`] (or the first ever), else twice the previous one
/// up to [`RESTART_MAX_DELAY`].
pub fn next_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(d) if ran_for < RESTART_STABLE_AFTER => (d * 2).min(RESTART_MAX_DELAY),
        _ => RESTART_FIRST_DELAY,
    }
}

/// One look at every child: record new exits, schedule the restartable
/// ones, start those that are due.
pub(super) fn tick(procs: &mut Procs, now: Instant) {
    let services: Vec<Service> = procs.children.keys().copied().collect();
    for s in services {
        let Some(child) = procs.children.get_mut(&s) else {
            continue;
        };
        let pid = child.id();
        let Ok(Some(status)) = child.try_wait() else {
            continue;
        };
        let log = procs.log_path(s);
        let watch = procs.watch.entry(s).or_default();
        if watch.recorded_pid == Some(pid) {
            continue;
        }
        watch.recorded_pid = Some(pid);
        let exit = exit_of(status, last_line(&log));
        watch.exits += 1;
        if exit.restarted {
            let ran_for = watch.started_at.map_or(Duration::ZERO, |t| now - t);
            let delay = next_delay(watch.delay, ran_for);
            watch.delay = Some(delay);
            watch.next_at = Some(now + delay);
            procs.children.remove(&s);
            tracing::debug!(service = %s, ?delay, "the service exited to be restarted");
        } else {
            tracing::debug!(service = %s, exit = exit.how(), "the service exited");
        }
        watch.last_exit = Some(exit);
    }
    let due: Vec<Service> = procs
        .watch
        .iter()
        .filter(|(_, w)| w.next_at.is_some_and(|t| t <= now))
        .map(|(s, _)| *s)
        .collect();
    for s in due {
        match procs.start(s) {
            Ok(pid) => {
                let watch = procs.watch.entry(s).or_default();
                watch.restarts += 1;
                tracing::debug!(service = %s, pid, restarts = watch.restarts, "restarted");
            }
            Err(e) => {
                // Not startable now (the binary was removed, no process
                // slots): try again later, as after a quick exit.
                let watch = procs.watch.entry(s).or_default();
                let delay = next_delay(watch.delay, Duration::ZERO);
                watch.delay = Some(delay);
                watch.next_at = Some(now + delay);
                tracing::warn!(service = %s, error = %e, ?delay, "restart failed");
            }
        }
    }
}

fn exit_of(status: ExitStatus, last_line: Option<String>) -> LastExit {
    LastExit {
        code: status.code(),
        signal: status.signal(),
        restarted: status.code() == Some(common::EXIT_RESTART),
        at_ms: unix_ms(SystemTime::now()),
        last_line,
    }
}

/// The last non-empty line of a log file, cut to [`MAX_LINE_CHARS`].
pub fn last_line(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(MAX_LINE_CHARS).collect())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// The supervisor thread of a [`Cluster`].
pub(super) struct Supervisor {
    /// Dropped to stop the thread.
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Cluster {
    /// Turns supervision on or off (off by default). On, a thread of this
    /// process looks at the children every [`SUPERVISE_EVERY`]: a service
    /// that exits with [`common::EXIT_RESTART`] is started again after a
    /// backoff ([`RESTART_FIRST_DELAY`] doubling up to
    /// [`RESTART_MAX_DELAY`]); every other exit is recorded and left alone,
    /// and what [`kill`](Self::kill) or [`stop`](Self::stop) ends stays down.
    /// [`supervised`](Self::supervised) tells what it saw and did.
    pub fn supervise(&mut self, on: bool) -> anyhow::Result<()> {
        if on == self.supervisor.is_some() {
            return Ok(());
        }
        if !on {
            self.end_supervision();
            return Ok(());
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let procs = Arc::clone(&self.procs);
        let thread = std::thread::Builder::new()
            .name("bazaar-supervisor".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(SUPERVISE_EVERY) {
                    let mut p = procs.lock().unwrap_or_else(PoisonError::into_inner);
                    tick(&mut p, Instant::now());
                }
            })
            .context("cannot start the supervisor thread")?;
        self.procs().supervising = true;
        self.supervisor = Some(Supervisor { stop, thread });
        Ok(())
    }

    /// Stops the thread, then drops the restarts it left pending.
    pub(super) fn end_supervision(&mut self) {
        if let Some(Supervisor { stop, thread }) = self.supervisor.take() {
            drop(stop);
            let _ = thread.join();
        }
        let mut p = self.procs();
        p.supervising = false;
        p.watch.values_mut().for_each(Watch::cancel);
    }

    /// What the supervisor saw and did for `s`, and its state now
    /// (`running`, `paused`, `exited`, or `restarting` while a restart is
    /// pending). Without supervision: the state and pid only.
    pub fn supervised(&self, s: Service) -> Supervised {
        let (mut report, running) = {
            let mut p = self.procs();
            let now = Instant::now();
            let mut report = p
                .watch
                .get(&s)
                .map(|w| w.snapshot(s, now))
                .unwrap_or_else(|| Supervised {
                    service: s.to_string(),
                    ..Supervised::default()
                });
            let pending = p.watch.get(&s).is_some_and(Watch::pending);
            let running = p
                .children
                .get_mut(&s)
                .and_then(|c| matches!(c.try_wait(), Ok(None)).then(|| c.id()));
            report.pid = running;
            report.state = if pending { "restarting" } else { "exited" }.into();
            (report, running)
        };
        if running.is_some() {
            report.state = if self.is_paused(s) {
                "paused"
            } else {
                "running"
            }
            .into();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_cap_and_resets_after_a_stable_run() {
        let quick = Duration::from_secs(1);
        let mut d = next_delay(None, quick);
        assert_eq!(d, RESTART_FIRST_DELAY);
        let mut seen = vec![d];
        for _ in 0..6 {
            d = next_delay(Some(d), quick);
            seen.push(d);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(
            next_delay(Some(RESTART_MAX_DELAY), RESTART_STABLE_AFTER),
            RESTART_FIRST_DELAY
        );
    }

    #[test]
    fn the_last_line_is_the_last_non_empty_one_and_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        assert_eq!(last_line(&log), None);
        std::fs::write(&log, "starting\nstorage failed: no space left\n\n").unwrap();
        assert_eq!(
            last_line(&log).as_deref(),
            Some("storage failed: no space left")
        );
        std::fs::write(&log, format!("a\n{}\n", "é".repeat(1000))).unwrap();
        assert_eq!(
            last_line(&log).map(|l| l.chars().count()),
            Some(MAX_LINE_CHARS)
        );
    }

    #[test]
    fn an_exit_is_restarted_only_with_exit_restart() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert!(exit_of(code(common::EXIT_RESTART), None).restarted);
        assert!(!exit_of(code(1), None).restarted);
        let killed = exit_of(ExitStatus::from_raw(9), None);
        assert!(!killed.restarted);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        assert_eq!(killed.how(), "signal 9");
        assert_eq!(exit_of(code(75), None).how(), "exit code 75");
    }
}
