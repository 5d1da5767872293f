//! The embedded ClickHouse: the real engine (chDB, ClickHouse 26.9) behind
//! the ClickHouse HTTP interface (`clickhouse/server.py`), started on a free
//! loopback port.
//!
//! This crate owns starting it, waiting (bounded) until it answers,
//! installing adtally into it (`clickhouse/install.py`, [`install_schema`])
//! and stopping it; it never speaks SQL itself. It is support for the demo,
//! the tests and the benchmarks, never part of the service: production
//! points adtally at a ClickHouse server URL instead, and nothing else
//! changes.
//!
//! ```no_run
//! let ch = adtally_clickhouse_embedded::EmbeddedClickHouse::start("/tmp/adtally-ch".as_ref())?;
//! adtally_clickhouse_embedded::install_schema(&ch.url())?;
//! println!("ClickHouse at {}", ch.url());
//! # anyhow::Ok(())
//! ```

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before it is an error.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running embedded ClickHouse; stopped when dropped.
pub struct EmbeddedClickHouse {
    child: Child,
    port: u16,
    data: PathBuf,
}

/// The Python with chdb-core: `$ADTALLY_PYTHON`, else the venv `make setup` made.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("ADTALLY_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("ADTALLY_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/adtally")
        });
    home.join("venv/bin/python")
}

/// The `clickhouse/` folder of this checkout.
fn clickhouse_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn server_script() -> PathBuf {
    clickhouse_dir().join("server.py")
}

/// Creates adtally's tables, pipeline and UDFs (the module `make wasm`
/// built) in the ClickHouse at `url`, with `clickhouse/install.py`
/// (idempotent).
pub fn install_schema(url: &str) -> Result<()> {
    let dir = clickhouse_dir();
    let out = Command::new(python())
        .arg(dir.join("install.py"))
        .args(["install", "--url", url, "--wasm"])
        .arg(dir.join("../target/wasm/adtally_clickhouse.wasm"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running clickhouse/install.py")?;
    if !out.status.success() {
        bail!(
            "clickhouse/install.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl EmbeddedClickHouse {
    /// Starts a server on a free port with its data in `data` (created if
    /// missing, kept after stop) and waits until it answers `/ping`.
    pub fn start(data: &Path) -> Result<EmbeddedClickHouse> {
        let mut child = Command::new(python())
            .arg(server_script())
            .arg("--data")
            .arg(data)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} (run `make setup` first)", python().display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("the embedded ClickHouse did not start within {START_TIMEOUT:?}");
            }
        };
        let port = line
            .rsplit_once("127.0.0.1:")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected server banner: {line}"))?;
        let server = EmbeddedClickHouse {
            child,
            port,
            data: data.to_path_buf(),
        };
        server.wait_ready(START_TIMEOUT)?;
        Ok(server)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(
                    s,
                    "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )?;
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.ends_with("Ok.\n") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the embedded ClickHouse on port {} did not answer /ping within {timeout:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the server (SIGKILL: everything acknowledged is already on disk).
    pub fn stop(mut self) -> Result<()> {
        self.child
            .kill()
            .context("stopping the embedded ClickHouse")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for EmbeddedClickHouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
