//! Criterion benchmarks live in `benches/benches/`; see README.md. This
//! library holds what several of them measure with.

use std::time::Duration;

/// CPU time of this process's threads whose name starts with `prefix`,
/// from `/proc/self/task/*/schedstat` (nanoseconds on a CPU). Zero where
/// the system does not say.
pub fn cpu_of_threads(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
        total += Duration::from_nanos(ns.unwrap_or(0));
    }
    total
}
