//! The process and its threads: heap trimming, CPU time, a private network
//! namespace.

use std::io;
use std::time::Duration;

/// Gives free heap pages back to the system (glibc's `malloc_trim(0)`): a
/// daemon that parsed a large configuration keeps a smaller resident set.
/// Does nothing where the C library has no `malloc_trim`.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns pages of free chunks to the system; it
    // takes the allocator's lock like any malloc call and touches no memory
    // in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps this process's memory, which holds key material, out of core
/// dumps and away from other users: `prctl(PR_SET_DUMPABLE, 0)` (no core
/// file; `/proc/PID/mem` and ptrace only for root) and a core size limit of
/// 0 (also inherited by anything the process starts).
pub fn keep_out_of_core_dumps() -> io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    Ok(())
}

/// What [`lock_memory`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every page of the process, present and future, stays in RAM once
    /// touched: key material never reaches swap.
    Locked,
    /// Nothing was locked: without CAP_IPC_LOCK the locked-memory limit
    /// (`limit` bytes, RLIMIT_MEMLOCK) would make allocations fail once the
    /// process grew past it.
    LimitTooLow {
        /// The soft limit in bytes.
        limit: u64,
    },
}

/// Locks this process's memory into RAM (`mlockall(MCL_CURRENT |
/// MCL_FUTURE | MCL_ONFAULT)`: pages are locked as they are first touched,
/// so nothing is faulted in ahead of use), so that key material is never
/// written to swap; but only where that cannot fail a later allocation:
/// with CAP_IPC_LOCK in the effective set or an unlimited RLIMIT_MEMLOCK.
/// Otherwise it locks nothing and says why. Locked pages cannot be given
/// back by [`malloc_trim`] (the kernel refuses `MADV_DONTNEED` on them):
/// freed heap pages stay resident until the heap's top shrinks.
pub fn lock_memory() -> io::Result<MemoryLock> {
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{Resource, getrlimit};
    use rustix::thread::{CapabilitySet, capabilities};
    let privileged = capabilities(None)?
        .effective
        .contains(CapabilitySet::IPC_LOCK);
    if let (false, Some(limit)) = (privileged, getrlimit(Resource::Memlock).current) {
        return Ok(MemoryLock::LimitTooLow { limit });
    }
    mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)?;
    Ok(MemoryLock::Locked)
}

/// Whose CPU time [`cpu_time`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// This process (all its threads).
    Process,
    /// Its children that ended and were waited for.
    Children,
}

/// User and system CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// Time spent in user mode.
    pub user: Duration,
    /// Time spent in the kernel.
    pub system: Duration,
}

/// CPU time used so far (`getrusage(2)`).
pub fn cpu_time(who: Who) -> io::Result<CpuTime> {
    let who = match who {
        Who::Process => libc::RUSAGE_SELF,
        Who::Children => libc::RUSAGE_CHILDREN,
    };
    // SAFETY: rusage is plain old data (integers): all-zero is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one struct rusage to the valid, exclusively
    // borrowed `r`.
    if unsafe { libc::getrusage(who, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let d = |tv: libc::timeval| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    Ok(CpuTime {
        user: d(r.ru_utime),
        system: d(r.ru_stime),
    })
}

/// Moves the calling thread into a new, empty network namespace of its own
/// (`unshare(CLONE_NEWNET)`); it disappears when the last thread or socket
/// in it does. Needs CAP_SYS_ADMIN (EPERM otherwise). Other threads keep
/// their namespace; sockets opened before keep theirs.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: rustix marks unshare unsafe for CLONE_FILES, which would give
    // this thread a file-descriptor table of its own that other threads'
    // descriptors are not in. CLONE_NEWNET alone leaves descriptors, memory
    // and every other thread as they are.
    Ok(unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the ignored test `name` of this binary in a child process (with
    /// `ROTOR_SYS_CHILD=1`) and asserts that it ran and passed: for what
    /// changes the whole process.
    fn run_in_child(name: &str) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored"])
            .env("ROTOR_SYS_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// In a child, so the test process itself stays dumpable.
    #[test]
    fn out_of_core_dumps() {
        use rustix::process::{DumpableBehavior, Resource, dumpable_behavior, getrlimit};
        // Dumpability is per process: a child reports back.
        let h = std::thread::spawn(|| run_in_child("process::tests::child_checks_core_dumps"));
        h.join().unwrap();
        // This process was left alone.
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::Dumpable);
        let _ = getrlimit(Resource::Core);
    }

    #[test]
    #[ignore = "run by out_of_core_dumps in a child process"]
    fn child_checks_core_dumps() {
        use rustix::process::{DumpableBehavior, Resource, dumpable_behavior, getrlimit};
        assert_eq!(std::env::var("ROTOR_SYS_CHILD").as_deref(), Ok("1"));
        keep_out_of_core_dumps().unwrap();
        assert_eq!(dumpable_behavior().unwrap(), DumpableBehavior::NotDumpable);
        let l = getrlimit(Resource::Core);
        assert_eq!((l.current, l.maximum), (Some(0), Some(0)));
    }

    /// In a child: locking is per process.
    #[test]
    fn memory_is_locked_where_permitted() {
        run_in_child("process::tests::child_locks_memory");
    }

    /// The kernel's own count of this process's locked memory.
    fn locked_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    #[ignore = "run by memory_is_locked_where_permitted in a child process"]
    fn child_locks_memory() {
        use rustix::process::{Resource, getrlimit};
        assert_eq!(std::env::var("ROTOR_SYS_CHILD").as_deref(), Ok("1"));
        let before = locked_kib();
        let r = lock_memory().unwrap();
        let privileged = rustix::thread::capabilities(None)
            .unwrap()
            .effective
            .contains(rustix::thread::CapabilitySet::IPC_LOCK);
        match r {
            MemoryLock::Locked => {
                assert!(privileged || getrlimit(Resource::Memlock).current.is_none());
                // Touched after the call: locked as it is faulted in.
                let v = std::hint::black_box(vec![1u8; 4 << 20]);
                let after = locked_kib();
                assert!(after >= before + 4096, "VmLck {before} -> {after} KiB");
                drop(v);
            }
            MemoryLock::LimitTooLow { limit } => {
                assert!(!privileged);
                assert_eq!(getrlimit(Resource::Memlock).current, Some(limit));
                assert_eq!(locked_kib(), before);
            }
        }
    }

    #[test]
    fn cpu_time_advances() {
        let a = cpu_time(Who::Process).unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let b = cpu_time(Who::Process).unwrap();
        assert!(b.user + b.system > a.user + a.system);
        cpu_time(Who::Children).unwrap();
        malloc_trim();
    }
}
