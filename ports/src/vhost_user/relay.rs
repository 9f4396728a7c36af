//! The frontend's connection relayed to the vhost-user handler, message by
//! message, to reconcile one ordering difference between QEMU and the
//! rust-vmm `vhost` crate.
//!
//! QEMU's virtio-net enables a queue pair's rings
//! (`VHOST_USER_SET_VRING_ENABLE`) as soon as the guest acknowledges its
//! features, and only sends those features to the backend
//! (`VHOST_USER_SET_FEATURES`) when the device starts. The `vhost` crate
//! reads the specification's "should be sent only when
//! VHOST_USER_F_PROTOCOL_FEATURES has been negotiated" strictly, refuses
//! the early request and drops the connection. The relay holds such a
//! request back: it answers it when the frontend asked for an answer
//! (`REPLY_ACK`), and hands it to the handler right after the features,
//! where it is valid. QEMU repeats the request after the features anyway,
//! so a ring's state ends the same either way. Every other message passes
//! unchanged, with the file descriptors that came with it.
//!
//! The `vhost` crate does not know `VHOST_USER_NET_SET_MTU` either (it
//! ends the connection on it): the relay answers that request itself,
//! handing the MTU to the port, and the handler never sees it.
//!
//! The relay also bounds what a frontend can make the switch read: a
//! message longer than the protocol's largest is refused and ends the
//! connection. So does a memory region that extends past the end of the
//! file that comes with it (`VHOST_USER_SET_MEM_TABLE`,
//! `VHOST_USER_ADD_MEM_REG`): mapping such a region succeeds, but the first
//! access beyond the file kills the process with SIGBUS, and the handler
//! reads a ring's index as soon as the ring's address is set.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::sys;

/// `request`, `flags`, `size`: three little-endian `u32`s.
const HEADER_LEN: usize = 12;

/// Longest message body accepted. The longest the protocol defines is a
/// memory table of 8 regions (8 + 8 × 32 bytes); configuration space
/// messages carry at most 256 bytes beside their own header.
const MAX_BODY: usize = 4096;

/// Most file descriptors one message carries (a memory table's regions).
const MAX_FDS: usize = 32;

const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const ADD_MEM_REG: u32 = 37;
const RESET_OWNER: u32 = 4;
const SET_VRING_ENABLE: u32 = 18;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const NET_SET_MTU: u32 = 20;
const RESET_DEVICE: u32 = 34;

