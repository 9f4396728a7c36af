//! A hostile vhost-user frontend: every message it sends on the port's
//! socket (request, flags, size field, body, attached descriptors) comes
//! from the fuzzer, through the relay into the vhost-user handler and the
//! port's backend. The invariant: whatever a connection did, the process
//! does not panic, every reply is a well-formed reply, and once the
//! connection is closed the port accepts a new one and answers
//! `VHOST_USER_GET_FEATURES` on it within two seconds.
//!
//! Input: up to 64 messages, each
//!
//! ```text
//! selector  u8   % 48: 1..=44 that request code; 47: the request is the
//!                next u32 LE (any value); 0: kick (write the eventfds
//!                sent so far, bit i of the body selects the i-th, empty
//!                body: all); 45: poke (write body[2..] into the last
//!                memfd sent, at the u16 LE offset body[0..2]); 46: toggle
//!                short memfds (below)
//! control   u8   bit 0: clear NEED_REPLY (set by default, with VERSION)
//!                bit 1: attach descriptors, bits 2-3 say which: a memfd
//!                       of 64 KiB, an eventfd, two memfds, a Unix socket
//!                bit 4: the size field is a u16 LE of its own (a lie,
//!                       possibly above the 4096-byte bound)
//!                bit 5: the flags field is the next byte, as is
//!                bit 6: send the first 4 bytes apart from the rest
//!                bit 7: the body length is a u16 LE instead of a u8
//! [request u32] [flags u8] length (u8 or u16) [size u16] body
//! ```
//!
//! A memfd sent with SET_MEM_TABLE, ADD_MEM_REG or SET_LOG_BASE is made
//! as long as the message says its region (offset plus size) is, so the
//! fuzzer can use large and far-off regions; after a toggle it stays at
//! 64 KiB whatever the message claims, as a frontend that lies about its
//! files would send it.
//!
//! The messages go out one after another; after each one that should be
//! answered the target waits (20 ms at most) for the answer, and every
//! reply is read, so the socket never fills. A connection the port drops
//! ends the input early.
#![no_main]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vswitch_ports::vhost_user::{VhostUserConfig, VhostUserPort};

const MAX_MESSAGES: usize = 64;
const MEMFD_SIZE: u64 = 64 * 1024;
/// How long a message that should be answered waits for its answer.
const REPLY_WAIT: Duration = Duration::from_millis(20);
/// How long a stuck write waits before the input gives up on the
/// connection (the check afterwards decides whether that is a bug).
const WRITE_WAIT: Duration = Duration::from_secs(1);
/// How long the port has to tear the connection down and answer a new one.
const CHECK_WAIT: Duration = Duration::from_secs(2);
/// How long the target waits for the check connection's threads to end.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

const HEADER_LEN: usize = 12;
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const RESET_OWNER: u32 = 4;
const SET_MEM_TABLE: u32 = 5;
const SET_LOG_BASE: u32 = 6;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const RESET_DEVICE: u32 = 34;
const ADD_MEM_REG: u32 = 37;
/// Requests the backend answers whether or not a reply was asked for.
const ANSWERED: [u32; 12] = [1, 6, 11, 15, 17, 24, 28, 31, 36, 40, 41, 44];

const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

struct Fixture {
    port: Arc<VhostUserPort>,
    dir: PathBuf,
    socket: PathBuf,
    /// Threads of the process while no connection is served.
    idle_threads: usize,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        // A Rust program's runtime ignores SIGPIPE, and so would any
        // embedder of the port; libFuzzer's own main does not.
        // SAFETY: installs the default "ignore" disposition, no handler.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!(
            "vswitch-fuzz-vhost-user-messages-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let socket = dir.join("port.sock");
        let mut config = VhostUserConfig::new("fuzz", &socket).queue_pairs(2);
        // After a connection that ended in an error the port waits this
        // long before accepting the next; the default 200 ms would make
        // nearly every input that slow.
        config.reconnect_interval = Duration::from_millis(1);
        let port = VhostUserPort::start(config).expect("the port starts");
        let idle_threads = threads();
        // At exit: stop the port, remove the sockets.
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(clean_up) };
        Fixture {
            port,
            dir,
            socket,
            idle_threads,
        }
    })
}

extern "C" fn clean_up() {
    if let Some(fixture) = FIXTURE.get() {
        fixture.port.shutdown();
        let _ = std::fs::remove_dir_all(&fixture.dir);
    }
}

