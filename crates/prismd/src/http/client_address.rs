//! The client's address for limits and audit rows: the connection's peer, or, only when that
//! peer is one of the configured trusted proxies (`--trusted-proxies`), the address the proxy
//! forwarded (`Forwarded: for=`, RFC 7239, else `X-Forwarded-For`). Never from headers by
//! default: any client can send them.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address a request is attributed to, resolved once per request by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The proxies whose forwarded addresses are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// Walks the chain from the nearest hop outwards: the peer, then each forwarded address,
    /// right to left. The first that is not a trusted proxy is the client; every hop before it
    /// was added by a proxy we trust, so a client cannot forge it (what the client itself put
    /// further left is never reached). An entry that is not an address (`unknown`, an
    /// obfuscated name, garbage) ends the walk at the trusted hop that forwarded it.
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for hop in forwarded_hops(headers).iter().rev() {
            let Some(address) = hop else {
                return client;
            };
            client = *address;
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// The forwarded addresses, left to right: `Forwarded`'s `for=` when the request has that
/// header, else `X-Forwarded-For`'s. `None` for an entry that is not an IP address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|value| value.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(key, _)| key.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, node)| node_address(node))
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .flat_map(|value| value.split(','))
        .map(node_address)
        .collect()
}

/// An address from a node: `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`,
/// `2001:db8::1`.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _port) = rest.split_once(']')?;
        return inside.parse::<IpAddr>().ok().map(|a| a.to_canonical());
    }
    node.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Puts the request's [`ClientAddress`] in its extensions (part of the router's one
/// per-request envelope, `http::envelope`).
pub fn resolve(proxies: &TrustedProxies, request: &mut Request) {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
    {
        let address = proxies.client_of(peer.ip(), request.headers());
        request.extensions_mut().insert(ClientAddress(address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().filter_map(|n| n.parse().ok()).collect())
    }

    #[test]
    fn headers_count_only_from_a_trusted_peer() {
        let spoofed = headers(&[("x-forwarded-for", "203.0.113.7")]);
        let none = TrustedProxies::default();
        assert_eq!(none.client_of(ip("127.0.0.1"), &spoofed), ip("127.0.0.1"));
        let local = proxies(&["127.0.0.1/32"]);
        assert_eq!(local.client_of(ip("192.0.2.9"), &spoofed), ip("192.0.2.9"));
        assert_eq!(
            local.client_of(ip("127.0.0.1"), &spoofed),
            ip("203.0.113.7")
        );
        // No header: the proxy itself.
        assert_eq!(
            local.client_of(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let chain = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.2")]);
        let trusted = proxies(&["127.0.0.0/8", "10.0.0.0/8"]);
        // 198.51.100.1 is what the client claimed; 203.0.113.7 is who the proxy saw.
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &chain),
            ip("203.0.113.7")
        );
        // Several header lines are one list.
        let split = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &split),
            ip("203.0.113.7")
        );
        // Every hop trusted: the leftmost.
        let internal = headers(&[("x-forwarded-for", "10.0.0.5, 10.0.0.2")]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &internal),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn forwarded_wins_and_its_nodes_parse() {
        let trusted = proxies(&["127.0.0.1/32"]);
        let both = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711""#,
            ),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &both),
            ip("2001:db8:cafe::17")
        );
        let with_port = headers(&[("forwarded", "For=\"192.0.2.43:47011\"")]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &with_port),
            ip("192.0.2.43")
        );
        // Not an address: the walk ends at the trusted proxy.
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &unknown),
            ip("127.0.0.1")
        );
        let garbage = headers(&[("x-forwarded-for", "203.0.113.7, not-an-ip")]);
        assert_eq!(
            trusted.client_of(ip("127.0.0.1"), &garbage),
            ip("127.0.0.1")
        );
        // An IPv4-mapped peer is its IPv4 address.
        assert_eq!(
            trusted.client_of(ip("::ffff:127.0.0.1"), &both),
            ip("2001:db8:cafe::17")
        );
    }
}
