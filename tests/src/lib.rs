//! Shared helpers for the integration and end-to-end tests in `tests/tests/`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

/// Whether the current process runs as root (needed for namespaces and TAP
/// devices). End-to-end tests that need it print why they skip otherwise.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