const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// One protocol message and the descriptors that came with it.
struct Message {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn field(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.header[at],
            self.header[at + 1],
            self.header[at + 2],
            self.header[at + 3],
        ])
    }

    fn request(&self) -> u32 {
        self.field(0)
    }

    fn flags(&self) -> u32 {
        self.field(4)
    }

    fn set_flags(&mut self, flags: u32) {
        self.header[4..8].copy_from_slice(&flags.to_le_bytes());
    }

    /// Reads one message; `None` when the peer closed the connection
    /// between messages.
    fn read(sock: &UnixStream) -> io::Result<Option<Message>> {
        let mut header = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        let got = sys::recv_with_fds(sock, &mut header, MAX_FDS, &mut fds)?;
        if got == 0 {
            return Ok(None);
        }
        let mut reader = sock;
        reader.read_exact(&mut header[got..])?;
        let mut message = Message {
            header,
            body: Vec::new(),
            fds,
        };
        let size = message.field(8) as usize;
        if size > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "vhost-user message {}: expected a body of at most {MAX_BODY} bytes, found {size}",
                    message.request()
                ),
            ));
        }
        message.body.resize(size, 0);
        reader.read_exact(&mut message.body)?;
        Ok(Some(message))
    }

    fn write(&self, sock: &UnixStream) -> io::Result<()> {
        let fds: Vec<_> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let total = HEADER_LEN + self.body.len();
        let sent = sock
            .send_with_fds(&[&self.header[..], &self.body[..]], &fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if sent < total {
            // The descriptors went with the first bytes; the rest follows.
            let mut rest = Vec::with_capacity(total - sent);
            rest.extend_from_slice(&self.header);
            rest.extend_from_slice(&self.body);
            let mut writer = sock;
            writer.write_all(&rest[sent..])?;
        }
        Ok(())
    }

    /// The `REPLY_ACK` answer to this request: `status` 0 for success,
    /// anything else for failure.
    fn ack(&self, status: u64) -> Message {
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(&self.request().to_le_bytes());
        header[4..8].copy_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
        header[8..12].copy_from_slice(&8u32.to_le_bytes());
        Message {
            header,
            body: status.to_le_bytes().to_vec(),
            fds: Vec::new(),
        }
    }

    /// The body as one little-endian `u64` (`VhostUserU64`), if it is one.
    fn u64_body(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.body.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// What the relay does with `VHOST_USER_NET_SET_MTU`: takes the MTU the
/// frontend gives the guest, or refuses it with the reason.
pub(super) type SetMtu = Arc<dyn Fn(u64) -> Result<(), String> + Send + Sync>;

/// What the relay tells the port besides relaying: the MTU requests it
/// answers, and each ring enabled or disabled as the handler gets the
/// request (the `vhost` crate keeps that state to itself).
#[derive(Clone)]
pub(super) struct Hooks {
    /// Answers `VHOST_USER_NET_SET_MTU`.
    pub set_mtu: SetMtu,
    /// Told (ring index, enabled) for each `VHOST_USER_SET_VRING_ENABLE`
    /// handed to the handler.
    pub ring_enabled: Arc<dyn Fn(u32, bool) + Send + Sync>,
    /// Told the ring index of each `VHOST_USER_GET_VRING_BASE` (the ring
    /// stops) before the handler gets it, and returns when the device is
    /// done with the ring's buffers.
    pub ring_stopping: Arc<dyn Fn(u32) + Send + Sync>,
    /// Told the ring index of each `VHOST_USER_SET_VRING_BASE` (the ring
    /// starts from a given index) before the handler gets it.
    pub ring_starting: Arc<dyn Fn(u32) + Send + Sync>,
}

/// A running relay; dropping it closes both connections.
pub(super) struct Relay {
    frontend: UnixStream,
    handler: UnixStream,
    threads: Vec<JoinHandle<()>>,
    /// Why the relay ended the connection itself (a message it refused, a
    /// socket error), as opposed to a peer closing; the first such error.
    error: Arc<Mutex<Option<String>>>,
}

impl Relay {
    /// Relays between `frontend` (the VMM's connection) and `handler` (a
    /// connection to the vhost-user handler) until either side closes,
    /// telling `hooks` what it must know.
    pub(super) fn start(
        frontend: UnixStream,
        handler: UnixStream,
        hooks: Hooks,
    ) -> io::Result<Relay> {
        let error = Arc::new(Mutex::new(None));
        let on_error = {
            let error = error.clone();
            move |what: &str, e: io::Error| {
                let mut slot = error.lock().unwrap_or_else(PoisonError::into_inner);
                slot.get_or_insert_with(|| format!("{what}: {e}"));
            }
        };
        // Replies to the frontend come from both directions' threads: one
        // writer at a time, a whole message each.
        let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
        let inbound = {
            let from = frontend.try_clone()?;
            let to = handler.try_clone()?;
            let to_frontend = to_frontend.clone();
            let on_error = on_error.clone();
            thread::Builder::new()
                .name("vhost-user relay in".into())
                .spawn(move || {
                    if let Err(e) = relay_requests(&from, &to, &to_frontend, &hooks) {
                        on_error("relaying the frontend's requests", e);
                    }
                    close(&from, &to);
                })?
        };
        let outbound = {
            let from = handler.try_clone()?;
            let to_frontend = to_frontend.clone();
            let frontend = frontend.try_clone()?;
            thread::Builder::new()
                .name("vhost-user relay out".into())
                .spawn(move || {
                    if let Err(e) = relay_replies(&from, &to_frontend) {
                        on_error("relaying the handler's replies", e);
                    }
                    close(&from, &frontend);
                })?
        };
        Ok(Relay {
            frontend,
            handler,
            threads: vec![inbound, outbound],
            error,
        })
    }

    /// Ends both connections and returns why the relay ended one itself,
    /// if it did.
    pub(super) fn finish(mut self) -> Option<String> {
        self.close_and_join();
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn close_and_join(&mut self) {
        close(&self.frontend, &self.handler);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

fn close(a: &UnixStream, b: &UnixStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

/// One memory region of `VHOST_USER_SET_MEM_TABLE` or
/// `VHOST_USER_ADD_MEM_REG`: guest address, size, frontend address, offset
/// into its file, each a little-endian `u64`.
const REGION_LEN: usize = 32;

/// Checks that every memory region a message carries lies inside the file
/// that came with it.
fn check_regions(message: &Message) -> io::Result<()> {
    let regions: Vec<&[u8]> = match message.request() {
        SET_MEM_TABLE => {
            // u32 count, u32 padding, then the regions.
            let count = message
                .body
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            let table = message.body.get(8..).unwrap_or_default();
            table.chunks_exact(REGION_LEN).take(count).collect()
        }
        // u64 padding, then one region.
        ADD_MEM_REG => message.body.get(8..8 + REGION_LEN).into_iter().collect(),
        _ => return Ok(()),
    };
    for (index, (region, fd)) in regions.iter().zip(&message.fds).enumerate() {
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&region[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let (size, offset) = (field(8), field(24));
        let file_len = std::fs::File::from(fd.try_clone()?).metadata()?.len();
        let end = offset.checked_add(size);
        if end.is_none_or(|end| end > file_len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "vhost-user message {}: memory region {index} ({size} bytes at offset \
                     {offset}) goes past the end of its file ({file_len} bytes)",
                    message.request()
                ),
            ));
        }
    }
    Ok(())
}

/// The handler-to-frontend direction: every message unchanged.
fn relay_replies(from: &UnixStream, to_frontend: &Mutex<UnixStream>) -> io::Result<()> {
    while let Some(message) = Message::read(from)? {
        let to = to_frontend.lock().unwrap_or_else(PoisonError::into_inner);
        message.write(&to)?;
    }
    Ok(())
}

/// The frontend-to-handler direction, holding ring enables back until the
/// features are set.
fn relay_requests(
    from: &UnixStream,
    to: &UnixStream,
    to_frontend: &Mutex<UnixStream>,
    hooks: &Hooks,
) -> io::Result<()> {
    // A ring enable's state goes to the port, and the request to the
    // handler (the port hears first, so it knows once the handler does).
    let enable = |message: &Message| -> io::Result<()> {
        // VhostUserVringState: the ring's index, then 0 or 1.
        if let Some(state) = message.u64_body() {
            (hooks.ring_enabled)(state as u32, (state >> 32) != 0);
        }
        message.write(to)
    };
    let mut features_set = false;
    let mut held: Vec<Message> = Vec::new();
    while let Some(mut message) = Message::read(from)? {
        check_regions(&message)?;
        match message.request() {
            SET_VRING_ENABLE if !features_set => {
                if message.flags() & FLAG_NEED_REPLY != 0 {
                    let ack = message.ack(0);
                    ack.write(&to_frontend.lock().unwrap_or_else(PoisonError::into_inner))?;
                    message.set_flags(message.flags() & !FLAG_NEED_REPLY);
                }
                held.push(message);
                continue;
            }
            SET_VRING_ENABLE => {
                enable(&message)?;
                continue;
            }
            SET_FEATURES => {
                message.write(to)?;
                features_set = true;
                for message in held.drain(..) {
                    enable(&message)?;
                }
                continue;
            }
            NET_SET_MTU => {
                let Some(mtu) = message.u64_body() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "VHOST_USER_NET_SET_MTU: expected an 8-byte body, found {} bytes",
                            message.body.len()
                        ),
                    ));
                };
                let status = u64::from((hooks.set_mtu)(mtu).is_err());
                if message.flags() & FLAG_NEED_REPLY != 0 {
                    let ack = message.ack(status);
                    ack.write(&to_frontend.lock().unwrap_or_else(PoisonError::into_inner))?;
                }
                continue;
            }
            RESET_OWNER | RESET_DEVICE => {
                features_set = false;
                held.clear();
            }
            // VhostUserVringState: the ring's index, then the base.
            GET_VRING_BASE => {
                if let Some(state) = message.u64_body() {
                    (hooks.ring_stopping)(state as u32);
                }
            }
            SET_VRING_BASE => {
                if let Some(state) = message.u64_body() {
                    (hooks.ring_starting)(state as u32);
                }
            }
            _ => {}
        }
        message.write(to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn hooks(set_mtu: SetMtu) -> Hooks {
        Hooks {
            set_mtu,
            ring_enabled: Arc::new(|_, _| {}),
            ring_stopping: Arc::new(|_| {}),
            ring_starting: Arc::new(|_| {}),
        }
    }

    fn any_mtu() -> Hooks {
        hooks(Arc::new(|_| Ok(())))
    }

    /// A relay between a frontend's end (`vmm`) and a handler's end
    /// (`backend`), with `hooks`.
    fn relayed(hooks: Hooks) -> (UnixStream, UnixStream, Relay) {
        let (vmm, frontend) = UnixStream::pair().unwrap();
        let (handler, backend) = UnixStream::pair().unwrap();
        let relay = Relay::start(frontend, handler, hooks).unwrap();
        (vmm, backend, relay)
    }

    fn read_message(sock: &UnixStream) -> (u32, u32, Vec<u8>) {
        let m = Message::read(sock).unwrap().unwrap();
        (m.request(), m.flags(), m.body)
    }

    #[test]
    fn an_early_ring_enable_is_answered_and_follows_the_features() {
        let (mut vmm, backend, _relay) = relayed(any_mtu());
        let enable = [0u8, 0, 0, 0, 1, 0, 0, 0];
        vmm.write_all(&message(1, FLAG_VERSION_1, &[])).unwrap(); // GET_FEATURES
        vmm.write_all(&message(
            SET_VRING_ENABLE,
            FLAG_VERSION_1 | FLAG_NEED_REPLY,
            &enable,
        ))
        .unwrap();
        // The frontend gets its answer at once...
        assert_eq!(
            read_message(&vmm),
            (SET_VRING_ENABLE, FLAG_VERSION_1 | FLAG_REPLY, vec![0; 8])
        );
        vmm.write_all(&message(SET_FEATURES, FLAG_VERSION_1, &[7; 8]))
            .unwrap();
        // ... and the handler sees the request after the features, with no
        // answer asked for.
        assert_eq!(read_message(&backend), (1, FLAG_VERSION_1, vec![]));
        assert_eq!(
            read_message(&backend),
            (SET_FEATURES, FLAG_VERSION_1, vec![7; 8])
        );
        assert_eq!(
            read_message(&backend),
            (SET_VRING_ENABLE, FLAG_VERSION_1, enable.to_vec())
        );
        // Replies pass back unchanged.
        let mut backend_w = &backend;
        backend_w
            .write_all(&message(1, FLAG_VERSION_1 | FLAG_REPLY, &[9; 8]))
            .unwrap();
        assert_eq!(
            read_message(&vmm),
            (1, FLAG_VERSION_1 | FLAG_REPLY, vec![9; 8])
        );
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        let (vmm, backend, _relay) = relayed(any_mtu());
        let file = std::fs::File::open("/dev/null").unwrap();
        let bytes = message(5, FLAG_VERSION_1, &[1, 2, 3, 4]); // SET_MEM_TABLE-like
        vmm.send_with_fds(&[&bytes[..]], &[file.as_raw_fd()])
            .unwrap();
        let got = Message::read(&backend).unwrap().unwrap();
        assert_eq!(
            (got.request(), got.body.clone(), got.fds.len()),
            (5, vec![1, 2, 3, 4], 1)
        );
    }

    #[test]
    fn an_oversized_message_ends_the_connection() {
        let (mut vmm, backend, relay) = relayed(any_mtu());
        let mut header = message(5, FLAG_VERSION_1, &[]);
        header[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
        vmm.write_all(&header).unwrap();
        assert!(
            Message::read(&backend).unwrap().is_none(),
            "closed, nothing relayed"
        );
        let why = relay.finish().expect("the relay says why it closed");
        assert!(why.contains("at most 4096 bytes"), "{why}");
    }

    #[test]
    fn the_mtu_is_answered_here_and_never_reaches_the_handler() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let set_mtu: SetMtu = {
            let seen = seen.clone();
            Arc::new(move |mtu| {
                seen.lock().unwrap().push(mtu);
                if mtu <= 4000 {
                    Ok(())
                } else {
                    Err(format!("{mtu} is above 4000"))
                }
            })
        };
        let (mut vmm, backend, _relay) = relayed(hooks(set_mtu));
        let ask = |mtu: u64| {
            message(
                NET_SET_MTU,
                FLAG_VERSION_1 | FLAG_NEED_REPLY,
                &mtu.to_le_bytes(),
            )
        };
        vmm.write_all(&ask(4000)).unwrap();
        assert_eq!(
            read_message(&vmm),
            (
                NET_SET_MTU,
                FLAG_VERSION_1 | FLAG_REPLY,
                0u64.to_le_bytes().to_vec()
            )
        );
        vmm.write_all(&ask(9000)).unwrap();
        let (request, flags, body) = read_message(&vmm);
        assert_eq!((request, flags), (NET_SET_MTU, FLAG_VERSION_1 | FLAG_REPLY));
        assert_ne!(
            body,
            0u64.to_le_bytes().to_vec(),
            "refused: a non-zero status"
        );
        // Without NEED_REPLY there is no answer; the handler sees only
        // what follows.
        vmm.write_all(&message(
            NET_SET_MTU,
            FLAG_VERSION_1,
            &1500u64.to_le_bytes(),
        ))
        .unwrap();
        vmm.write_all(&message(1, FLAG_VERSION_1, &[])).unwrap();
        assert_eq!(read_message(&backend), (1, FLAG_VERSION_1, vec![]));
        assert_eq!(*seen.lock().unwrap(), vec![4000, 9000, 1500]);
    }

    #[test]
    fn an_mtu_message_of_the_wrong_size_ends_the_connection() {
        let (mut vmm, backend, relay) = relayed(any_mtu());
        vmm.write_all(&message(NET_SET_MTU, FLAG_VERSION_1, &[0; 4]))
            .unwrap();
        assert!(Message::read(&backend).unwrap().is_none());
        let why = relay.finish().expect("the relay says why");
        assert!(why.contains("8-byte body"), "{why}");
    }

    #[test]
    fn ring_enables_reach_the_port_as_the_handler_gets_them() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hooks = Hooks {
            set_mtu: Arc::new(|_| Ok(())),
            ring_enabled: {
                let seen = seen.clone();
                Arc::new(move |index, on| seen.lock().unwrap().push((index, on)))
            },
            ring_stopping: Arc::new(|_| {}),
            ring_starting: Arc::new(|_| {}),
        };
        let (mut vmm, backend, _relay) = relayed(hooks);
        let state = |index: u32, on: u32| {
            let mut body = index.to_le_bytes().to_vec();
            body.extend_from_slice(&on.to_le_bytes());
            message(SET_VRING_ENABLE, FLAG_VERSION_1, &body)
        };
        // Held until the features: the port hears of it when the handler does.
        vmm.write_all(&state(2, 1)).unwrap();
        vmm.write_all(&message(SET_FEATURES, FLAG_VERSION_1, &[0; 8]))
            .unwrap();
        vmm.write_all(&state(3, 1)).unwrap();
        vmm.write_all(&state(2, 0)).unwrap();
        for _ in 0..4 {
            Message::read(&backend).unwrap().unwrap();
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(2, true), (3, true), (2, false)]
        );
    }

    #[test]
    fn a_ring_stops_at_the_port_before_the_handler_hears_of_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hooks = Hooks {
            set_mtu: Arc::new(|_| Ok(())),
            ring_enabled: Arc::new(|_, _| {}),
            ring_stopping: {
                let seen = seen.clone();
                Arc::new(move |index| {
                    // A port that takes its time to be done with the ring:
                    // the handler must still hear of it only afterwards.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    seen.lock().unwrap().push(("stop", index));
                })
            },
            ring_starting: {
                let seen = seen.clone();
                Arc::new(move |index| seen.lock().unwrap().push(("start", index)))
            },
        };
        let (mut vmm, backend, _relay) = relayed(hooks);
        let state = |request: u32, index: u32, num: u32| {
            let mut body = index.to_le_bytes().to_vec();
            body.extend_from_slice(&num.to_le_bytes());
            message(request, FLAG_VERSION_1, &body)
        };
        vmm.write_all(&message(SET_FEATURES, FLAG_VERSION_1, &[0; 8]))
            .unwrap();
        Message::read(&backend).unwrap().unwrap();
        vmm.write_all(&state(GET_VRING_BASE, 3, 0)).unwrap();
        let got = Message::read(&backend).unwrap().unwrap();
        assert_eq!(got.request(), GET_VRING_BASE);
        assert_eq!(*seen.lock().unwrap(), vec![("stop", 3)]);
        vmm.write_all(&state(SET_VRING_BASE, 3, 17)).unwrap();
        let got = Message::read(&backend).unwrap().unwrap();
        assert_eq!(got.request(), SET_VRING_BASE);
        assert_eq!(*seen.lock().unwrap(), vec![("stop", 3), ("start", 3)]);
    }

    /// A file of `len` bytes, as a frontend's guest memory is.
    fn file_of(len: u64) -> std::fs::File {
        let file = unlinked_file();
        file.set_len(len).unwrap();
        file
    }

    fn unlinked_file() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "vhost-user-relay-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }

    fn mem_table(regions: &[(u64, u64)]) -> Vec<u8> {
        let mut body = (regions.len() as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 4]);
        for (i, &(size, offset)) in regions.iter().enumerate() {
            for value in [i as u64 * size, size, 0x7f00_0000_0000, offset] {
                body.extend_from_slice(&value.to_le_bytes());
            }
        }
        message(SET_MEM_TABLE, FLAG_VERSION_1, &body)
    }

    #[test]
    fn memory_regions_inside_their_files_pass() {
        let (vmm, backend, _relay) = relayed(any_mtu());
        let (a, b) = (file_of(0x2_0000), file_of(0x1_0000));
        let bytes = mem_table(&[(0x2_0000, 0), (0x8000, 0x8000)]);
        vmm.send_with_fds(&[&bytes[..]], &[a.as_raw_fd(), b.as_raw_fd()])
            .unwrap();
        let got = Message::read(&backend).unwrap().unwrap();
        assert_eq!((got.request(), got.fds.len()), (SET_MEM_TABLE, 2));
    }

    #[test]
    fn a_memory_region_past_the_end_of_its_file_ends_the_connection() {
        for (size, offset) in [(0x2_0000, 0), (0x1000, 0x1_0000), (u64::MAX, 0x1000)] {
            let (vmm, backend, relay) = relayed(any_mtu());
            let file = file_of(0x1_0000);
            let bytes = mem_table(&[(size, offset)]);
            vmm.send_with_fds(&[&bytes[..]], &[file.as_raw_fd()])
                .unwrap();
            assert!(
                Message::read(&backend).unwrap().is_none(),
                "not relayed: {size:#x} at {offset:#x}"
            );
            let why = relay.finish().expect("the relay says why");
            assert!(why.contains("past the end of its file"), "{why}");
        }
        // The same for a region added at run time.
        let (vmm, backend, relay) = relayed(any_mtu());
        let file = file_of(0x1000);
        let mut body = vec![0u8; 8];
        for value in [0u64, 0x2000, 0x7f00_0000_0000, 0] {
            body.extend_from_slice(&value.to_le_bytes());
        }
        let bytes = message(ADD_MEM_REG, FLAG_VERSION_1, &body);
        vmm.send_with_fds(&[&bytes[..]], &[file.as_raw_fd()])
            .unwrap();
        assert!(Message::read(&backend).unwrap().is_none());
        assert!(relay.finish().unwrap().contains("past the end"));
    }
}
