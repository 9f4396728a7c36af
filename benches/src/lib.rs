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

/// A transmit chain as a guest writes it: the 12-byte virtio-net header
/// (`VIRTIO_F_VERSION_1`) of `hdr`, then `frame`.
pub fn virtio_chain(hdr: &vswitch_offload::VirtioNetHdr, frame: &[u8]) -> Vec<u8> {
    let format = vswitch_offload::virtio::HdrFormat::V1;
    let mut chain = vec![0u8; format.size()];
    // The buffer has exactly the format's size.
    let _ = hdr.emit(&mut chain, format);
    chain.extend_from_slice(frame);
    chain
}
