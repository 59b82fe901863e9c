//! The wrk cross-check (`--wrk`): the same pre-built requests, connections and duration sent
//! by wrk (Debian's package), right after prism-bench's own client, so that the two load
//! generators can be compared in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::Endpoint;

/// Cycles each wrk thread through the requests from its own offset (as prism-bench's
/// connections do) and prints the figures in one machine-readable line. The requests are the
/// exact bytes prism-bench sends, read from a file of `<length>\n<bytes>` records, so no Lua
/// runs per request beyond picking the next one.
const SCRIPT: &str = r#"
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

local pool = {}
local counter = 0
function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local position = 1
  while position <= #data do
    local newline = data:find("\n", position, true)
    local length = tonumber(data:sub(position, newline - 1))
    pool[#pool + 1] = data:sub(newline + 1, newline + length)
    position = newline + length + 1
  end
  counter = (offset or 0) % #pool
end

function request()
  counter = counter % #pool + 1
  return pool[counter]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("prism-bench-wrk %.0f %.0f %.0f %.0f %.0f\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
  io.write(string.format("prism-bench-wrk-p999 %.0f\n", latency:percentile(99.9)))
end
"#;

/// What one wrk run measured.
pub struct WrkRun {
    pub requests: u64,
    pub seconds: f64,
    /// Connection, read, write and timeout errors, and answers of 400 and above.
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

pub fn locate() -> Option<PathBuf> {
    crate::server::on_path("wrk")
}

/// Runs `bin` against `endpoint` with `requests`, `concurrency` connections over as many
/// threads as there are cores, for `duration`. Blocks: run it where nothing else needs the
/// runtime.
pub fn run(
    bin: &Path,
    work_dir: &Path,
    endpoint: &Endpoint,
    requests: &[Vec<u8>],
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<WrkRun> {
    let script = work_dir.join("wrk.lua");
    std::fs::write(&script, SCRIPT)?;
    let pool = work_dir.join("wrk-requests");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&pool)?);
    for request in requests {
        writeln!(file, "{}", request.len())?;
        file.write_all(request)?;
    }
    file.flush()?;
    drop(file);
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(concurrency);
    let scheme = if endpoint.is_tls() { "https" } else { "http" };
    let output = Command::new(bin)
        .arg(format!("--threads={threads}"))
        .arg(format!("--connections={concurrency}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=10s")
        .arg("--script")
        .arg(&script)
        .arg(format!("{scheme}://{}/", endpoint.address))
        .arg("--")
        .arg(&pool)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// The figures of the script's `done` lines (wrk counts microseconds).
fn parse(stdout: &str) -> anyhow::Result<WrkRun> {
    let numbers = |tag: &str| -> anyhow::Result<Vec<f64>> {
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(tag))
            .with_context(|| format!("no {tag:?} line in wrk's output:\n{stdout}"))?;
        line.split_whitespace()
            .map(|n| n.parse::<f64>().context("a figure of wrk's"))
            .collect()
    };
    let main = numbers("prism-bench-wrk ")?;
    let tail = numbers("prism-bench-wrk-p999 ")?;
    let [requests, duration_us, errors, p50, p99] = main[..] else {
        bail!("wrk's figures are not five: {main:?}");
    };
    let p999 = tail.first().copied().context("no p99.9 from wrk")?;
    Ok(WrkRun {
        requests: requests as u64,
        seconds: duration_us / 1e6,
        errors: errors as u64,
        p50_ms: p50 / 1000.0,
        p99_ms: p99 / 1000.0,
        p999_ms: p999 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_the_figures_of_the_script() -> anyhow::Result<()> {
        let out = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n\
                   prism-bench-wrk 250000 10001234 3 1850 5200\nprism-bench-wrk-p999 9100\n";
        let run = parse(out)?;
        assert_eq!(run.requests, 250_000);
        assert!((run.seconds - 10.001234).abs() < 1e-9);
        assert_eq!(run.errors, 3);
        assert!((run.p50_ms - 1.85).abs() < 1e-9);
        assert!((run.p99_ms - 5.2).abs() < 1e-9);
        assert!((run.p999_ms - 9.1).abs() < 1e-9);
        assert!(parse("Running 10s test\n").is_err());
        assert!(parse("prism-bench-wrk 1 2 3\nprism-bench-wrk-p999 4\n").is_err());
        Ok(())
    }
}
