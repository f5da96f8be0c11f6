//! NAT-PMP client (RFC 6886) for `auto` port-forwards: asks the VPN
//! provider's NAT gateway (through the tunnel) for the public address and
//! one port mapping, renews it at half its lifetime, follows a changed
//! external port or a server that lost its state (epoch reset), and deletes
//! the mapping on stop.
//!
//! Three layers: the wire format ([`Request::encode`], [`Response::decode`]),
//! a pure state machine ([`PortMapper::step`]) that turns inputs (start,
//! response, timer, stop) into actions (send, publish, event), and a thin
//! socket edge ([`run`]) that executes them. Written by hand: NAT-PMP is a
//! dozen bytes per message and no kept library speaks it.
//!
//! Unsolicited address announcements (multicast to 224.0.0.1:5350) are not
//! listened for: through a VPN tunnel they do not arrive; a changed address
//! or a rebooted server is noticed at the next renewal instead.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The NAT-PMP server port (RFC 6886 §3.1).
pub const SERVER_PORT: u16 = 5351;

/// Transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP (opcode 1).
    Udp,
    /// TCP (opcode 2).
    Tcp,
}

impl Protocol {
    fn opcode(self) -> u8 {
        match self {
            Protocol::Udp => 1,
            Protocol::Tcp => 2,
        }
    }
}

/// A request to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Opcode 0: what is the public address?
    PublicAddress,
    /// Opcodes 1/2: map `internal_port` for `lifetime` seconds (0 deletes).
    Map {
        /// UDP or TCP.
        protocol: Protocol,
        /// Port on this host.
        internal_port: u16,
        /// External port asked for (0: any).
        suggested_external_port: u16,
        /// Seconds; 0 deletes the mapping.
        lifetime: u32,
    },
}

impl Request {
    /// The request's bytes (version 0).
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Request::PublicAddress => vec![0, 0],
            Request::Map {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => {
                let mut v = vec![0, protocol.opcode(), 0, 0];
                v.extend_from_slice(&internal_port.to_be_bytes());
                v.extend_from_slice(&suggested_external_port.to_be_bytes());
                v.extend_from_slice(&lifetime.to_be_bytes());
                v
            }
        }
    }
}

/// A response's result code (RFC 6886 §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    /// 0.
    Success,
    /// 1.
    UnsupportedVersion,
    /// 2: the gateway does not allow this client to map ports.
    NotAuthorized,
    /// 3: e.g. the gateway has no public address yet.
    NetworkFailure,
    /// 4: no port or mapping left.
    OutOfResources,
    /// 5.
    UnsupportedOpcode,
    /// Anything else.
    Other(u16),
}

impl From<u16> for ResultCode {
    fn from(code: u16) -> Self {
        match code {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            other => ResultCode::Other(other),
        }
    }
}

/// A decoded response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Answer to [`Request::PublicAddress`].
    PublicAddress {
        /// Result.
        result: ResultCode,
        /// Seconds since the server's epoch started (its state began).
        epoch: u32,
        /// The public address.
        address: Ipv4Addr,
    },
    /// Answer to [`Request::Map`].
    Map {
        /// Result.
        result: ResultCode,
        /// Seconds since the server's epoch started.
        epoch: u32,
        /// UDP or TCP.
        protocol: Protocol,
        /// Echo of the internal port.
        internal_port: u16,
        /// The external port granted.
        external_port: u16,
        /// Seconds granted.
        lifetime: u32,
    },
}

impl Response {
    fn epoch(&self) -> u32 {
        match *self {
            Response::PublicAddress { epoch, .. } | Response::Map { epoch, .. } => epoch,
        }
    }
}

/// A datagram that is not a NAT-PMP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short for its opcode.
    #[error("NAT-PMP response of {0} bytes is truncated")]
    Truncated(usize),
    /// Version other than 0.
    #[error("NAT-PMP version {0} is not supported")]
    Version(u8),
    /// Not a response opcode (128 + 0..2).
    #[error("NAT-PMP opcode {0} is not a response")]
    Opcode(u8),
}

