//! The client's address as a request carries it, and whose word on it is believed.
//!
//! A connection's socket peer is the client only when nothing stands in between. Behind HAProxy, an ingress or a
//! cloud balancer the peer is the proxy, and every client would share its address in the per-address login
//! throttle, in logs and in metrics. `TrustedProxies` (`--trusted-proxies`) lists the peers whose forwarding
//! information is believed; anyone else could forge it. The listener reads a trusted peer's PROXY v2 header
//! (`server::proxy`) into the connection's `ConnectionOrigin`; `observe::access` applies a trusted hop's
//! `X-Forwarded-For` (`TrustedProxies::client_address`) and leaves the result in `PeerAddr`, which handlers use.
//!
//! Pure: no I/O. What the address is used for belongs to its users.

use std::net::{IpAddr, SocketAddr};

use crate::error::Error;

/// The client's address: put into each request's extensions by the accept loop (the PROXY header's client behind a
/// trusted proxy) and refined by `observe::access` (`X-Forwarded-For` from trusted proxies). A forwarded address
/// has no port (0).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Where a connection comes from: its socket peer, and the client it speaks for (the peer itself, or the address
/// a trusted proxy's PROXY header named). Put into every request's extensions by the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOrigin {
    pub peer: SocketAddr,
    pub client: SocketAddr,
}

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
    pub fn parse(text: &str) -> Result<TrustedProxies, Error> {
        let networks = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(Network::parse)
            .collect::<Result<_, _>>()
            .map_err(Error::Config)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
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
}
