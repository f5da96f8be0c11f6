//! Traffic from inside lab namespaces: HTTP requests to the echo service and
//! long-lived TCP flows to the sink, each on a fresh socket (so a fresh
//! source port). Used by `lab up`/`status`, the tests and the benchmark.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::kernel::{self, KernelError};

/// Why a request or flow failed.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Connecting failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {addr} failed: {reason}")]
    Http {
        /// Target.
        addr: SocketAddr,
        /// Cause.
        reason: String,
    },
    /// The whole operation ran out of time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: String,
        /// The bound.
        after: Duration,
    },
}

/// Opens a TCP connection from inside `netns`.
pub async fn connect_in(
    netns: &str,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, TrafficError> {
    let ns = netns.to_string();
    let std_stream = tokio::task::spawn_blocking(move || {
        kernel::in_netns(&ns, move || {
            std::net::TcpStream::connect_timeout(&addr, timeout)
        })
    })
    .await
    .map_err(|e| TrafficError::Http {
        addr,
        reason: e.to_string(),
    })??
    .map_err(|source| TrafficError::Connect { addr, source })?;
    std_stream
        .set_nonblocking(true)
        .map_err(|source| TrafficError::Connect { addr, source })?;
    std_stream
        .set_nodelay(true)
        .map_err(|source| TrafficError::Connect { addr, source })?;
    TcpStream::from_std(std_stream).map_err(|source| TrafficError::Connect { addr, source })
}

/// A finished HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
    /// The local port the request left from.
    pub local_port: u16,
}

/// `GET path` on a fresh connection from inside `netns`, bounded by `timeout` overall.
pub async fn http_get(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, TrafficError> {
    let fut = async {
        let stream = connect_in(netns, addr, timeout).await?;
        let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let http = |reason: String| TrafficError::Http { addr, reason };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
        let conn_task = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        conn_task.abort();
        Ok(HttpResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            local_port,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| TrafficError::Timeout {
            what: format!("GET http://{addr}{path}"),
            after: timeout,
        })?
}

/// Asks the echo service which address it sees us coming from.
pub async fn echo_ip(
    netns: &str,
    echo: SocketAddrV4,
    timeout: Duration,
) -> Result<Ipv4Addr, TrafficError> {
    let addr = SocketAddr::V4(echo);
    let resp = http_get(netns, addr, "/", timeout).await?;
    if resp.status != 200 {
        return Err(TrafficError::Http {
            addr,
            reason: format!("status {}", resp.status),
        });
    }
    resp.body.trim().parse().map_err(|_| TrafficError::Http {
        addr,
        reason: format!("not an address: {:?}", resp.body),
    })
}

/// Shared state of one long-lived flow to the sink.
#[derive(Debug)]
struct FlowState {
    acked: AtomicU64,
    sent: AtomicU64,
    last_progress: Mutex<Instant>,
    error: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// A long-lived TCP flow from a client to the sink, sending at a bounded
/// rate for a bounded time; the sink reports back how many bytes it got.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The public address the sink saw (which gateway carries the flow).
    pub exit_ip: Ipv4Addr,
    /// The local port of the flow.
    pub local_port: u16,
    state: Arc<FlowState>,
}

/// A point-in-time view of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSnapshot {
    /// Bytes the sink confirmed.
    pub acked: u64,
    /// Bytes written.
    pub sent: u64,
    /// Why the flow broke (reset, closed), if it did.
    pub error: Option<String>,
    /// Time since the sink last confirmed new bytes.
    pub since_progress: Duration,
}

impl Flow {
    /// Opens a flow from `netns` to the sink at `sink`, sending `rate` bytes/s
    /// for at most `max_duration` (and so at most `rate * max_duration` bytes).
    pub async fn open(
        netns: &str,
        sink: SocketAddrV4,
        rate: u64,
        max_duration: Duration,
    ) -> Result<Flow, TrafficError> {
        Flow::start(netns, sink, Some(rate), max_duration).await
    }

    /// Opens a flow that sends as fast as the path allows for at most `max_duration`.
    pub async fn open_bulk(
        netns: &str,
        sink: SocketAddrV4,
        max_duration: Duration,
    ) -> Result<Flow, TrafficError> {
        Flow::start(netns, sink, None, max_duration).await
    }

    async fn start(
        netns: &str,
        sink: SocketAddrV4,
        rate: Option<u64>,
        max_duration: Duration,
    ) -> Result<Flow, TrafficError> {
        let addr = SocketAddr::V4(sink);
        let stream = connect_in(netns, addr, Duration::from_secs(3)).await?;
        let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        let (read_half, mut write_half) = stream.into_split();
        let mut lines = BufReader::new(read_half).lines();
        let first = tokio::time::timeout(Duration::from_secs(3), lines.next_line())
            .await
            .map_err(|_| TrafficError::Timeout {
                what: "sink greeting".into(),
                after: Duration::from_secs(3),
            })?
            .map_err(|e| TrafficError::Http {
                addr,
                reason: e.to_string(),
            })?
            .unwrap_or_default();
        let exit_ip: Ipv4Addr = first.trim().parse().map_err(|_| TrafficError::Http {
            addr,
            reason: format!("bad sink greeting {first:?}"),
        })?;
        let state = Arc::new(FlowState {
            acked: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            last_progress: Mutex::new(Instant::now()),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let deadline = Instant::now() + max_duration;
        let tick = Duration::from_millis(20);
        let chunk = vec![0x5a_u8; rate.map(|r| (r / 50).max(1) as usize).unwrap_or(64 * 1024)];
        let writer_state = state.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            while !writer_state.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if rate.is_some() {
                    interval.tick().await;
                }
                // A dead path blocks the write once buffers fill; that is not an error.
                match tokio::time::timeout(Duration::from_millis(200), write_half.write_all(&chunk))
                    .await
                {
                    Ok(Ok(())) => {
                        writer_state
                            .sent
                            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        writer_state
                            .error
                            .lock()
                            .expect("lock")
                            .get_or_insert(e.to_string());
                        return;
                    }
                    Err(_) => {}
                }
            }
            let _ = write_half.shutdown().await;
        });
        let reader_state = state.clone();
        tokio::spawn(async move {
            loop {
                let line =
                    tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await;
                if reader_state.stop.load(Ordering::Relaxed)
                    || Instant::now() > deadline + Duration::from_secs(1)
                {
                    return;
                }
                match line {
                    Err(_) => continue,
                    Ok(Ok(Some(l))) => {
                        if let Ok(total) = l.trim().parse::<u64>()
                            && total > reader_state.acked.swap(total, Ordering::Relaxed)
                        {
                            *reader_state.last_progress.lock().expect("lock") = Instant::now();
                        }
                    }
                    Ok(Ok(None)) => {
                        reader_state
                            .error
                            .lock()
                            .expect("lock")
                            .get_or_insert("closed by peer".into());
                        return;
                    }
                    Ok(Err(e)) => {
                        reader_state
                            .error
                            .lock()
                            .expect("lock")
                            .get_or_insert(e.to_string());
                        return;
                    }
                }
            }
        });
        Ok(Flow {
            exit_ip,
            local_port,
            state,
        })
    }

    /// The flow's counters now.
    pub fn snapshot(&self) -> FlowSnapshot {
        FlowSnapshot {
            acked: self.state.acked.load(Ordering::Relaxed),
            sent: self.state.sent.load(Ordering::Relaxed),
            error: self.state.error.lock().expect("lock").clone(),
            since_progress: self.state.last_progress.lock().expect("lock").elapsed(),
        }
    }

    /// Stops sending; the connection closes.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}