impl Response {
    /// Decodes a datagram from the server.
    pub fn decode(b: &[u8]) -> Result<Response, WireError> {
        if b.len() < 8 {
            return Err(WireError::Truncated(b.len()));
        }
        if b[0] != 0 {
            return Err(WireError::Version(b[0]));
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let result = ResultCode::from(u16_at(2));
        let epoch = u32_at(4);
        let protocol = match b[1] {
            128 if b.len() >= 12 => {
                let address = Ipv4Addr::new(b[8], b[9], b[10], b[11]);
                return Ok(Response::PublicAddress {
                    result,
                    epoch,
                    address,
                });
            }
            129 => Protocol::Udp,
            130 => Protocol::Tcp,
            128 => return Err(WireError::Truncated(b.len())),
            op => return Err(WireError::Opcode(op)),
        };
        if b.len() < 16 {
            return Err(WireError::Truncated(b.len()));
        }
        Ok(Response::Map {
            result,
            epoch,
            protocol,
            internal_port: u16_at(8),
            external_port: u16_at(10),
            lifetime: u32_at(12),
        })
    }
}

/// What to map and how persistently to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapperConfig {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// Port on this host (ProtonVPN: any, conventionally 1).
    pub internal_port: u16,
    /// External port asked for the first time (0: the server's choice); renewals ask for the granted one.
    pub suggested_external_port: u16,
    /// Lifetime asked for, seconds (ProtonVPN grants 60).
    pub lifetime: u32,
    /// Sends per request before giving up (RFC: up to 9); 250 ms, doubling.
    pub attempts: u32,
    /// First retransmission timeout (RFC: 250 ms).
    pub initial_timeout: Duration,
    /// Pause after a refused or unanswered request before the next try.
    pub retry_after: Duration,
}

impl MapperConfig {
    /// A mapping of `internal_port` with the defaults: 60 s lifetime, 6
    /// sends (≈ 16 s, well inside half a lifetime), retry after 5 s.
    pub fn new(protocol: Protocol, internal_port: u16) -> Self {
        MapperConfig {
            protocol,
            internal_port,
            suggested_external_port: 0,
            lifetime: 60,
            attempts: 6,
            initial_timeout: Duration::from_millis(250),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// The public endpoint a mapping gives: what the gateway publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PublicEndpoint {
    /// The provider's public address.
    pub address: Ipv4Addr,
    /// The external port.
    pub port: u16,
    /// UDP or TCP.
    pub protocol: Protocol,
}

/// Inputs of [`PortMapper::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Begin: ask for the address, then the mapping.
    Start,
    /// A decoded datagram from the server.
    Response(Response),
    /// The time [`PortMapper::deadline`] named has come.
    Timer,
    /// Delete the mapping and finish.
    Stop,
}

/// Outputs of [`PortMapper::step`], executed by the edge in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request to the server.
    Send(Request),
    /// The public endpoint changed (None: there is none now).
    Publish(Option<PublicEndpoint>),
    /// Something worth a log line or a metric.
    Event(MapperEvent),
}

/// Things that happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapperEvent {
    /// A mapping was granted or renewed.
    Mapped {
        /// External port.
        port: u16,
        /// Seconds granted.
        lifetime: u32,
    },
    /// A renewal came back with another external port.
    PortChanged {
        /// The previous port.
        from: u16,
        /// The new port.
        to: u16,
    },
    /// The server's epoch went back: it lost its mappings (rebooted).
    EpochReset,
    /// The server answered with an error.
    Refused(ResultCode),
    /// No answer after every retransmission.
    NoResponse,
    /// The mapping's lifetime ran out before a renewal succeeded.
    Expired,
    /// The mapping was deleted on stop.
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Address,
    Map,
    Delete,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    step: Step,
    sent: u32,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Granted {
    port: u16,
    expires: Instant,
}

