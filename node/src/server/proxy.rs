//! Trusted proxies: who the client is when the node stands behind a load balancer.
//!
//! A connection's socket peer is the client only when nothing stands in between. Behind HAProxy, an ingress or a
//! cloud balancer the peer is the proxy, and every client would share its address in the per-address login
//! throttle, in logs and in metrics. Two carriers of the real address exist, and both are believed only from peers
//! listed in `--trusted-proxies` (anyone else could forge them):
//!
//! - PROXY protocol v2 (`--proxy-protocol`): a binary header the proxy writes before any byte of the client's,
//!   read once per connection (`connection_origin`). A trusted peer must send it, and a connection from a trusted
//!   peer without a valid header is closed; other peers are served as direct clients and nothing is read from them.
//! - `X-Forwarded-For`, per request (`TrustedProxies::client_address`): walked from the right, each hop believed
//!   only while the address that handed it over is trusted; the first untrusted address is the client.
//!
//! This module only finds the address. What it is used for (throttle keys, logs, metrics) belongs to its users.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use metrics::counter;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

/// Most bytes of addresses and TLVs accepted after the 16-byte fixed part of a PROXY v2 header. HAProxy sends 12
/// (IPv4) or 36 (IPv6) plus a few optional TLVs; cloud balancers add an endpoint id or two.
const MAX_HEADER_PAYLOAD: usize = 1024;

/// One IP network of the trusted list (a single address is a network with a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    /// The network address, already masked to `prefix` bits and in canonical form (IPv4-mapped IPv6 as IPv4).
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address = address
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is neither an IP address nor a CIDR network"))?
            .to_canonical();
        let longest = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= longest)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={longest}"))?,
        };
        Ok(Network {
            address: masked(address, prefix),
            prefix,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.address.is_ipv4() && masked(ip, self.prefix) == self.address
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// The peers whose forwarding information is believed (`--trusted-proxies`). Empty by default: then every
/// connection's peer is its client and forwarding headers are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<Network>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of IP addresses and CIDR networks; empty entries are skipped.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let networks = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(Network::parse)
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }

    /// The client of a request that `sender` handed over with these `X-Forwarded-For` values (every header line,
    /// in order). Hops are taken from the right while the address that added them is trusted, so a client cannot
    /// push a forged address past the proxies; an unreadable hop ends the walk at the proxy that passed it on.
    pub fn client_address<'a>(
        &self,
        sender: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let mut client = sender.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|value| value.split(',')).collect();
        for hop in hops.into_iter().rev() {
            if !self.contains(client) {
                break;
            }
            match parse_hop(hop) {
                Some(ip) => client = ip,
                None => break,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (some proxies add it; IPv6 then in brackets).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

/// Where a connection comes from: its socket peer, and the client it speaks for (the peer itself, or the address
/// a trusted proxy's PROXY header named). Put into every request's extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOrigin {
    pub peer: SocketAddr,
    pub client: SocketAddr,
}

/// Why a PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection ended before a complete PROXY header: {0}")]
    Closed(#[from] std::io::Error),
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(String),
}

/// Reads one PROXY protocol v2 header, and not a byte more, from the start of `stream`. Returns the client
/// address it names, or `None` for a header that names none (the proxy's own `LOCAL` connections such as health
/// checks, and `UNSPEC` or UNIX-socket addresses): then the socket peer stands for itself.
pub async fn read_header<S>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError>
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

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn header(command: Command, client: &str, proxy: &str) -> Vec<u8> {
        let client: SocketAddr = client.parse().unwrap();
        let proxy: SocketAddr = proxy.parse().unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (client, proxy))
            .build()
            .unwrap()
    }

    #[test]
    fn networks_match_addresses_and_prefixes() {
        let trusted =
            TrustedProxies::parse(" 10.0.0.0/8, 192.0.2.7,,2001:db8::/32 , ::ffff:198.51.100.1")
                .unwrap();
        assert!(trusted.contains(ip("10.255.1.2")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("192.0.2.7")));
        assert!(!trusted.contains(ip("192.0.2.8")));
        assert!(trusted.contains(ip("2001:db8:1::5")));
        assert!(!trusted.contains(ip("2001:db9::5")));
        // IPv4-mapped IPv6 (a dual-stack listener's peers) is the IPv4 address, both ways.
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(trusted.contains(ip("198.51.100.1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("203.0.113.9")));
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "proxy.example",
            "10.0.0.1/x",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_hops() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let client = |sender: &str, values: &[&str]| {
            trusted.client_address(ip(sender), values.iter().copied())
        };
        // An untrusted sender: its header is ignored.
        assert_eq!(client("203.0.113.5", &["198.51.100.1"]), ip("203.0.113.5"));
        // Through one trusted proxy.
        assert_eq!(client("10.0.0.2", &["203.0.113.5"]), ip("203.0.113.5"));
        // A client's forged entry stays left of the address the proxy saw.
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4, 203.0.113.5"]),
            ip("203.0.113.5")
        );
        // Two trusted proxies, over two header lines, with ports.
        assert_eq!(
            client("10.0.0.2", &["1.2.3.4, 203.0.113.5:4711", "10.0.0.9"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            client("10.0.0.2", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        // Only trusted hops: the left-most is the best there is.
        assert_eq!(client("10.0.0.2", &["10.0.0.3, 10.0.0.4"]), ip("10.0.0.3"));
        // Garbage ends the walk at the proxy that passed it on; no header leaves the proxy itself.
        assert_eq!(client("10.0.0.2", &["1.2.3.4, junk"]), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.2", &[]), ip("10.0.0.2"));
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