/// The fuzzer's bytes, read front to back; past the end everything is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | u16::from(self.byte()) << 8
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

enum Step<'a> {
    Kick(&'a [u8]),
    Poke(&'a [u8]),
    ShortMemfds,
    Send {
        request: u32,
        flags: u32,
        size: u32,
        body: &'a [u8],
        fd_kind: Option<u8>,
        split: bool,
    },
}

fn next_step<'a>(input: &mut Input<'a>) -> Step<'a> {
    let selector = input.byte() % 48;
    let control = input.byte();
    let request = match selector {
        47 => input.u32(),
        code => u32::from(code),
    };
    let flags = if control & 0x20 != 0 {
        u32::from(input.byte())
    } else if control & 0x01 != 0 {
        FLAG_VERSION
    } else {
        FLAG_VERSION | FLAG_NEED_REPLY
    };
    let len = if control & 0x80 != 0 {
        usize::from(input.u16())
    } else {
        usize::from(input.byte())
    };
    let size = (control & 0x10 != 0).then(|| u32::from(input.u16()));
    let body = input.bytes(len);
    match selector {
        0 => Step::Kick(body),
        45 => Step::Poke(body),
        46 => Step::ShortMemfds,
        _ => Step::Send {
            request,
            flags,
            size: size.unwrap_or(body.len() as u32),
            body,
            fd_kind: (control & 0x02 != 0).then_some((control >> 2) & 3),
            split: control & 0x40 != 0,
        },
    }
}

/// One connection of the hostile frontend.
struct Session {
    stream: UnixStream,
    /// Reply bytes not yet parsed into whole messages.
    pending: Vec<u8>,
    replies: usize,
    open: bool,
    /// Everything sent as a descriptor (and the other ends of sockets),
    /// kept open until the input ends.
    kept: Vec<OwnedFd>,
    sockets: Vec<UnixStream>,
    memfd: Option<RawFd>,
    eventfds: Vec<RawFd>,
    /// Memfds stay at `MEMFD_SIZE` whatever the message claims.
    short_memfds: bool,
    /// What the target believes the handler knows, to guess whether a
    /// request will be answered (a wrong guess only costs a wait).
    asked_features: bool,
    reply_ack: bool,
    features_set: bool,
}

impl Session {
    fn new(stream: UnixStream) -> Session {
        stream.set_nonblocking(true).expect("a non-blocking socket");
        Session {
            stream,
            pending: Vec::new(),
            replies: 0,
            open: true,
            kept: Vec::new(),
            sockets: Vec::new(),
            memfd: None,
            eventfds: Vec::new(),
            short_memfds: false,
            asked_features: false,
            reply_ack: false,
            features_set: false,
        }
    }

    fn memfd(&mut self) -> RawFd {
        // SAFETY: the name is NUL-terminated; the result is checked.
        let fd = unsafe { libc::memfd_create(c"fuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(fd.try_clone().expect("dup"))
            .set_len(MEMFD_SIZE)
            .expect("ftruncate");
        let raw = fd.as_raw_fd();
        self.kept.push(fd);
        self.memfd = Some(raw);
        raw
    }

    fn eventfd(&mut self) -> RawFd {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        self.kept.push(fd);
        self.eventfds.push(raw);
        raw
    }

    fn descriptors(&mut self, kind: u8) -> Vec<RawFd> {
        match kind {
            0 => vec![self.memfd()],
            1 => vec![self.eventfd()],
            2 => vec![self.memfd(), self.memfd()],
            _ => {
                let (ours, theirs) = UnixStream::pair().expect("a socket pair");
                let raw = theirs.as_raw_fd();
                self.sockets.push(ours);
                self.sockets.push(theirs);
                vec![raw]
            }
        }
    }

    fn kick(&self, mask: &[u8]) {
        for (i, &fd) in self.eventfds.iter().enumerate() {
            let chosen =
                mask.is_empty() || mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
            if chosen {
                // SAFETY: `fd` is an eventfd this session keeps open; the
                // buffer is 8 bytes, as an eventfd write takes.
                unsafe { libc::write(fd, 1u64.to_ne_bytes().as_ptr().cast(), 8) };
            }
        }
    }

    fn poke(&self, body: &[u8]) {
        let (Some(fd), [lo, hi, data @ ..]) = (self.memfd, body) else {
            return;
        };
        let offset = u64::from(u16::from_le_bytes([*lo, *hi]));
        let room = (MEMFD_SIZE - offset) as usize;
        // SAFETY: borrows a descriptor this session keeps open.
        let file = File::from(
            unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .expect("dup"),
        );
        let _ = file.write_all_at(&data[..data.len().min(room)], offset);
    }

    fn send(
        &mut self,
        request: u32,
        flags: u32,
        size: u32,
        body: &[u8],
        fds: &[RawFd],
        split: bool,
    ) {
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.extend_from_slice(&request.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&size.to_le_bytes());
        bytes.extend_from_slice(body);
        let first = if split { 4 } else { bytes.len() };
        let deadline = Instant::now() + WRITE_WAIT;
        let mut sent = 0;
        // The descriptors go with the first bytes; the rest follows.
        while sent < first && self.open {
            match self
                .stream
                .send_with_fds(&[&bytes[sent..first]], if sent == 0 { fds } else { &[] })
            {
                Ok(n) => sent += n,
                Err(e) if e.errno() == libc::EAGAIN || e.errno() == libc::EINTR => {
                    self.wait_writable(deadline)
                }
                Err(_) => self.open = false,
            }
        }
        while sent < bytes.len() && self.open {
            match (&self.stream).write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    self.wait_writable(deadline)
                }
                Err(_) => self.open = false,
            }
        }
    }

