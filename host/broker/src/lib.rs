//! A local Kafka broker (Tansu) on a free loopback port, for the demo, the
//! tests and the benchmarks; stopped when dropped.
//!
//! This crate owns starting Tansu, waiting (bounded) until it listens, and
//! killing it. It is never part of the service: production points adtally
//! at its own Kafka cluster.
//!
//! ```no_run
//! let broker = adtally_broker::LocalBroker::start("memory://tansu/", "/tmp".as_ref())?;
//! println!("Kafka at {}", broker.addr());
//! # anyhow::Ok(())
//! ```

use anyhow::{Context, Result, bail};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before it is an error.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Tansu broker.
pub struct LocalBroker {
    child: Child,
    addr: String,
}

impl LocalBroker {
    /// Starts Tansu on a free port with `storage` (`memory://tansu/`, or
    /// `sqlite://FILE`, which Tansu resolves against `dir`).
    pub fn start(storage: &str, dir: &Path) -> Result<LocalBroker> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        LocalBroker::start_on(format!("127.0.0.1:{port}"), storage, dir)
    }

    /// Starts Tansu on `addr` (to restart a broker where clients expect it).
    pub fn start_on(addr: String, storage: &str, dir: &Path) -> Result<LocalBroker> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))?;
        let child = Command::new("tansu")
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{addr}"),
            ])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting tansu (installed by `make setup`)")?;
        let broker = LocalBroker { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(&broker.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen on {} within {START_TIMEOUT:?} (see {}/tansu.log)",
                    broker.addr,
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(broker)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops the broker at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
