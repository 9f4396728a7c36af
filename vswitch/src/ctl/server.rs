//! The control socket of `vswitch run`: a Unix stream socket speaking the
//! JSON-lines protocol of [`super::protocol`].
//!
//! # Who may connect
//!
//! The socket is made mode 0600, so only its owner (and root) can connect;
//! with a group (`--ctl-group`) it is mode 0660 and owned by that group.
//! On top of the file mode, every connection's peer credentials
//! (SO_PEERCRED) are read: without a group, a peer whose user is neither
//! this process's nor root is refused; with one, a peer of another user
//! must have the group as its primary group or have passed the file's
//! mode check (membership of a supplementary group), which the kernel
//! already made on connect.

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::protocol::{ErrorView, Request, Response};
use crate::run::controller::Controller;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another switch answers on the path.
    #[error("{path}: another vswitch is listening on this control socket (give another --ctl PATH, or stop that one)")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The socket or its directory could not be made.
    #[error("cannot create the control socket {path}: {source}{hint}")]
    Create {
        /// The socket path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
        /// A hint.
        hint: &'static str,
    },
    /// The group is not known.
    #[error("--ctl-group {group:?}: expected a group name from /etc/group or a number")]
    UnknownGroup {
        /// The group asked for.
        group: String,
    },
}

/// The gid of `group` (a name in /etc/group, or a number).
pub fn group_id(group: &str) -> Result<u32, ServeError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    fs::read_to_string("/etc/group")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                (fields.next() == Some(group))
                    .then(|| fields.nth(1)?.parse().ok())
                    .flatten()
            })
        })
        .ok_or_else(|| ServeError::UnknownGroup {
            group: group.to_string(),
        })
}

/// A listening control socket. Dropping it stops the listener and removes
/// the socket file.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `path` (creating its directory) with the access rules of
    /// the module documentation and serves `controller` until dropped.
    pub fn start(
        path: &Path,
        group: Option<u32>,
        controller: Arc<Controller>,
    ) -> Result<ControlServer, ServeError> {
        let create = |source: io::Error| ServeError::Create {
            path: path.to_path_buf(),
            hint: match source.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (hint: /run/vswitch needs root; give --ctl PATH in a directory you own)"
                }
                _ => "",
            },
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(create)?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // A socket left by a switch that did not stop cleanly.
            fs::remove_file(path).map_err(create)?;
        }
        let listener = UnixListener::bind(path).map_err(create)?;
        let mode = if group.is_some() { 0o660 } else { 0o600 };
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(create)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(create)?;
        }
        listener.set_nonblocking(true).map_err(create)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("vswitch-ctl".into())
                .spawn(move || accept_loop(listener, group, controller, &stop))
                .map_err(create)?
        };
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    group: Option<u32>,
    controller: Arc<Controller>,
    stop: &Arc<AtomicBool>,
) {
    let mut clients: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(reason) = peer_allowed(&stream, group) {
                    tracing::warn!("control connection refused: {reason}");
                    let _ = refuse(stream, &reason);
                    continue;
                }
                let controller = controller.clone();
                let stop = stop.clone();
                match thread::Builder::new()
                    .name("vswitch-ctl-client".into())
                    .spawn(move || serve_client(stream, &controller, &stop))
                {
                    Ok(handle) => clients.push(handle),
                    Err(err) => tracing::warn!("cannot serve a control connection: {err}"),
                }
                clients.retain(|c| !c.is_finished());
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(err) => {
                tracing::warn!("control socket accept failed: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Clients hold the controller: they notice the stop within a read
    // timeout, so the switch can be shut down.
    for client in clients {
        let _ = client.join();
    }
}

/// Whether the peer may use the socket (see the module documentation).
fn peer_allowed(stream: &UnixStream, group: Option<u32>) -> Result<(), String> {
    let peer = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let uid = peer.uid.as_raw();
    let ours = rustix::process::geteuid().as_raw();
    if uid == ours || uid == 0 || group.is_some() {
        Ok(())
    } else {
        Err(format!(
            "peer uid {uid} (pid {}) is not this switch's user {ours}",
            peer.pid.as_raw_nonzero()
        ))
    }
}

fn refuse(mut stream: UnixStream, reason: &str) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let response = Response::Error(ErrorView {
        kind: "refused".into(),
        message: reason.to_string(),
    });
    writeln!(
        stream,
        "{}",
        serde_json::to_string(&response).unwrap_or_default()
    )
}

/// Answers each request line of one connection until the peer closes or
/// the server stops.
fn serve_client(stream: UnixStream, controller: &Controller, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
    {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Acquire) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.last() != Some(&b'\n') => return,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let request = std::mem::take(&mut line);
        let text = String::from_utf8_lossy(&request);
        if text.trim().is_empty() {
            continue;
        }
        let response = answer(controller, &text);
        let text = serde_json::to_string(&response).unwrap_or_default();
        if writeln!(writer, "{text}").is_err() {
            return;
        }
    }
}

/// The response to one request line.
pub fn answer(controller: &Controller, line: &str) -> Response {
    match serde_json::from_str::<Request>(line) {
        Ok(request) => {
            tracing::debug!(?request, "control request");
            controller.handle(request)
        }
        Err(err) => Response::Error(ErrorView {
            kind: "bad-request".into(),
            message: format!("expected one JSON request per line, as {{\"cmd\":\"show\"}}: {err}"),
        }),
    }
}
