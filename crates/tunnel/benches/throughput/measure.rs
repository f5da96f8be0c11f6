//! iperf3 runs, `/proc` readings and the printed table.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vpno_tunnel::netns::NamedNetns;

/// One iperf3 result.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub bits_per_second: f64,
    pub bytes: f64,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub streams: u32,
    pub run: Run,
    pub cpu_seconds: Option<f64>,
    pub idle_rss_kib: Option<u64>,
}

impl Row {
    pub fn new(
        name: &'static str,
        streams: u32,
        run: Run,
        cpu_seconds: Option<f64>,
        idle_rss_kib: Option<u64>,
    ) -> Self {
        Row {
            name,
            streams,
            run,
            cpu_seconds,
            idle_rss_kib,
        }
    }

    fn mbits(&self) -> f64 {
        self.run.bits_per_second / 1e6
    }

    fn cpu_per_gb(&self) -> Option<f64> {
        let gb = self.run.bytes / 1e9;
        self.cpu_seconds.filter(|_| gb > 0.0).map(|cpu| cpu / gb)
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// iperf3 TCP from `client_ns` to `address` in `server_ns` with `streams`
/// parallel streams for `seconds`; zero when it failed (printed).
pub fn iperf3(
    server_ns: &NamedNetns,
    client_ns: &NamedNetns,
    address: &str,
    streams: u32,
    seconds: u32,
) -> Run {
    let port = "5299";
    let _server = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", server_ns.name(), "iperf3", "-s", "-1"])
            .args(["-B", address, "-p", port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let limit = (seconds + 20).to_string();
    let output = client_ns.exec(
        "timeout",
        &[
            &limit,
            "iperf3",
            "-c",
            address,
            "-p",
            port,
            "-t",
            &seconds.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ],
    );
    let report: serde_json::Value = output
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    let received = &report["end"]["sum_received"];
    let run = Run {
        bits_per_second: received["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes: received["bytes"].as_f64().unwrap_or(0.0),
    };
    if run.bytes == 0.0 {
        println!(
            "iperf3 to {address} ({streams} streams) failed: {}",
            report["error"].as_str().unwrap_or("no report")
        );
    }
    run
}

/// `/proc/loadavg`'s first three fields.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// User + system CPU time of a process, in seconds (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn find<'a>(rows: &'a [Row], name: &str, streams: u32) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.name == name && r.streams == streams && r.run.bytes > 0.0)
}

/// Prints the table and the ratios.
pub fn print(rows: &[Row]) {
    println!();
    println!(
        "{:<14} {:>7} {:>10} {:>11} {:>14}",
        "path", "streams", "Mbit/s", "CPU s/GB", "idle RSS KiB"
    );
    for row in rows {
        let cpu = row
            .cpu_per_gb()
            .map_or_else(|| "-".to_string(), |c| format!("{c:.2}"));
        let rss = row
            .idle_rss_kib
            .map_or_else(|| "-".to_string(), |r| r.to_string());
        println!(
            "{:<14} {:>7} {:>10.0} {:>11} {:>14}",
            row.name,
            row.streams,
            row.mbits(),
            cpu,
            rss
        );
    }
    println!();
    for streams in crate::STREAMS {
        let Some(ours) = find(rows, crate::ours::NAME, streams) else {
            continue;
        };
        for other in ["wireguard-go", "boringtun-cli", "veth"] {
            if let Some(other_row) = find(rows, other, streams) {
                println!(
                    "ours / {other:<13} {streams} stream(s): {:>6.3}",
                    ours.mbits() / other_row.mbits()
                );
            }
        }
    }
}
