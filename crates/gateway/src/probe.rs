//! The probe: an HTTP GET through the tunnel (the socket is bound to the
//! tunnel interface, so it can never take another path).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Largest probe response body read.
const MAX_BODY: usize = 4096;

/// A parsed probe URL: `http://IP[:PORT]/PATH`. Host names are refused: the
/// resolver would ask DNS outside the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUrl {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Request path and query.
    pub path: String,
    /// The URL as given.
    pub text: String,
}

impl std::str::FromStr for ProbeUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let uri: hyper::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err("only http:// probe URLs are supported".into());
        }
        let host = uri.host().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host.parse().map_err(|_| {
            format!(
                "host {host:?} must be an IP address (a name would be resolved outside the tunnel)"
            )
        })?;
        Ok(ProbeUrl {
            addr: SocketAddr::new(ip, uri.port_u16().unwrap_or(80)),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            text: text.to_string(),
        })
    }
}

/// A successful probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSuccess {
    /// The body, trimmed, when it parses as an IP address (the echo service's
    /// answer: our public address).
    pub public_ip: Option<IpAddr>,
    /// Time from connect to the end of the body.
    pub latency: Duration,
}

/// Fetches `url` through `device` within `timeout`.
pub async fn probe(
    url: &ProbeUrl,
    device: &str,
    timeout: Duration,
) -> Result<ProbeSuccess, String> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, fetch(url, device)).await {
        Ok(Ok(body)) => Ok(ProbeSuccess {
            public_ip: body.trim().parse().ok(),
            latency: started.elapsed(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no answer from {} within {}ms",
            url.text,
            timeout.as_millis()
        )),
    }
}

async fn fetch(url: &ProbeUrl, device: &str) -> Result<String, String> {
    let socket = match url.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind_device(Some(device.as_bytes()))
        .map_err(|e| format!("bind to {device}: {e}"))?;
    let stream = socket
        .connect(url.addr)
        .await
        .map_err(|e| format!("connect {} via {device}: {e}", url.addr))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(url.path.as_str())
        .header(hyper::header::HOST, url.addr.to_string())
        .header(hyper::header::USER_AGENT, "vpn-operator-gateway-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"));
    let result = match response {
        Ok(response) if response.status().is_success() => {
            match Limited::new(response.into_body(), MAX_BODY).collect().await {
                Ok(body) => Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned()),
                Err(e) => Err(format!("reading body: {e}")),
            }
        }
        Ok(response) => Err(format!("{} answered {}", url.text, response.status())),
        Err(e) => Err(e),
    };
    connection.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_urls_and_refuses_names() {
        let url: ProbeUrl = "http://203.0.113.10/".parse().unwrap();
        assert_eq!(url.addr, "203.0.113.10:80".parse().unwrap());
        assert_eq!(url.path, "/");
        let url: ProbeUrl = "http://[2001:db8::1]:8080/ip?x=1".parse().unwrap();
        assert_eq!(url.addr, "[2001:db8::1]:8080".parse().unwrap());
        assert_eq!(url.path, "/ip?x=1");
        assert!(
            "http://echo.example/"
                .parse::<ProbeUrl>()
                .unwrap_err()
                .contains("IP address")
        );
        assert!(
            "https://203.0.113.10/"
                .parse::<ProbeUrl>()
                .unwrap_err()
                .contains("http://")
        );
    }
}
