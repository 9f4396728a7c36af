//! A QMP client: QEMU's machine protocol, JSON objects one a line over the
//! monitor's Unix socket (`run-guest.sh --qmp PATH`).
//!
//! QEMU greets with `{"QMP": ...}` and takes commands once
//! `qmp_capabilities` has been executed. Each command is sent with an `id`,
//! which QEMU copies into its answer (`{"return": ...}` or
//! `{"error": {"class", "desc"}}`); asynchronous events
//! (`{"event": NAME, "data": ...}`) may come at any time in between, and
//! are kept for [`Qmp::wait_event`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Why a command did not succeed.
#[derive(Debug)]
pub enum QmpError {
    /// The socket failed, or QEMU closed it.
    Io(io::Error),
    /// QEMU refused the command: its error class and description.
    Refused { class: String, desc: String },
    /// No answer in time.
    Timeout(Duration),
    /// QEMU sent something that is not a QMP message.
    Protocol(String),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Io(e) => write!(f, "QMP socket: {e}"),
            QmpError::Refused { class, desc } => write!(f, "QEMU refused ({class}): {desc}"),
            QmpError::Timeout(limit) => write!(f, "no QMP answer within {limit:?}"),
            QmpError::Protocol(what) => write!(f, "not QMP: {what}"),
        }
    }
}

impl From<io::Error> for QmpError {
    fn from(e: io::Error) -> Self {
        QmpError::Io(e)
    }
}

/// A connection to one QEMU's monitor, in command mode.
pub struct Qmp {
    stream: UnixStream,
    /// Bytes read past the last complete line.
    pending: Vec<u8>,
    next_id: u64,
    /// Events read while waiting for something else, oldest first.
    events: VecDeque<Value>,
    /// Every message sent (`->`) and received (`<-`), for failure reports.
    transcript: Vec<String>,
    /// How long a command may take to be answered.
    pub command_timeout: Duration,
}

impl Qmp {
    /// Connects to the monitor at `path`, retrying until QEMU listens there
    /// (it does a moment after it starts) or `limit` passes, reads the
    /// greeting and enters command mode.
    pub fn connect(path: &Path, limit: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut qmp = Qmp {
            stream,
            pending: Vec::new(),
            next_id: 1,
            events: VecDeque::new(),
            transcript: Vec::new(),
            command_timeout: Duration::from_secs(60),
        };
        let greeting = qmp
            .read_message(deadline.max(Instant::now() + Duration::from_secs(10)))?
            .ok_or(QmpError::Timeout(limit))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` (`Value::Null` for none) and returns
    /// what it returned. Events that come meanwhile are kept.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        self.transcript.push(format!("-> {line}"));
        line.push('\n');
        self.stream.write_all(line.as_bytes())?;
        let deadline = Instant::now() + self.command_timeout;
        loop {
            let Some(message) = self.read_message(deadline)? else {
                return Err(QmpError::Timeout(self.command_timeout));
            };
            if message.get("event").is_some() {
                self.events.push_back(message);
                continue;
            }
            // An answer to another command (none is outstanding: this
            // client sends one at a time) is not ours.
            if message.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let text = |key: &str| {
                    error
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                };
                return Err(QmpError::Refused {
                    class: text("class"),
                    desc: text("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("answer {message}")));
        }
    }

    /// Waits for the event `name` whose `data` satisfies `matches` (events
    /// already read count too, oldest first) and returns its `data`; `None`
    /// if none came within `limit`.
    pub fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Result<Option<Value>, QmpError> {
        let is_it = |event: &Value| {
            event.get("event").and_then(Value::as_str) == Some(name)
                && matches(event.get("data").unwrap_or(&Value::Null))
        };
        if let Some(at) = self.events.iter().position(is_it) {
            let event = self.events.remove(at).expect("the position is in range");
            return Ok(Some(event["data"].clone()));
        }
        let deadline = Instant::now() + limit;
        while let Some(message) = self.read_message(deadline)? {
            if is_it(&message) {
                return Ok(Some(message["data"].clone()));
            }
            if message.get("event").is_some() {
                self.events.push_back(message);
            }
        }
        Ok(None)
    }

    /// The events read and not yet waited for, by name.
    pub fn pending_events(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| e.get("event").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Everything sent and received so far, one message a line.
    pub fn transcript(&self) -> String {
        self.transcript.join("\n")
    }

    /// The next message, or `None` once `deadline` passes without one.
    fn read_message(&mut self, deadline: Instant) -> Result<Option<Value>, QmpError> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                self.transcript.push(format!("<- {text}"));
                return serde_json::from_str(text)
                    .map(Some)
                    .map_err(|e| QmpError::Protocol(format!("{e}: {text}")));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // A zero timeout would mean "block forever".
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait))?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(QmpError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QEMU closed the monitor",
                    )))
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
