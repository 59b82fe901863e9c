//! The processes under test: `prismd` (found next to this binary, or built), the ceiling
//! server (this binary again, in its serving mode) and nginx (for the forward-auth scenarios),
//! each started on a free loopback port and measured from `/proc`, with the processes it
//! forked (nginx's workers).

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

/// The first file called `name` in a directory of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
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
        // prismd's log, for a run that needs explaining: appended to this file (every prismd
        // of the run), else dropped.
        let log = match std::env::var_os("PRISM_BENCH_SERVER_LOG") {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.to_string_lossy()))?,
            ),
            None => Stdio::null(),
        };
        Self::spawn_logging(command, log)
    }

    /// This binary as the ceiling server on `address`.
    pub fn ceiling(address: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--serve-ceiling", address]);
        Self::spawn(command)
    }

    /// The peer, node-oidc-provider (`server.mjs`), on loopback `port`, minting `tokens`
    /// refresh tokens and writing them to `out`.
    pub fn node(script: &Path, port: &str, tokens: usize, out: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new("node");
        command
            .arg(script)
            .args(["--port", port, "--tokens", &tokens.to_string(), "--out"])
            .arg(out);
        Self::spawn(command)
    }

    /// nginx in the foreground, with `dir` as its prefix and `dir/nginx.conf` as its
    /// configuration; `-e` keeps its start-up messages out of the system's log directory.
    pub fn nginx(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"]);
        Self::spawn(command)
    }

    fn spawn(command: Command) -> anyhow::Result<Self> {
        Self::spawn_logging(command, Stdio::null())
    }

    fn spawn_logging(mut command: Command, log: Stdio) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        Ok(Self { child })
    }

    pub async fn wait_ready(&mut self, address: &str) -> anyhow::Result<()> {
        self.wait_ready_at(&client::Endpoint::plain(address)).await
    }

    /// Waits until `GET /readyz` answers 200 at `endpoint` (over TLS when it has TLS).
    pub async fn wait_ready_at(&mut self, endpoint: &client::Endpoint) -> anyhow::Result<()> {
        let address = &endpoint.address;
        for _ in 0..600 {
            if let Ok(mut conn) = client::Connection::connect(endpoint).await {
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

    /// The server's process and those it forked (nginx's workers; none for prismd or the
    /// ceiling), found by their parent in `/proc`.
    fn pids(&self) -> Vec<u32> {
        let parent = self.child.id();
        let mut pids = vec![parent];
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_field(&stat, 1).and_then(|f| f.parse::<u32>().ok()));
            if ppid == Some(parent) {
                pids.push(pid);
            }
        }
        pids
    }

    /// User + system CPU time of the server so far (with its workers), from /proc.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let mut ticks = 0.0;
        for pid in self.pids() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                // A worker that has just gone; the server itself must be there.
                if pid == self.child.id() {
                    bail!("the server {pid} is gone");
                }
                continue;
            };
            ticks += stat_field(&stat, 11).context("utime")?.parse::<f64>()?
                + stat_field(&stat, 12).context("stime")?.parse::<f64>()?;
        }
        Ok(ticks / 100.0)
    }

    /// Peak resident memory of the server, from /proc (VmHWM; with workers, the sum of
    /// each process's peak). It includes pages of the
    /// database file mapped by SQLite (`mmap_size`), which the kernel's page cache holds and
    /// can reclaim; [`ServerProcess::anon_rss_mib`] is the heap alone.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("VmHWM:")
    }

    /// Resident anonymous memory (heap and stacks) of the server now, from /proc (RssAnon).
    pub fn anon_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("RssAnon:")
    }

    /// Resident file-backed memory of the server now, from /proc (RssFile): its binary and
    /// libraries, and the database pages SQLite maps (`mmap_size`), which are the kernel's page
    /// cache, shared and reclaimable, not the server's heap.
    pub fn file_rss_mib(&self) -> anyhow::Result<f64> {
        self.status_mib("RssFile:")
    }

    fn status_mib(&self, field: &str) -> anyhow::Result<f64> {
        let mut kib = 0.0;
        for pid in self.pids() {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                if pid == self.child.id() {
                    bail!("the server {pid} is gone");
                }
                continue;
            };
            let line = status
                .lines()
                .find(|l| l.starts_with(field))
                .with_context(|| format!("no {field} in /proc status"))?;
            kib += line
                .split_whitespace()
                .nth(1)
                .context("no value")?
                .parse::<f64>()?;
        }
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

/// Field `index` of a `/proc/<pid>/stat` line, counted from the state (0) after the command
/// name, which may itself hold spaces and parentheses.
fn stat_field(stat: &str, index: usize) -> Option<&str> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(index)
}

/// CPU time of the load generator so far: this process (all its threads) and the children it
/// has waited for (wrk, which is gone before its own `/proc` entry could be read; the servers
/// are waited for only after their scenarios, outside any measurement), from /proc.
pub fn load_generator_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let mut ticks = 0.0;
    // utime, stime, then cutime and cstime: the waited-for children's.
    for (index, name) in [(11, "utime"), (12, "stime"), (13, "cutime"), (14, "cstime")] {
        ticks += stat_field(&stat, index).context(name)?.parse::<f64>()?;
    }
    Ok(ticks / 100.0)
}

/// The whole machine's CPU time so far, from the first line of /proc/stat, in seconds: busy
/// (user, nice, system, irq, softirq: whoever ran) and stolen (by the hypervisor, for other
/// guests).
#[derive(Clone, Copy)]
pub struct MachineCpu {
    pub busy: f64,
    pub steal: f64,
}

impl MachineCpu {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let ticks: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse::<f64>().unwrap_or(0.0))
            .collect();
        let field = |index: usize| ticks.get(index).copied().unwrap_or(0.0) / 100.0;
        // user nice system idle iowait irq softirq steal
        Ok(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            steal: field(7),
        })
    }
}
