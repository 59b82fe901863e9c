//! The processes under test: `prismd` (found next to this binary, or built) and the ceiling
//! server (this binary again, in its serving mode), each started on a free loopback port and
//! measured from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn locate_prismd() -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()?;
    let dir = here.parent().context("no directory for this binary")?;
    let candidate = dir.join("prismd");
    if !candidate.exists() {
        eprintln!("building prismd (release) ...");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "prismd"])
            .status()?;
        if !status.success() || !candidate.exists() {
            bail!(
                "cannot find or build {}; pass --prismd",
                candidate.display()
            );
        }
    }
    Ok(candidate)
}

pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// `prismd serve` on `data_dir` and `address`, with `extra` flags.
    pub fn prismd(
        bin: &Path,
        data_dir: &Path,
        address: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--listen", address])
            .args(extra);
        Self::spawn(command)
    }

    /// This binary as the ceiling server on `address`.
    pub fn ceiling(address: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--serve-ceiling", address]);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        Ok(Self { child })
    }

    pub async fn wait_ready(&mut self, address: &str) -> anyhow::Result<()> {
        for _ in 0..600 {
            if let Ok(mut conn) = client::Connection::open(address).await {
                let request =
                    format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\n\r\n").into_bytes();
                if matches!(conn.send(&request).await, Ok(200)) {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited during start-up: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the server did not become ready")
    }

    /// User + system CPU time of the server so far, from /proc.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        let after_name = stat.rsplit_once(')').context("bad /proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
            + fields.get(12).context("stime")?.parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// Peak resident memory of the server, from /proc (VmHWM). It includes pages of the
    /// database file mapped by SQLite (`mmap_size`), which the kernel's page cache holds and
    /// can reclaim; [`ServerProcess::anon_rss_mib`] is the heap alone.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmHWM:")
    }

    /// Resident anonymous memory (heap and stacks) of the server now, from /proc (RssAnon).
    pub fn anon_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("RssAnon:")
    }

    fn status_mib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc status"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib / 1024.0)
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
