//! Reading a process's memory from `/proc` (`status`, `smaps`), and
//! letting go of the clean file pages a process mapped while starting.
//!
//! RSS counts every page mapped into the process, including the clean,
//! read-only pages of the binary and of the shared libraries. Those belong
//! to the page cache: the kernel can drop them at any time and reads them
//! back on the next touch. Starting a server touches code it will not run
//! again (argument parsing, config loading, store opening, projection
//! catch-up; and the kernel maps up to 64 KiB around each touched page), so
//! [`release_file_pages`] drops this process's mappings of them once it
//! serves: the pages stay in the page cache, and the idle server's RSS
//! becomes the pages it does use.

/// The memory lines of `/proc/PID/status`, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Resident set.
    pub vm_rss: u64,
    /// Peak resident set.
    pub vm_hwm: u64,
    /// Anonymous part.
    pub rss_anon: u64,
    /// File-backed part.
    pub rss_file: u64,
    /// Threads.
    pub threads: u64,
}

/// This process's `/proc/self/status` (all zero if it cannot be read).
pub fn own_status() -> ProcStatus {
    std::fs::read_to_string("/proc/self/status")
        .map(|t| parse_status(&t))
        .unwrap_or_default()
}

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Permissions (`r-xp`).
    pub perms: String,
    /// Path or pseudo-name (`[stack]`); empty for anonymous memory.
    pub name: String,
    /// Resident KiB.
    pub rss: u64,
    /// Anonymous resident KiB.
    pub anonymous: u64,
}

/// Reads the memory lines of a `/proc/PID/status` text (absent lines are 0).
pub fn parse_status(text: &str) -> ProcStatus {
    let mut s = ProcStatus::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "VmRSS:" => s.vm_rss = value,
            "RssAnon:" => s.rss_anon = value,
            "RssFile:" => s.rss_file = value,
            "Threads:" => s.threads = value,
            "VmHWM:" => s.vm_hwm = value,
            _ => {}
        }
    }
    s
}

/// Parses a `/proc/PID/smaps` text; lines it does not know are skipped.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let perms = parts.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the name (which may hold spaces).
            let name = parts.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                perms,
                name,
                rss: 0,
                anonymous: 0,
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        let value = parts.next().and_then(|v| v.parse::<u64>().ok());
        match (first, value) {
            ("Rss:", Some(v)) => current.rss = v,
            ("Anonymous:", Some(v)) => current.anonymous = v,
            _ => {}
        }
    }
    out
}

/// Drops this process's mappings of clean, read-only, file-backed pages
/// (code and read-only data of the binary and the shared libraries) with
/// `madvise(MADV_DONTNEED)`; returns the KiB that were mapped.
///
/// Only mappings without write permission that hold no anonymous
/// (copied-on-write) page are touched: every page in them equals the file,
/// so a later touch faults in the same bytes from the page cache. Relocated
/// data (RELRO, which holds anonymous pages), writable data, heaps and
/// stacks are left alone. Errors (no `/proc`) mean nothing is released.
pub fn release_file_pages() -> std::io::Result<u64> {
    let maps = parse_smaps(&std::fs::read_to_string("/proc/self/smaps")?);
    let mut released = 0;
    for m in maps {
        if !m.name.starts_with('/')
            || m.perms.contains('w')
            || m.anonymous != 0
            || m.rss == 0
            || m.end <= m.start
        {
            continue;
        }
        let Ok(len) = usize::try_from(m.end - m.start) else {
            continue;
        };
        let Ok(addr) = usize::try_from(m.start) else {
            continue;
        };
        #[allow(unsafe_code)]
        // SAFETY: the range is one whole mapping of this process as the
        // kernel listed it, read-only and holding file pages only; for such
        // a private or shared file mapping MADV_DONTNEED only unmaps, and
        // the next access faults the same file contents back in. No Rust
        // object is invalidated: code and read-only data keep their values.
        let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += m.rss;
        }
    }
    Ok(released)
}

/// Asks the kernel not to back this process's memory with transparent
/// huge pages (`PR_SET_THP_DISABLE`), as mimalloc's `no_thp` build does for
/// its own arenas: on a system whose THP setting is `always`, every 2 MiB
/// region a thread's heap touched would otherwise cost 2 MiB of RSS. The
/// log and dashboard benchmarks run as fast without them. The flag is
/// inherited by child processes (git). A kernel that refuses leaves things
/// as they were.
pub fn no_huge_pages() {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag of this process.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_file_pages_keeps_the_process_working() {
        // The test binary's own code and the libraries are released; it
        // goes on running (and re-reads its code) with the same results.
        let before = parse_status(&std::fs::read_to_string("/proc/self/status").unwrap());
        let released = release_file_pages().unwrap();
        assert!(released > 0);
        let after = parse_status(&std::fs::read_to_string("/proc/self/status").unwrap());
        assert!(after.rss_file <= before.rss_file);
        let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
        assert_eq!(v.iter().sum::<u64>(), 332_833_500);
        assert_eq!(format!("{:?}", [1.5f64]), "[1.5]");
    }

    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        no_huge_pages();
        #[allow(unsafe_code)]
        // SAFETY: reads a flag of this process.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
