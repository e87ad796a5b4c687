//! The process's peak memory (resident set), for `bench` and `train`: Linux's VmHWM, which
//! /proc/self/clear_refs can reset between measurements. Elsewhere: unknown (None).

/// Peak resident memory of this process so far, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak to the current resident memory (so the next reading is the peak of what
/// follows); false where the system cannot.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Bytes as MiB, for reports.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}
