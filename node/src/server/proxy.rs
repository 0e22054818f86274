//! The PROXY protocol v2 header a trusted proxy writes before any byte of its client's (`--proxy-protocol`, HAProxy
//! `send-proxy-v2`): read once per connection, before TLS and HTTP, into the connection's `ConnectionOrigin`.
//!
//! Only peers in `--trusted-proxies` are asked for it, and from them it is required: a connection from a trusted
//! peer without a valid header is closed unanswered (anyone could otherwise skip it and be taken for the proxy).
//! Other peers are served as direct clients, and nothing is read from them. Version 1 (text) is not accepted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use metrics::counter;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

use crate::peer::{ConnectionOrigin, TrustedProxies};

/// Most bytes of addresses and TLVs accepted after the 16-byte fixed part of a PROXY v2 header. HAProxy sends 12
/// (IPv4) or 36 (IPv6) plus a few optional TLVs; cloud balancers add an endpoint id or two.
const MAX_HEADER_PAYLOAD: usize = 1024;

/// Why a PROXY header was not accepted (it only picks the `kind` label of the refusal's count).
#[derive(Debug, thiserror::Error)]
enum ProxyHeaderError {
    #[error("the connection ended before a complete PROXY header: {0}")]
    Closed(#[from] std::io::Error),
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// Reads one PROXY protocol v2 header, and not a byte more, from the start of `stream`. Returns the client
/// address it names, or `None` for a header that names none (the proxy's own `LOCAL` connections such as health
/// checks, and `UNSPEC` or UNIX-socket addresses): then the socket peer stands for itself.
async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    use ppp::v2::{Addresses, Command, Header, PROTOCOL_PREFIX};

    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await?;
    if fixed[..PROTOCOL_PREFIX.len()] != *PROTOCOL_PREFIX {
        return Err(ProxyHeaderError::Invalid(
            "the v2 signature is missing".into(),
        ));
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > MAX_HEADER_PAYLOAD {
        return Err(ProxyHeaderError::Invalid(format!(
            "{length} bytes of addresses and TLVs, more than {MAX_HEADER_PAYLOAD}"
        )));
    }
    let mut header = vec![0u8; fixed.len() + length];
    header[..fixed.len()].copy_from_slice(&fixed);
    stream.read_exact(&mut header[fixed.len()..]).await?;
    let parsed = Header::try_from(header.as_slice())
        .map_err(|error| ProxyHeaderError::Invalid(error.to_string()))?;
    Ok(match (parsed.command, parsed.addresses) {
        (Command::Local, _) => None,
        (Command::Proxy, Addresses::IPv4(addresses)) => Some(SocketAddr::new(
            addresses.source_address.into(),
            addresses.source_port,
        )),
        (Command::Proxy, Addresses::IPv6(addresses)) => Some(SocketAddr::new(
            IpAddr::from(addresses.source_address).to_canonical(),
            addresses.source_port,
        )),
        (Command::Proxy, Addresses::Unspecified | Addresses::Unix(_)) => None,
    })
}

/// The origin of a newly accepted connection. With `expect_header` (`--proxy-protocol`) and a trusted peer, the
/// PROXY header is read within `timeout`; `None` means it was missing or bad, and the caller closes the
/// connection (counted in `im_proxy_protocol_errors_total`).
pub async fn connection_origin<S>(
    stream: &mut S,
    peer: SocketAddr,
    trusted: &TrustedProxies,
    expect_header: bool,
    timeout: Duration,
) -> Option<ConnectionOrigin>
where
    S: AsyncRead + Unpin,
{
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    if !expect_header || !trusted.contains(peer.ip()) {
        return Some(ConnectionOrigin { peer, client: peer });
    }
    let kind = match tokio::time::timeout(timeout, read_header(stream)).await {
        Ok(Ok(client)) => {
            return Some(ConnectionOrigin {
                peer,
                client: client.unwrap_or(peer),
            })
        }
        Ok(Err(ProxyHeaderError::Closed(error))) => {
            debug!(%peer, %error, "connection from a trusted proxy ended before its PROXY header");
            "closed"
        }
        Ok(Err(error)) => {
            debug!(%peer, %error, "bad PROXY header from a trusted proxy");
            "invalid"
        }
        Err(_) => {
            debug!(%peer, "no PROXY header from a trusted proxy in time");
            "timeout"
        }
    };
    counter!("im_proxy_protocol_errors_total", "kind" => kind).increment(1);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, Protocol, Version};

    fn header(command: Command, client: &str, proxy: &str) -> Vec<u8> {
        let client: SocketAddr = client.parse().unwrap();
        let proxy: SocketAddr = proxy.parse().unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (client, proxy))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_proxy_header_names_the_client_and_leaves_the_rest_unread() {
        let mut bytes = header(Command::Proxy, "203.0.113.5:40000", "10.0.0.1:7001");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut reader = bytes.as_slice();
        let client = read_header(&mut reader).await.unwrap();
        assert_eq!(client, Some("203.0.113.5:40000".parse().unwrap()));
        assert_eq!(reader, b"GET / HTTP/1.1\r\n");

        let bytes = header(Command::Proxy, "[2001:db8::5]:1", "[2001:db8::1]:7001");
        let client = read_header(&mut bytes.as_slice()).await.unwrap();
        assert_eq!(client, Some("[2001:db8::5]:1".parse().unwrap()));

        // LOCAL: the proxy speaks for itself.
        let bytes = header(Command::Local, "203.0.113.5:1", "10.0.0.1:7001");
        assert_eq!(read_header(&mut bytes.as_slice()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_proxy_headers_are_refused() {
        let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert!(matches!(
            read_header(&mut plain.as_slice()).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        let whole = header(Command::Proxy, "203.0.113.5:1", "10.0.0.1:7001");
        assert!(matches!(
            read_header(&mut &whole[..whole.len() - 1]).await,
            Err(ProxyHeaderError::Closed(_))
        ));
        let mut huge = whole[..16].to_vec();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            read_header(&mut huge.as_slice()).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
        // Version 1 (text) is not accepted.
        let v1 = b"PROXY TCP4 203.0.113.5 10.0.0.1 1 7001\r\n".to_vec();
        assert!(read_header(&mut v1.as_slice()).await.is_err());
        // A length too short for the addresses its family needs.
        let mut short = whole[..16].to_vec();
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        short.extend_from_slice(&[0; 4]);
        assert!(matches!(
            read_header(&mut short.as_slice()).await,
            Err(ProxyHeaderError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn only_trusted_peers_must_send_a_header() {
        let trusted = TrustedProxies::parse("10.0.0.1").unwrap();
        let timeout = Duration::from_secs(1);
        let plain = b"GET / HTTP/1.1\r\n".to_vec();
        let direct: SocketAddr = "203.0.113.5:1234".parse().unwrap();
        let origin = connection_origin(&mut plain.as_slice(), direct, &trusted, true, timeout)
            .await
            .unwrap();
        assert_eq!(origin.client, direct);
        let proxy: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        assert!(
            connection_origin(&mut plain.as_slice(), proxy, &trusted, true, timeout)
                .await
                .is_none()
        );
        let bytes = header(Command::Proxy, "198.51.100.7:9", "10.0.0.2:7001");
        let origin = connection_origin(&mut bytes.as_slice(), proxy, &trusted, true, timeout)
            .await
            .unwrap();
        assert_eq!(origin.peer, proxy);
        assert_eq!(origin.client, "198.51.100.7:9".parse().unwrap());
        // Without --proxy-protocol nothing is read, even from a trusted peer.
        let origin = connection_origin(&mut plain.as_slice(), proxy, &trusted, false, timeout)
            .await
            .unwrap();
        assert_eq!(origin.client, proxy);
    }
}
