//! The forward-auth scenarios' reverse proxy: a real nginx (the `nginx` binary on `PATH`, or
//! Debian's `/usr/sbin/nginx`) started on a free loopback port with every path in a
//! directory of its own. `/app/` asks prismd's `/auth/verify` first (`auth_request`, over
//! kept-alive upstream connections) and then serves a two-byte file, standing in for the
//! protected upstream; `/open/` serves the same file without asking, which is nginx's own
//! cost: the ceiling of the scenario through it.
//!
//! The protected location serves a file rather than `return 200`: `return` runs in nginx's
//! rewrite phase, before the access phase where `auth_request` runs, so it would answer
//! without ever asking prismd.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::client;
use crate::server::{ServerProcess, free_port};

/// The protected path (`auth_request` to prismd), and the same content without it.
pub const PROTECTED: &str = "/app/ok";
pub const OPEN: &str = "/open/ok";
/// The header through which a route tells prismd the scopes it requires (default prefix).
const REQUIRED_SCOPE_HEADER: &str = "X-Prism-Required-Scope";

/// The nginx binary: `nginx` on `PATH`, else where Debian's package puts it (`/usr/sbin`,
/// which a non-root `PATH` often lacks).
pub fn locate() -> Option<PathBuf> {
    crate::server::on_path("nginx").or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

/// nginx's directory for a run whose prismd data directory is `work_dir`: beside it, not in
/// it, since nginx's workers (`nobody` under root) must read their content.
pub fn dir_beside(work_dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}-nginx", work_dir.display()))
}

/// A running nginx; stopped (gracefully, so that its workers go too) when dropped.
pub struct Nginx {
    process: ServerProcess,
    address: String,
    dir: PathBuf,
}

impl Nginx {
    /// Writes the configuration into `dir` (created) and starts nginx with `workers` worker
    /// processes (`auto` or a number) in front of prismd at `prismd`; `required_scope`, when
    /// set, is sent to prismd as the route's required scopes.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        prismd: &str,
        workers: &str,
        required_scope: Option<&str>,
    ) -> anyhow::Result<Self> {
        if workers != "auto" && workers.parse::<u16>().map_or(true, |n| n == 0) {
            bail!("--nginx-workers takes `auto` or a positive number, not {workers:?}");
        }
        if let Some(scope) = required_scope
            && !scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " :_.-,".contains(c))
        {
            bail!(
                "the required scope {scope:?} has characters the nginx configuration would need quoted"
            );
        }
        std::fs::create_dir_all(dir.join("www/app"))?;
        std::fs::create_dir_all(dir.join("www/open"))?;
        // nginx's workers run as `nobody` when it is started as root: they must be able to
        // read the content.
        set_mode(dir, 0o755)?;
        for path in [PROTECTED, OPEN] {
            std::fs::write(dir.join("www").join(&path[1..]), "ok")?;
        }
        let address = format!("127.0.0.1:{}", free_port()?);
        std::fs::write(
            dir.join("nginx.conf"),
            config(dir, &address, prismd, workers, required_scope),
        )?;
        let mut process = ServerProcess::nginx(bin, dir)?;
        if let Err(err) = process.wait_ready(&address).await {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            bail!("nginx did not start: {err}\n{log}");
        }
        let nginx = Self {
            process,
            address,
            dir: dir.to_owned(),
        };
        Ok(nginx)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn process(&self) -> &ServerProcess {
        &self.process
    }

    /// Checks, unmeasured, that the protected location really asks prismd: no token is
    /// refused (401), `token` passes with prismd's user id copied into the response, and the
    /// open location answers without a token.
    pub async fn check(&self, token: &str) -> anyhow::Result<()> {
        let mut conn = client::Connection::open(&self.address).await?;
        let (status, _) = conn
            .send_and_read_head(&client::get(PROTECTED, &self.address, None))
            .await?;
        if status != 401 {
            bail!("nginx answered {status} without a token, not 401: auth_request is not asked");
        }
        let (status, head) = conn
            .send_and_read_head(&client::get(PROTECTED, &self.address, Some(token)))
            .await?;
        let user = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-prism-user-id")
                .then(|| value.trim().to_owned())
                .filter(|v| !v.is_empty())
        });
        if status != 200 || user.is_none() {
            bail!(
                "nginx answered {status} with a valid token (user id {user:?}): {}",
                self.log_tail()
            );
        }
        let (status, _) = conn
            .send_and_read_head(&client::get(OPEN, &self.address, None))
            .await?;
        if status != 200 {
            bail!("nginx's open location answered {status}");
        }
        Ok(())
    }

    /// The last lines of nginx's error log, to show with failed requests.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before it exits (a SIGKILL would leave them).
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(unix)]
fn set_mode(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot make {} readable", dir.display()))
}

#[cfg(not(unix))]
fn set_mode(_dir: &Path, _mode: u32) -> anyhow::Result<()> {
    Ok(())
}

/// The configuration: `auth_request` as the documentation sets it up, nothing logged per
/// request, and every connection (client to nginx, nginx to prismd) kept for the whole run.
fn config(
    dir: &Path,
    address: &str,
    prismd: &str,
    workers: &str,
    required_scope: Option<&str>,
) -> String {
    let dir = dir.display();
    let required = required_scope
        .map(|scope| format!("\n            proxy_set_header {REQUIRED_SCOPE_HEADER} \"{scope}\";"))
        .unwrap_or_default();
    format!(
        r#"worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log error;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type text/plain;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;
    # nginx closes a client connection after 1,000 requests by default; the load generator
    # keeps each of its connections for the whole scenario.
    keepalive_requests 1000000000;

    upstream prismd {{
        server {prismd};
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 1h;
    }}

    server {{
        listen {address};
        root {dir}/www;

        location = /readyz {{
            return 200 "ready";
        }}

        # The protected upstream: prismd decides, then the content is served.
        location /app/ {{
            auth_request /_verify;
            auth_request_set $prism_user $upstream_http_x_prism_user_id;
            add_header X-Prism-User-Id $prism_user;
        }}

        # The same content without asking: nginx's own cost.
        location /open/ {{
        }}

        location = /_verify {{
            internal;
            proxy_pass http://prismd/auth/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";{required}
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protected_location_asks_prismd_before_serving_content() {
        let text = config(
            Path::new("/tmp/x"),
            "127.0.0.1:1",
            "127.0.0.1:2",
            "auto",
            Some("users:read"),
        );
        let protected = text
            .split("location /app/ {")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .unwrap_or_default();
        assert!(protected.contains("auth_request /_verify;"));
        // `return` would answer in the rewrite phase, before auth_request is asked.
        assert!(!protected.contains("return"));
        assert!(text.contains("server 127.0.0.1:2;\n        keepalive 64;"));
        assert!(text.contains("proxy_set_header X-Prism-Required-Scope \"users:read\";"));
    }
}