    /// Waits for room in the socket, reading replies meanwhile; gives up on
    /// the connection at `deadline`.
    fn wait_writable(&mut self, deadline: Instant) {
        self.drain();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.open = false;
            return;
        }
        poll(
            self.stream.as_raw_fd(),
            libc::POLLOUT,
            left.min(Duration::from_millis(5)),
        );
    }

    /// Reads what replies have arrived, without waiting.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while self.open {
            match (&self.stream).read(&mut buf) {
                Ok(0) => self.open = false,
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    self.parse_replies();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => self.open = false,
            }
        }
    }

    fn parse_replies(&mut self) {
        while self.pending.len() >= HEADER_LEN {
            let field =
                |at: usize| u32::from_le_bytes(self.pending[at..at + 4].try_into().unwrap());
            let (request, flags, size) = (field(0), field(4), field(8));
            assert!(
                flags & 0x7 == FLAG_VERSION | FLAG_REPLY && size as usize <= 4096,
                "a malformed reply: request {request}, flags {flags:#x}, size {size}"
            );
            let total = HEADER_LEN + size as usize;
            if self.pending.len() < total {
                return;
            }
            self.pending.drain(..total);
            self.replies += 1;
        }
    }

    /// Waits until `count` replies have arrived, the connection closed or
    /// `REPLY_WAIT` passed.
    fn wait_replies(&mut self, count: usize) {
        let deadline = Instant::now() + REPLY_WAIT;
        loop {
            self.drain();
            let left = deadline.saturating_duration_since(Instant::now());
            if self.replies >= count || !self.open || left.is_zero() {
                return;
            }
            poll(self.stream.as_raw_fd(), libc::POLLIN, left);
        }
    }

    fn step(&mut self, step: Step<'_>) {
        match step {
            Step::Kick(mask) => self.kick(mask),
            Step::Poke(body) => self.poke(body),
            Step::ShortMemfds => self.short_memfds = !self.short_memfds,
            Step::Send {
                request,
                flags,
                size,
                body,
                fd_kind,
                split,
            } => {
                let fds = fd_kind
                    .map(|kind| self.descriptors(kind))
                    .unwrap_or_default();
                if !self.short_memfds && matches!(fd_kind, Some(0 | 2)) {
                    grow_memfds(&fds, request, body);
                }
                let answered = self.answered(request, flags, size, body);
                let before = self.replies;
                self.send(request, flags, size, body, &fds, split);
                if answered {
                    self.wait_replies(before + 1);
                } else {
                    self.drain();
                }
            }
        }
    }

    /// Whether the port should answer this request, as far as the target
    /// can tell; updates what the target believes was negotiated.
    fn answered(&mut self, request: u32, flags: u32, size: u32, body: &[u8]) -> bool {
        let whole = size as usize == body.len();
        let need_reply = flags & FLAG_NEED_REPLY != 0;
        // The relay answers an early ring enable itself.
        let relay_answers = request == SET_VRING_ENABLE && need_reply && !self.features_set;
        match request {
            GET_FEATURES => self.asked_features = true,
            SET_FEATURES => self.features_set = true,
            RESET_OWNER | RESET_DEVICE => self.features_set = false,
            // The handler answers this one already as it asks.
            SET_PROTOCOL_FEATURES if body.len() >= 8 => {
                let value = u64::from_le_bytes(body[..8].try_into().unwrap());
                self.reply_ack = self.asked_features && value & PROTOCOL_F_REPLY_ACK != 0;
            }
            _ => {}
        }
        whole && (ANSWERED.contains(&request) || relay_answers || (need_reply && self.reply_ack))
    }
}

