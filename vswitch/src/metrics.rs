//! `vswitch run --metrics ADDR`: every counter in the Prometheus (OpenMetrics)
//! text format at `http://ADDR/metrics`, encoded by `prometheus-client`
//! from a fresh snapshot on each scrape.
//!
//! | metric | labels |
//! |---|---|
//! | `vswitch_port_frames_total`, `vswitch_port_bytes_total` | `port`, `direction` (`rx`: from the port, `tx`: to it) |
//! | `vswitch_port_drops_total` | `port`, `reason` (every reason of the drop taxonomy) |
//! | `vswitch_port_software_segments_total`, `vswitch_port_software_checksums_total`, `vswitch_port_gro_merges_total`, `vswitch_port_lent_copied_frames_total`, `vswitch_port_not_learned_total` | `port` |
//! | `vswitch_port_up` (gauge, 1 or 0) | `port` |
//! | `vswitch_port_broken_queues` (gauge: virtqueues of the attached guest not served because it broke them), `vswitch_port_queues_broken_total` (since the port was added) | `port` (vhost-user ports) |
//! | `vswitch_port_last_error` (gauge, 1) | `port`, `error` (vhost-user ports with a problem so far) |
//! | `vswitch_worker_frames_total`, `vswitch_worker_handed_off_total`, `vswitch_worker_sent_total`, `vswitch_worker_busy_seconds_total` | `worker` |
//! | `vswitch_learned_addresses` (gauge) | |

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::ctl::protocol::StatsView;
use crate::run::controller::Controller;

/// Why the metrics endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}: {source}{}", if source.kind() == io::ErrorKind::AddrInUse { " (hint: another process listens there; give another --metrics ADDR)" } else { "" })]
pub struct MetricsError {
    /// The address.
    pub addr: SocketAddr,
    /// The system's error.
    #[source]
    pub source: io::Error,
}

type Labels = Vec<(String, String)>;

/// Label pairs, each value escaped ([`escape_label`]).
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), escape_label(v)))
        .collect()
}

