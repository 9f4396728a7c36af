//! Shared by the `ctl_*` tests: a `vswitch run` child process stopped when
//! dropped (also when a test fails), and `vswitch ctl` calls against it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `vswitch` binary under test.
pub fn vswitch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vswitch"))
}

/// A running `vswitch run`, sent SIGTERM (then killed) when dropped.
pub struct Running {
    child: Option<Child>,
    /// Its control socket.
    pub ctl: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `vswitch run ARGS --ctl DIR/vswitch.ctl` and waits until its
    /// control socket answers.
    pub fn start(args: &[&str]) -> Running {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ctl = dir.path().join("vswitch.ctl");
        let child = vswitch()
            .arg("run")
            .args(args)
            .arg("--ctl")
            .arg(&ctl)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vswitch run");
        let mut running = Running {
            child: Some(child),
            ctl,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if running.ctl.exists() && running.ctl_ok(&["show"]).is_ok() {
                return running;
            }
            if let Some(status) = running
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let output = running.child.take().map(|c| c.wait_with_output());
                panic!("vswitch run exited with {status}: {output:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("vswitch run did not open its control socket within 10 s");
    }

    /// Runs `vswitch ctl --ctl SOCKET ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        vswitch()
            .arg("ctl")
            .arg("--ctl")
            .arg(&self.ctl)
            .args(args)
            .output()
            .expect("run vswitch ctl")
    }

    /// `vswitch ctl ARGS`, its stdout when it succeeded.
    pub fn ctl_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.ctl(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "vswitch ctl {args:?} exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `vswitch ctl ARGS --json`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ctl_ok(&args).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Sends a signal to the switch.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Whether the switch still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops the switch with SIGTERM; returns its exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        let child = self.child.take().expect("running");
        let output = child.wait_with_output().expect("wait for vswitch run");
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal_child(&child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    fn signal_child(&self, child: &Child) {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
}

/// `GET /metrics` from `addr`: the body.
pub fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
