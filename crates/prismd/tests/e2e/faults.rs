//! Storage faults: the database's disk fills up under a running server, and a data directory
//! that is read-only at start. Each runs on a small tmpfs mounted in a private mount namespace
//! (as root, or through an unprivileged user namespace), so nothing on the host is touched.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Options, Server, TestResult, sqlite_integrity, temp_dir};

type Error = Box<dyn std::error::Error>;

/// A tmpfs of a fixed size, mounted over a temporary directory inside a mount namespace of
/// its own. A `sleep` holds the namespace; prismd joins it through `nsenter`, and the test
/// reaches the files through `/proc/<holder>/root`.
struct PrivateTmpfs {
    holder: Child,
    mount_point: PathBuf,
    user_namespace: bool,
    _dir: tempfile::TempDir,
}

impl PrivateTmpfs {
    fn mount(size: &str) -> Result<Self, Error> {
        let dir = temp_dir()?;
        let mount_point = dir.path().to_owned();
        // Root can mount in a plain private mount namespace; anyone else needs a user
        // namespace in which they are root.
        let user_namespace = !running_as_root()?;
        let mut command = Command::new("unshare");
        if user_namespace {
            command.args(["--user", "--map-root-user"]);
        }
        let mut holder = command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" prismd-faults "$0" && echo mounted && exec sleep 600"#)
            .arg(&mount_point)
            .arg(size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = holder.stdout.take().ok_or("no stdout")?;
        let (mounted_tx, mounted_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let first = BufReader::new(stdout).lines().next();
            let _ = mounted_tx.send(matches!(first, Some(Ok(line)) if line == "mounted"));
        });
        if mounted_rx.recv_timeout(Duration::from_secs(20)) != Ok(true) {
            let _ = holder.kill();
            let output = holder.wait_with_output()?;
            return Err(format!(
                "could not mount a private tmpfs (these tests need root, or unprivileged user \
                 namespaces for 'unshare --user --map-root-user'): {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(Self {
            holder,
            mount_point,
            user_namespace,
            _dir: dir,
        })
    }

    /// The mount point as prismd (inside the namespace) names it.
    fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The same directory as seen from the test, outside the namespace.
    fn seen_from_outside(&self) -> PathBuf {
        let relative = self
            .mount_point
            .strip_prefix("/")
            .unwrap_or(&self.mount_point);
        Path::new("/proc")
            .join(self.holder.id().to_string())
            .join("root")
            .join(relative)
    }

    /// `nsenter` into the namespace, followed by the command to run there.
    fn launcher(&self) -> Vec<String> {
        let mut launcher = vec![
            "nsenter".to_owned(),
            "--target".to_owned(),
            self.holder.id().to_string(),
            "--mount".to_owned(),
        ];
        if self.user_namespace {
            launcher.extend(["--user".to_owned(), "--preserve-credentials".to_owned()]);
        }
        launcher
    }

    /// Runs `mount` options on the tmpfs from inside the namespace (for example remount it
    /// read-only).
    fn remount(&self, options: &str) -> TestResult {
        let mut launcher = self.launcher();
        let program = launcher.remove(0);
        let output = Command::new(program)
            .args(launcher)
            .args(["mount", "-o", options])
            .arg(&self.mount_point)
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "remount {options} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(())
    }

    /// Runs an admin command inside the namespace. (Not through [`Self::seen_from_outside`]:
    /// SQLite resolves `/proc/<pid>/root` as a symbolic link to `/` and would open the empty
    /// directory under the mount instead.)
    fn prismd(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        let mut launcher = self.launcher();
        let program = launcher.remove(0);
        Ok(Command::new(program)
            .args(launcher)
            .arg(crate::harness::BIN)
            .arg("--data-dir")
            .arg(&self.mount_point)
            .args(args)
            .env_remove("PRISMD_LOG")
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs an admin command that must succeed; returns its trimmed stdout.
    fn admin_ok(&self, args: &[&str]) -> Result<String, Error> {
        let output = self.prismd(args)?;
        if !output.status.success() {
            return Err(format!(
                "prismd {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(output.stdout)?.trim().to_owned())
    }

    fn user_with_token(&self, email: &str) -> Result<String, Error> {
        self.admin_ok(&["users", "add", "--email", email, "--role", "Integrator"])?;
        self.admin_ok(&["tokens", "create", "--email", email])
    }

    /// `PRAGMA integrity_check` of a copy of the stopped server's database, taken through
    /// `/proc` (SQLite itself cannot open it there; see [`Self::prismd`]).
    async fn integrity(&self) -> Result<String, Error> {
        let copy = temp_dir()?;
        for file in ["prismd.db", "prismd.db-wal"] {
            let source = self.seen_from_outside().join(file);
            if source.exists() {
                std::fs::copy(&source, copy.path().join(file))?;
            }
        }
        sqlite_integrity(copy.path()).await
    }

    fn serve(&self) -> Result<Server, Error> {
        Server::start_with(
            self.mount_point(),
            Options {
                launcher: self.launcher(),
                ..Options::default()
            },
        )
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn running_as_root() -> Result<bool, Error> {
    let output = Command::new("id").arg("-u").output()?;
    Ok(String::from_utf8(output.stdout)?.trim() == "0")
}

/// Writes zeros to `path` until the file system refuses with "no space left"; the error must
/// be exactly that.
fn fill_disk(path: &Path) -> TestResult {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0_u8; 64 * 1024];
    loop {
        if let Err(err) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::StorageFull,
                "filling the disk failed otherwise: {err}"
            );
            return Ok(());
        }
    }
}

/// Revokes `token` during the outage: 200 (the write found room, for example in WAL space
/// SQLite reuses after a checkpoint, and is durable) or 503 with `Retry-After` and the
/// standard body; nothing else, and never the token echoed.
async fn revoke_with_disk_full(server: &Server, token: &str) -> Result<u16, Error> {
    let response = server
        .http
        .post(server.url("/auth/revoke"))
        .json(&serde_json::json!({ "refresh_token": token }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await?;
    assert!(
        !body.to_string().contains(token),
        "the token is echoed: {body}"
    );
    match status {
        200 => {}
        503 => {
            assert_eq!(retry_after.as_deref(), Some("1"));
            assert_eq!(body["error"], "temporarily_unavailable", "{body}");
        }
        other => return Err(format!("revoke with the disk full answered {other}: {body}").into()),
    }
    Ok(status)
}

#[tokio::test]
async fn full_disk_refuses_writes_with_503_keeps_reads_and_recovers_when_space_returns()
-> TestResult {
    const USERS: usize = 20;
    let disk = PrivateTmpfs::mount("8m")?;
    let outside = disk.seen_from_outside();
    let server = disk.serve()?;
    let ci = disk.user_with_token("ci@example.com")?;
    let mut tokens = Vec::with_capacity(USERS);
    for n in 0..USERS {
        tokens.push(disk.user_with_token(&format!("user{n}@example.com"))?);
    }
    // A restart leaves the WAL empty, so the writes below need new space on the disk
    // (SQLite reuses WAL space it has already checkpointed, and such a write would succeed).
    server.stop()?;
    let server = disk.serve()?;
    let (status, body) = server.refresh(&ci).await?;
    assert_eq!(status, 200, "{body}");

    fill_disk(&outside.join("filler"))?;

    // Reads go on: a refresh exchange needs no write.
    let (status, body) = server.refresh(&ci).await?;
    assert_eq!(status, 200, "a refresh with the disk full: {body}");
    // Each revoke is answered 200 only if it was written; the rest 503.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for token in &tokens {
        match revoke_with_disk_full(&server, token).await? {
            200 => held.push(token),
            _ => refused.push(token),
        }
    }
    assert!(!refused.is_empty(), "no write failed with the disk full");
    for token in &refused {
        let (status, body) = server.refresh(token).await?;
        assert_eq!(status, 200, "a revoke answered 503 took effect: {body}");
    }
    for token in &held {
        let (status, body) = server.refresh(token).await?;
        assert_eq!(status, 400, "a revoke answered 200 did not hold: {body}");
    }
    // An operator's write fails with a message that says why.
    let minted = disk.prismd(&["tokens", "create", "--email", "ci@example.com"])?;
    assert!(!minted.status.success());
    let stderr = String::from_utf8_lossy(&minted.stderr);
    assert!(stderr.contains("disk is full"), "{stderr}");
    let health = server.http.get(server.url("/healthz")).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        server.logs().contains("the database's disk is full"),
        "the log does not say the disk is full:\n{}",
        server.logs()
    );

    std::fs::remove_file(outside.join("filler"))?;

    // The first write after space returns works: no connection stays wedged in the
    // transaction SQLite rolled back on its own.
    for token in &refused {
        let (status, body) = server.revoke(token).await?;
        assert_eq!(status, 200, "revoke after space returned: {body}");
        let (status, body) = server.refresh(token).await?;
        assert_eq!(status, 400, "the revoked token still works: {body}");
    }
    let (status, body) = server.refresh(&ci).await?;
    assert_eq!(status, 200, "a bystander's token was lost: {body}");

    server.stop()?;
    assert_eq!(disk.integrity().await?, "ok");
    let server = disk.serve()?;
    for token in &tokens {
        let (status, _) = server.refresh(token).await?;
        assert_eq!(status, 400, "a revoke did not survive a restart");
    }
    let (status, body) = server.refresh(&ci).await?;
    assert_eq!(status, 200, "{body}");
    server.stop()?;
    Ok(())
}

#[tokio::test]
async fn read_only_data_directory_is_refused_at_start_with_a_clear_message() -> TestResult {
    let disk = PrivateTmpfs::mount("8m")?;
    let server = disk.serve()?;
    let token = disk.user_with_token("ci@example.com")?;
    server.stop()?;

    disk.remount("remount,ro")?;
    let refused = disk.prismd(&["serve", "--listen", "127.0.0.1:0"])?;
    assert!(
        !refused.status.success(),
        "prismd started on a read-only disk"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot write the database file")
            && stderr.contains("Read-only file system"),
        "unclear refusal: {stderr}"
    );
    // Said once, not once per layer of the error chain.
    assert_eq!(
        stderr.matches("Read-only file system").count(),
        1,
        "{stderr}"
    );

    disk.remount("remount,rw")?;
    assert_eq!(disk.integrity().await?, "ok");
    let server = disk.serve()?;
    let (status, body) = server.refresh(&token).await?;
    assert_eq!(status, 200, "{body}");
    server.stop()?;
    Ok(())
}