/// The client's state. Pure: the caller supplies time and datagrams.
#[derive(Debug, Clone)]
pub struct PortMapper {
    config: MapperConfig,
    address: Option<Ipv4Addr>,
    granted: Option<Granted>,
    epoch: Option<(u32, Instant)>,
    pending: Option<Pending>,
    next_cycle: Option<Instant>,
    stopping: bool,
    stopped: bool,
    published: Option<PublicEndpoint>,
}

impl PortMapper {
    /// A mapper that has not started.
    pub fn new(config: MapperConfig) -> Self {
        PortMapper {
            config,
            address: None,
            granted: None,
            epoch: None,
            pending: None,
            next_cycle: None,
            stopping: false,
            stopped: false,
            published: None,
        }
    }

    /// When to call [`step`](Self::step) with [`Input::Timer`] next.
    pub fn deadline(&self) -> Option<Instant> {
        let pending = self.pending.map(|p| p.deadline);
        let expiry = self.granted.map(|g| g.expires);
        [pending, self.next_cycle, expiry]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the mapper has finished (stopped and deleted, or given up deleting).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The endpoint currently published.
    pub fn published(&self) -> Option<PublicEndpoint> {
        self.published
    }

    /// Advances the state machine at time `now`.
    pub fn step(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        match input {
            Input::Start => self.send(now, Step::Address, &mut out),
            Input::Response(r) => self.on_response(now, r, &mut out),
            Input::Timer => self.on_timer(now, &mut out),
            Input::Stop => self.on_stop(now, &mut out),
        }
        self.publish(&mut out);
        out
    }

    fn request(&self, step: Step) -> Request {
        let c = &self.config;
        match step {
            Step::Address => Request::PublicAddress,
            Step::Map => Request::Map {
                protocol: c.protocol,
                internal_port: c.internal_port,
                suggested_external_port: self.granted.map_or(c.suggested_external_port, |g| g.port),
                lifetime: c.lifetime,
            },
            Step::Delete => Request::Map {
                protocol: c.protocol,
                internal_port: c.internal_port,
                suggested_external_port: 0,
                lifetime: 0,
            },
        }
    }

    fn send(&mut self, now: Instant, step: Step, out: &mut Vec<Action>) {
        self.pending = Some(Pending {
            step,
            sent: 1,
            deadline: now + self.config.initial_timeout,
        });
        self.next_cycle = None;
        out.push(Action::Send(self.request(step)));
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(g) = self.granted
            && now >= g.expires
        {
            self.granted = None;
            out.push(Action::Event(MapperEvent::Expired));
        }
        if let Some(p) = self.pending
            && now >= p.deadline
        {
            let attempts = if p.step == Step::Delete {
                self.config.attempts.min(3)
            } else {
                self.config.attempts
            };
            if p.sent < attempts {
                let timeout = self.config.initial_timeout * 2u32.saturating_pow(p.sent);
                self.pending = Some(Pending {
                    sent: p.sent + 1,
                    deadline: now + timeout,
                    ..p
                });
                out.push(Action::Send(self.request(p.step)));
            } else {
                self.pending = None;
                out.push(Action::Event(MapperEvent::NoResponse));
                self.after_failure(now);
            }
        }
        if self.pending.is_none() && self.next_cycle.is_some_and(|t| now >= t) {
            self.send(now, Step::Address, out);
        }
    }

    fn after_failure(&mut self, now: Instant) {
        if self.stopping {
            self.finish();
        } else {
            self.next_cycle = Some(now + self.config.retry_after);
        }
    }

    fn finish(&mut self) {
        self.stopped = true;
        self.granted = None;
        self.pending = None;
        self.next_cycle = None;
    }

    fn on_stop(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.stopping = true;
        let mapping_may_exist =
            self.granted.is_some() || self.pending.is_some_and(|p| p.step == Step::Map);
        if mapping_may_exist {
            self.send(now, Step::Delete, out);
        } else {
            self.finish();
        }
    }

    /// Whether `r` answers the request in flight (stale or foreign datagrams are ignored).
    fn answers(&self, r: &Response) -> Option<Step> {
        let p = self.pending?;
        let matches = match (p.step, r) {
            (Step::Address, Response::PublicAddress { .. }) => true,
            (
                Step::Map | Step::Delete,
                Response::Map {
                    protocol,
                    internal_port,
                    ..
                },
            ) => *protocol == self.config.protocol && *internal_port == self.config.internal_port,
            _ => false,
        };
        matches.then_some(p.step)
    }

    fn on_response(&mut self, now: Instant, r: Response, out: &mut Vec<Action>) {
        let Some(step) = self.answers(&r) else { return };
        self.pending = None;
        self.check_epoch(now, r.epoch(), out);
        match (step, r) {
            (Step::Delete, _) => {
                out.push(Action::Event(MapperEvent::Deleted));
                self.finish();
            }
            (
                _,
                Response::PublicAddress {
                    result: ResultCode::Success,
                    address,
                    ..
                },
            ) => {
                self.address = Some(address);
                self.send(now, Step::Map, out);
            }
            (
                _,
                Response::Map {
                    result: ResultCode::Success,
                    external_port,
                    lifetime,
                    ..
                },
            ) if lifetime > 0 => {
                self.granted_mapping(now, external_port, lifetime, out);
            }
            (_, Response::PublicAddress { result, .. } | Response::Map { result, .. }) => {
                out.push(Action::Event(MapperEvent::Refused(result)));
                self.after_failure(now);
            }
        }
    }

    fn granted_mapping(&mut self, now: Instant, port: u16, lifetime: u32, out: &mut Vec<Action>) {
        if let Some(old) = self.granted
            && old.port != port
        {
            out.push(Action::Event(MapperEvent::PortChanged {
                from: old.port,
                to: port,
            }));
        }
        let life = Duration::from_secs(u64::from(lifetime));
        self.granted = Some(Granted {
            port,
            expires: now + life,
        });
        self.next_cycle = Some(now + (life / 2).max(Duration::from_secs(1)));
        out.push(Action::Event(MapperEvent::Mapped { port, lifetime }));
    }

    /// RFC 6886 §3.6: the server's epoch must advance at least 7/8 as fast
    /// as the client's clock (minus 2 s of slack); less means it lost state.
    fn check_epoch(&mut self, now: Instant, epoch: u32, out: &mut Vec<Action>) {
        if let Some((previous, at)) = self.epoch {
            let client_delta = now.saturating_duration_since(at).as_secs();
            let expected = u64::from(previous) + client_delta * 7 / 8;
            if u64::from(epoch) + 2 < expected || epoch < previous {
                out.push(Action::Event(MapperEvent::EpochReset));
            }
        }
        self.epoch = Some((epoch, now));
    }

    fn publish(&mut self, out: &mut Vec<Action>) {
        let current = match (self.address, self.granted, self.stopped) {
            (Some(address), Some(g), false) => Some(PublicEndpoint {
                address,
                port: g.port,
                protocol: self.config.protocol,
            }),
            _ => None,
        };
        if current != self.published {
            self.published = current;
            out.push(Action::Publish(current));
        }
    }
}

/// The socket edge failed.
#[derive(Debug, thiserror::Error)]
pub enum NatPmpError {
    /// The UDP socket could not be opened.
    #[error("cannot open a UDP socket to the NAT-PMP server {server}: {source}")]
    Socket {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the socket edge reports while it runs: the endpoint to publish
/// (agent `/port-forward`, MaskGateway status) and counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MappingStatus {
    /// The public endpoint, while a mapping is held.
    pub endpoint: Option<PublicEndpoint>,
    /// Mappings granted (first grant and renewals).
    pub grants: u64,
    /// Renewals that came back with another external port.
    pub port_changes: u64,
    /// Times the server was seen to have lost its state.
    pub epoch_resets: u64,
    /// The last problem (refusal, no response, expiry), as text.
    pub last_problem: Option<String>,
}

impl MappingStatus {
    fn apply(&mut self, action: &Action) {
        match action {
            Action::Send(_) => {}
            Action::Publish(endpoint) => self.endpoint = *endpoint,
            Action::Event(MapperEvent::Mapped { .. }) => self.grants += 1,
            Action::Event(MapperEvent::PortChanged { .. }) => self.port_changes += 1,
            Action::Event(MapperEvent::EpochReset) => self.epoch_resets += 1,
            Action::Event(MapperEvent::Deleted) => {}
            Action::Event(problem) => self.last_problem = Some(format!("{problem:?}")),
        }
    }
}

/// Runs a [`PortMapper`] against `server` (the provider's gateway, port
/// [`SERVER_PORT`]) until `stop` completes and the mapping is deleted (or
/// deleting it was given up); every change goes to `status`.
pub async fn run(
    server: SocketAddr,
    config: MapperConfig,
    status: tokio::sync::watch::Sender<MappingStatus>,
    stop: impl Future<Output = ()>,
) -> Result<(), NatPmpError> {
    let fail = |source| NatPmpError::Socket { server, source };
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(fail)?;
    socket.connect(server).await.map_err(fail)?;
    let mut mapper = PortMapper::new(config);
    execute(&socket, &status, mapper.step(Instant::now(), Input::Start)).await;
    tokio::pin!(stop);
    let mut stop_seen = false;
    let mut buf = [0u8; 64];
    while !mapper.is_stopped() {
        let deadline = mapper.deadline().map(tokio::time::Instant::from_std);
        let input = tokio::select! {
            () = &mut stop, if !stop_seen => { stop_seen = true; Input::Stop }
            r = socket.recv(&mut buf) => match r.map(|n| Response::decode(&buf[..n])) {
                Ok(Ok(response)) => Input::Response(response),
                Ok(Err(e)) => { tracing::debug!(%server, error = %e, "ignoring a datagram"); continue }
                // ICMP port unreachable and the like: the retransmit timer covers it.
                Err(e) => { tracing::debug!(%server, error = %e, "NAT-PMP receive failed"); continue }
            },
            () = sleep_until(deadline) => Input::Timer,
        };
        execute(&socket, &status, mapper.step(Instant::now(), input)).await;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn execute(
    socket: &tokio::net::UdpSocket,
    status: &tokio::sync::watch::Sender<MappingStatus>,
    actions: Vec<Action>,
) {
    for action in &actions {
        match action {
            Action::Send(request) => {
                if let Err(e) = socket.send(&request.encode()).await {
                    tracing::warn!(error = %e, "cannot send a NAT-PMP request");
                }
            }
            Action::Publish(Some(e)) => {
                tracing::info!(address = %e.address, port = e.port, "port forward published")
            }
            Action::Publish(None) => tracing::info!("port forward withdrawn"),
            Action::Event(MapperEvent::Mapped { port, lifetime }) => {
                tracing::debug!(port, lifetime, "NAT-PMP mapping granted")
            }
            Action::Event(event) => tracing::warn!(?event, "NAT-PMP"),
        }
    }
    if actions.iter().any(|a| !matches!(a, Action::Send(_))) {
        status.send_modify(|s| actions.iter().for_each(|a| s.apply(a)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn config() -> MapperConfig {
        MapperConfig {
            lifetime: 60,
            ..MapperConfig::new(Protocol::Tcp, 1)
        }
    }

    fn address(epoch: u32) -> Input {
        Input::Response(Response::PublicAddress {
            result: ResultCode::Success,
            epoch,
            address: PUBLIC,
        })
    }

    fn mapped(epoch: u32, port: u16, lifetime: u32) -> Input {
        Input::Response(Response::Map {
            result: ResultCode::Success,
            epoch,
            protocol: Protocol::Tcp,
            internal_port: 1,
            external_port: port,
            lifetime,
        })
    }

    fn endpoint(port: u16) -> Action {
        Action::Publish(Some(PublicEndpoint {
            address: PUBLIC,
            port,
            protocol: Protocol::Tcp,
        }))
    }

    fn map_request(suggested: u16, lifetime: u32) -> Action {
        Action::Send(Request::Map {
            protocol: Protocol::Tcp,
            internal_port: 1,
            suggested_external_port: suggested,
            lifetime,
        })
    }

    /// Start, address, mapping of `port` at t0; returns the mapper and t0.
    fn mapped_at(port: u16) -> (PortMapper, Instant) {
        let t0 = Instant::now();
        let mut m = PortMapper::new(config());
        assert_eq!(
            m.step(t0, Input::Start),
            vec![Action::Send(Request::PublicAddress)]
        );
        assert_eq!(m.step(t0, address(100)), vec![map_request(0, 60)]);
        let out = m.step(t0, mapped(100, port, 60));
        assert_eq!(
            out,
            vec![
                Action::Event(MapperEvent::Mapped { port, lifetime: 60 }),
                endpoint(port)
            ]
        );
        (m, t0)
    }

    #[test]
    fn wire_format_round_trips_rfc_layouts() {
        assert_eq!(Request::PublicAddress.encode(), vec![0, 0]);
        let map = Request::Map {
            protocol: Protocol::Udp,
            internal_port: 1,
            suggested_external_port: 0,
            lifetime: 60,
        };
        assert_eq!(map.encode(), vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 60]);
        let addr = [0, 128, 0, 0, 0, 0, 1, 0, 198, 51, 100, 7];
        assert_eq!(
            Response::decode(&addr),
            Ok(Response::PublicAddress {
                result: ResultCode::Success,
                epoch: 256,
                address: PUBLIC
            })
        );
        let map = [0, 130, 0, 4, 0, 0, 0, 9, 0, 1, 0xc3, 0x50, 0, 0, 0, 60];
        assert_eq!(
            Response::decode(&map),
            Ok(Response::Map {
                result: ResultCode::OutOfResources,
                epoch: 9,
                protocol: Protocol::Tcp,
                internal_port: 1,
                external_port: 50000,
                lifetime: 60
            })
        );
        assert_eq!(Response::decode(&map[..12]), Err(WireError::Truncated(12)));
        assert_eq!(
            Response::decode(&[1, 128, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Version(1))
        );
        assert_eq!(
            Response::decode(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Opcode(1))
        );
    }

    #[test]
    fn renews_at_half_the_lifetime_asking_for_the_granted_port() {
        let (mut m, t0) = mapped_at(40000);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            m.step(t1, Input::Timer),
            vec![Action::Send(Request::PublicAddress)]
        );
        assert_eq!(m.step(t1, address(130)), vec![map_request(40000, 60)]);
        // Same port again: nothing new to publish.
        assert_eq!(
            m.step(t1, mapped(130, 40000, 60)),
            vec![Action::Event(MapperEvent::Mapped {
                port: 40000,
                lifetime: 60
            })]
        );
    }

    #[test]
    fn follows_a_changed_port() {
        let (mut m, t0) = mapped_at(40000);
        let t1 = t0 + Duration::from_secs(30);
        m.step(t1, Input::Timer);
        m.step(t1, address(130));
        let out = m.step(t1, mapped(130, 40001, 60));
        assert_eq!(
            out,
            vec![
                Action::Event(MapperEvent::PortChanged {
                    from: 40000,
                    to: 40001
                }),
                Action::Event(MapperEvent::Mapped {
                    port: 40001,
                    lifetime: 60
                }),
                endpoint(40001),
            ]
        );
    }

    #[test]
    fn notices_an_epoch_reset() {
        let (mut m, t0) = mapped_at(40000);
        let t1 = t0 + Duration::from_secs(30);
        m.step(t1, Input::Timer);
        // 30 s later the server says its epoch is 3 s old: it rebooted.
        let out = m.step(t1, address(3));
        assert_eq!(
            out,
            vec![
                Action::Event(MapperEvent::EpochReset),
                map_request(40000, 60)
            ]
        );
        // An epoch that advanced normally is no reset.
        let (mut m, t0) = mapped_at(40000);
        let t1 = t0 + Duration::from_secs(30);
        m.step(t1, Input::Timer);
        assert_eq!(m.step(t1, address(129)), vec![map_request(40000, 60)]);
    }

    #[test]
    fn retransmits_with_doubling_timeouts_then_retries_later() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(MapperConfig {
            attempts: 3,
            ..config()
        });
        m.step(t0, Input::Start);
        assert_eq!(m.deadline(), Some(t0 + Duration::from_millis(250)));
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            m.step(t1, Input::Timer),
            vec![Action::Send(Request::PublicAddress)]
        );
        assert_eq!(m.deadline(), Some(t1 + Duration::from_millis(500)));
        let t2 = t1 + Duration::from_millis(500);
        assert_eq!(
            m.step(t2, Input::Timer),
            vec![Action::Send(Request::PublicAddress)]
        );
        let t3 = t2 + Duration::from_millis(1000);
        assert_eq!(
            m.step(t3, Input::Timer),
            vec![Action::Event(MapperEvent::NoResponse)]
        );
        assert_eq!(m.deadline(), Some(t3 + Duration::from_secs(5)));
        assert_eq!(
            m.step(t3 + Duration::from_secs(5), Input::Timer),
            vec![Action::Send(Request::PublicAddress)]
        );
    }

    #[test]
    fn withdraws_an_expired_mapping() {
        let (mut m, t0) = mapped_at(40000);
        let t1 = t0 + Duration::from_secs(30);
        m.step(t1, Input::Timer);
        // The server stays silent past the expiry (60 s).
        let mut now = t1;
        let mut withdrawn = false;
        for _ in 0..40 {
            now = m.deadline().unwrap();
            let out = m.step(now, Input::Timer);
            if out.contains(&Action::Event(MapperEvent::Expired)) {
                assert!(out.contains(&Action::Publish(None)));
                withdrawn = true;
                break;
            }
        }
        assert!(withdrawn, "expired by {:?}", now - t0);
        assert_eq!(now, t0 + Duration::from_secs(60));
        assert_eq!(m.published(), None);
    }

    #[test]
    fn refusal_is_reported_and_retried() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(config());
        m.step(t0, Input::Start);
        m.step(t0, address(1));
        let refused = Input::Response(Response::Map {
            result: ResultCode::NotAuthorized,
            epoch: 1,
            protocol: Protocol::Tcp,
            internal_port: 1,
            external_port: 0,
            lifetime: 0,
        });
        assert_eq!(
            m.step(t0, refused),
            vec![Action::Event(MapperEvent::Refused(
                ResultCode::NotAuthorized
            ))]
        );
        assert_eq!(m.deadline(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn ignores_answers_to_other_requests() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(config());
        m.step(t0, Input::Start);
        assert_eq!(m.step(t0, mapped(1, 40000, 60)), vec![]);
        m.step(t0, address(1));
        let udp = Input::Response(Response::Map {
            result: ResultCode::Success,
            epoch: 1,
            protocol: Protocol::Udp,
            internal_port: 1,
            external_port: 40000,
            lifetime: 60,
        });
        assert_eq!(m.step(t0, udp), vec![]);
    }

    #[test]
    fn stop_deletes_the_mapping() {
        let (mut m, t0) = mapped_at(40000);
        let out = m.step(t0, Input::Stop);
        assert_eq!(out, vec![map_request(0, 0)]);
        let out = m.step(t0, mapped(101, 0, 0));
        assert_eq!(
            out,
            vec![Action::Event(MapperEvent::Deleted), Action::Publish(None)]
        );
        assert!(m.is_stopped());
        assert_eq!(m.step(t0, Input::Start), vec![]);
        // Without a mapping, stop finishes at once.
        let mut idle = PortMapper::new(config());
        assert_eq!(idle.step(t0, Input::Stop), vec![]);
        assert!(idle.is_stopped());
    }

    #[test]
    fn stop_gives_up_deleting_after_three_sends() {
        let (mut m, t0) = mapped_at(40000);
        m.step(t0, Input::Stop);
        let mut sends = 1;
        while !m.is_stopped() {
            let now = m.deadline().unwrap();
            sends += m
                .step(now, Input::Timer)
                .iter()
                .filter(|a| matches!(a, Action::Send(_)))
                .count();
        }
        assert_eq!(sends, 3);
        assert_eq!(m.published(), None);
    }
}