/// A label value as the text format carries it: `prometheus-client` writes
/// label values as they are, and an error message or a port name may hold
/// quotes or backslashes.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The exposition of `stats`.
pub fn encode_stats(stats: &StatsView) -> String {
    let mut registry = Registry::default();
    let family = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<Labels, Counter>::default();
        registry.register(name, help, family.clone());
        family
    };
    let frames = family(
        &mut registry,
        "vswitch_port_frames",
        "Frames, by port and direction (rx: from the port, tx: to it)",
    );
    let bytes = family(
        &mut registry,
        "vswitch_port_bytes",
        "Bytes, by port and direction",
    );
    let drops = family(
        &mut registry,
        "vswitch_port_drops",
        "Frames dropped, by port and reason",
    );
    let segmented = family(
        &mut registry,
        "vswitch_port_software_segmented_frames",
        "Frames to the port cut into segments in software",
    );
    let segments = family(
        &mut registry,
        "vswitch_port_software_segments",
        "Segments made in software for frames to the port",
    );
    let checksums = family(
        &mut registry,
        "vswitch_port_software_checksums",
        "Checksums completed in software for frames to the port",
    );
    let lent_copied = family(
        &mut registry,
        "vswitch_port_lent_copied_frames",
        "Frames whose lent payload was copied into host memory for the port",
    );
    let merges = family(
        &mut registry,
        "vswitch_port_gro_merges",
        "Frames merged into others in software for the port",
    );
    let flood_copies = family(
        &mut registry,
        "vswitch_port_flood_copies",
        "Copies beyond the first of frames from the port flooded to several ports",
    );
    let not_learned = family(
        &mut registry,
        "vswitch_port_not_learned",
        "Source addresses not learned: the port was at its limit",
    );
    let up = Family::<Labels, Gauge>::default();
    registry.register(
        "vswitch_port_up",
        "Whether the port works (1) or is down (0)",
        up.clone(),
    );
    let broken_now = Family::<Labels, Gauge>::default();
    registry.register(
        "vswitch_port_broken_queues",
        "Virtqueues of a vhost-user port's attached guest not served because the guest broke them",
        broken_now.clone(),
    );
    let broken_total = family(
        &mut registry,
        "vswitch_port_queues_broken",
        "Virtqueues of a vhost-user port marked broken since the port was added",
    );
    let last_error = Family::<Labels, Gauge>::default();
    registry.register(
        "vswitch_port_last_error",
        "The last problem with a vhost-user port's connection or rings, in the error label",
        last_error.clone(),
    );
    let worker_frames = family(
        &mut registry,
        "vswitch_worker_frames",
        "Frames a worker forwarded or dropped",
    );
    let handed_off = family(
        &mut registry,
        "vswitch_worker_handed_off",
        "Frames a worker handed to the worker of their flow",
    );
    let sent = family(&mut registry, "vswitch_worker_sent", "Frames a worker sent");
    let busy = Family::<Labels, Counter<f64, AtomicU64>>::default();
    registry.register(
        "vswitch_worker_busy_seconds",
        "Time a worker spent in rounds that handled frames",
        busy.clone(),
    );
    let learned = Gauge::<i64>::default();
    registry.register(
        "vswitch_learned_addresses",
        "Learned addresses",
        learned.clone(),
    );

    for p in &stats.ports {
        let port = p.name.as_str();
        for (direction, f, b) in [
            ("rx", p.rx_frames, p.rx_bytes),
            ("tx", p.tx_frames, p.tx_bytes),
        ] {
            let l = labels(&[("port", port), ("direction", direction)]);
            frames.get_or_create(&l).inc_by(f);
            bytes.get_or_create(&l).inc_by(b);
        }
        for reason in vswitch::DropReason::ALL {
            let count = p.drops.get(reason.name()).copied().unwrap_or(0);
            drops
                .get_or_create(&labels(&[("port", port), ("reason", reason.name())]))
                .inc_by(count);
        }
        let l = labels(&[("port", port)]);
        segmented.get_or_create(&l).inc_by(p.sw_segmented_frames);
        segments.get_or_create(&l).inc_by(p.sw_segments);
        checksums.get_or_create(&l).inc_by(p.sw_checksums);
        merges.get_or_create(&l).inc_by(p.gro_merges);
        lent_copied.get_or_create(&l).inc_by(p.lent_copied_frames);
        flood_copies.get_or_create(&l).inc_by(p.flood_copies);
        not_learned.get_or_create(&l).inc_by(p.not_learned);
        up.get_or_create(&l).set(i64::from(p.state == "up"));
        if let Some(rings) = &p.vhost_user {
            broken_now
                .get_or_create(&l)
                .set(i64::try_from(rings.broken_now.len()).unwrap_or(i64::MAX));
            broken_total.get_or_create(&l).inc_by(rings.broken_queues);
            if let Some(error) = &rings.last_error {
                last_error
                    .get_or_create(&labels(&[("port", port), ("error", error)]))
                    .set(1);
            }
        }
    }
    for w in &stats.workers {
        let index = w.index.to_string();
        let l = labels(&[("worker", &index)]);
        worker_frames.get_or_create(&l).inc_by(w.frames);
        handed_off.get_or_create(&l).inc_by(w.handed_off);
        sent.get_or_create(&l).inc_by(w.sent);
        busy.get_or_create(&l).inc_by(w.busy_ns as f64 / 1e9);
    }
    learned.set(i64::try_from(stats.learned_addresses).unwrap_or(i64::MAX));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// The HTTP endpoint. Dropping it stops it.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` and serves `controller`'s counters until dropped.
    pub fn start(
        addr: SocketAddr,
        controller: Arc<Controller>,
    ) -> Result<MetricsServer, MetricsError> {
        let error = |source| MetricsError { addr, source };
        let listener = TcpListener::bind(addr).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let local = listener.local_addr().map_err(error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("vswitch-metrics".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                if let Err(err) = serve(stream, &controller) {
                                    tracing::debug!("metrics request failed: {err}");
                                }
                            }
                            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                                thread::sleep(Duration::from_millis(20));
                            }
                            Err(err) => {
                                tracing::warn!("metrics accept failed: {err}");
                                thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })
                .map_err(error)?
        };
        tracing::info!(addr = %local, "metrics served at http://{local}/metrics");
        Ok(MetricsServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one HTTP request: the exposition for `GET /metrics`, 404 else.
fn serve(mut stream: TcpStream, controller: &Controller) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&request);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            let stats = controller.stats(None).unwrap_or_default();
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                encode_stats(&stats),
            )
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "the metrics are at /metrics\n".to_string(),
            )
        };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::protocol::{PortCounters, VhostUserView, WorkerCounters};

    #[test]
    fn every_counter_is_in_the_exposition() {
        let stats = StatsView {
            uptime_ms: 1000,
            ports: vec![PortCounters {
                name: "tap0".into(),
                state: "up".into(),
                rx_frames: 7,
                rx_bytes: 700,
                tx_frames: 3,
                tx_bytes: 300,
                drops: [("no_destination".to_string(), 2)].into(),
                sw_segmented_frames: 1,
                sw_segments: 45,
                flood_copies: 4,
                ..PortCounters::default()
            }],
            workers: vec![WorkerCounters {
                index: 0,
                frames: 10,
                busy_ns: 1_500_000_000,
                ..WorkerCounters::default()
            }],
            learned_addresses: 2,
        };
        let text = encode_stats(&stats);
        for line in [
            "# TYPE vswitch_port_frames counter",
            r#"vswitch_port_frames_total{port="tap0",direction="rx"} 7"#,
            r#"vswitch_port_bytes_total{port="tap0",direction="tx"} 300"#,
            r#"vswitch_port_software_segmented_frames_total{port="tap0"} 1"#,
            r#"vswitch_port_drops_total{port="tap0",reason="no_destination"} 2"#,
            r#"vswitch_port_drops_total{port="tap0",reason="bad_gso_size"} 0"#,
            r#"vswitch_port_software_segments_total{port="tap0"} 45"#,
            r#"vswitch_port_flood_copies_total{port="tap0"} 4"#,
            r#"vswitch_port_up{port="tap0"} 1"#,
            r#"vswitch_worker_frames_total{worker="0"} 10"#,
            r#"vswitch_worker_busy_seconds_total{worker="0"} 1.5"#,
            "vswitch_learned_addresses 2",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(
            !text.contains("vswitch_port_broken_queues{"),
            "only vhost-user ports have rings to break"
        );
    }

    #[test]
    fn quotes_in_an_error_or_a_port_name_stay_one_label() {
        let stats = StatsView {
            ports: vec![PortCounters {
                name: r#"vm"0\"#.into(),
                state: "down".into(),
                vhost_user: Some(VhostUserView {
                    broken_now: Vec::new(),
                    broken_queues: 2,
                    last_error: Some("connection ended: \"bad\" \\ message\nagain".into()),
                }),
                ..PortCounters::default()
            }],
            ..StatsView::default()
        };
        let text = encode_stats(&stats);
        for line in [
            r#"vswitch_port_broken_queues{port="vm\"0\\"} 0"#,
            r#"vswitch_port_queues_broken_total{port="vm\"0\\"} 2"#,
            r#"vswitch_port_last_error{port="vm\"0\\",error="connection ended: \"bad\" \\ message\nagain"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