/// Makes each memfd as long as the region the message claims for it
/// (`mmap_offset + memory_size`), where the message says.
fn grow_memfds(fds: &[RawFd], request: u32, body: &[u8]) {
    let u64_at = |at: usize| {
        body.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // A region: guest address, size, user address, mmap offset.
    let region_end = |at: usize| Some(u64_at(at + 24)?.checked_add(u64_at(at + 8)?)?);
    let ends: Vec<Option<u64>> = match request {
        SET_MEM_TABLE => (0..fds.len()).map(|i| region_end(8 + 32 * i)).collect(),
        ADD_MEM_REG => vec![region_end(8)],
        SET_LOG_BASE => vec![u64_at(0).zip(u64_at(8)).and_then(|(s, o)| s.checked_add(o))],
        _ => return,
    };
    for (&fd, end) in fds.iter().zip(ends) {
        let Some(end) = end.filter(|&end| end > MEMFD_SIZE) else {
            continue;
        };
        // SAFETY: `fd` is a memfd the session keeps open for the input.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Ok(owned) = borrowed.try_clone_to_owned() {
            // Sparse: nothing is allocated until written. Too long for the
            // file system: left as it is.
            let _ = File::from(owned).set_len(end);
        }
    }
}

/// The process's threads, from /proc.
fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Threads:"))?;
            line["Threads:".len()..].trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Waits until the port's threads for the last connection have ended (it
/// serves each connection on threads of its own), so that none of them is
/// still running when libFuzzer checks the input for leaks, and the next
/// input starts on an idle port. Gives up quietly after `SETTLE_WAIT`.
fn settle(fixture: &Fixture) {
    let deadline = Instant::now() + SETTLE_WAIT;
    while threads() > fixture.idle_threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn poll(fd: RawFd, events: libc::c_short, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pollfd, 1, ms) };
}

/// A new connection, `GET_FEATURES` on it, and its answer, all within
/// `CHECK_WAIT`.
fn port_answers(fixture: &Fixture) -> Result<(), String> {
    let deadline = Instant::now() + CHECK_WAIT;
    let stream =
        UnixStream::connect(&fixture.socket).map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .set_write_timeout(Some(CHECK_WAIT))
        .map_err(|e| e.to_string())?;
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&GET_FEATURES.to_le_bytes());
    header[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
    (&stream)
        .write_all(&header)
        .map_err(|e| format!("cannot send GET_FEATURES: {e}"))?;
    let mut reply = [0u8; HEADER_LEN + 8];
    let mut got = 0;
    while got < reply.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no answer to GET_FEATURES within {CHECK_WAIT:?} ({got} bytes)"
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match (&stream).read(&mut reply[got..]) {
            Ok(0) => return Err(format!("closed after {got} bytes of the answer")),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    let field = |at: usize| u32::from_le_bytes(reply[at..at + 4].try_into().unwrap());
    let (request, flags, size) = (field(0), field(4), field(8));
    if request != GET_FEATURES || flags & FLAG_REPLY == 0 || size != 8 {
        return Err(format!(
            "a wrong answer: request {request}, flags {flags:#x}, size {size}"
        ));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let stream = UnixStream::connect(&fixture.socket).expect("the port listens");
    let mut session = Session::new(stream);
    let mut input = Input(data);
    for _ in 0..MAX_MESSAGES {
        if input.is_empty() || !session.open {
            break;
        }
        let step = next_step(&mut input);
        session.step(step);
    }
    session.drain();
    drop(session);
    if let Err(why) = port_answers(fixture) {
        panic!(
            "the port no longer serves a new connection: {why}; report: {:?}",
            fixture.port.report()
        );
    }
    settle(fixture);
});
