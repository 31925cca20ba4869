//! What `/proc/<pid>/stat` says of a process (Linux): its state and the
//! CPU it has spent; and from its threads' `status` files, how often they
//! were switched off a CPU. `bazaar` reads it of the services it runs
//! (frozen or not, CPU and context switches per request) and the store's
//! CPU probe of itself.

/// Clock ticks per second of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`;
/// 100 on every Linux this runs on).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process's stat file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `T` (stopped), ...
    pub state: char,
    /// User plus system time (fields 14 and 15), in clock ticks.
    pub cpu_ticks: u64,
}

/// The stat of process `pid`, or of this process for `None`; `None` when
/// it is gone or the file does not read as one.
pub fn read(pid: Option<u32>) -> Option<Stat> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse(&std::fs::read_to_string(path).ok()?)
}

fn parse(stat: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last closing parenthesis are plain, from field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        state: fields.first()?.chars().next()?,
        cpu_ticks: field(14).unwrap_or(0) + field(15).unwrap_or(0),
    })
}

/// Context switches of every live thread of `pid` so far (voluntary: it
/// waited, for a lock, a socket, a disk; involuntary: it was preempted),
/// summed from `/proc/<pid>/task/*/status`; `None` when the process is
/// gone. Threads that have ended are not counted.
pub fn switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total += switches_in(&status);
    }
    Some(total)
}

fn switches_in(status: &str) -> u64 {
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
        })
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_and_the_ticks_after_a_name_with_spaces() {
        let line = "42 (a (b) c) T 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 9 0 0";
        assert_eq!(
            parse(line),
            Some(Stat {
                state: 'T',
                cpu_ticks: 12
            })
        );
        assert_eq!(parse("42 (x"), None);
    }

    #[test]
    fn reads_this_process_and_not_one_that_is_gone() {
        assert!(read(None).is_some());
        assert!(read(Some(std::process::id())).is_some());
        assert_eq!(read(Some(u32::MAX)), None);
    }

    #[test]
    fn counts_both_kinds_of_switches_of_every_thread() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t5\n";
        assert_eq!(switches_in(status), 12);
        let pid = std::process::id();
        let before = switches(pid).expect("this process is there");
        // A thread that sleeps leaves its CPU: one voluntary switch at least.
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(2)))
            .join()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(switches(pid).expect("still there") > before);
        assert_eq!(switches(u32::MAX), None);
    }
}
