//! Network values in config: the default listen addresses' parser, address blocks ([`Cidr`]
//! for `auth.trusted_proxies`), `host:port` nodes, and the masking of secrets in URLs every
//! printed message goes through. Shared by several sections, so below them all.

use std::net::SocketAddr;

pub(super) fn parse_addr(s: &str) -> SocketAddr {
    // Only ever given the defaults `DEFAULT_LISTEN` and `DEFAULT_ADMIN_LISTEN`, literals checked
    // by a unit test; this cannot fail at run time.
    s.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let net: std::net::IpAddr = addr.trim().parse().map_err(|_| "not an IP address or CIDR block".to_owned())?;
    let net = net.to_canonical();
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or(format!("prefix must be 0..={max}"))?,
    };
    Ok(Cidr { net, prefix })
}

/// `host:port` (a name, an IPv4 address or `[IPv6]`), with a port above 0.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    ok.then(|| (host.to_owned(), port))
}

/// A URL's tail with its query (`?…` up to a fragment) masked.
pub(super) fn mask_query(tail: &str) -> String {
    match tail.split_once('?') {
        Some((path, query)) => match query.split_once('#') {
            Some((_, fragment)) => format!("{path}?***#{fragment}"),
            None => format!("{path}?***"),
        },
        None => tail.to_owned(),
    }
}

/// `text` with the secrets every URL in it may carry masked: the user info
/// (`scheme://user:password@host` becomes `scheme://***@host`: everything up to the URL's last
/// `@`) and the query (`?token=…` becomes `?***`). A URL ends at whitespace, a double quote or
/// angle brackets (how messages and TOML delimit one); a password holding one of those is
/// masked only by [`masked_store_url`], which knows where its URL ends. Config error messages
/// quote the offending line, fetch errors name the URL, and `store.url`, `jwks_url`,
/// `log.otlp_endpoint` and webhook URLs may carry a password or a token in either place. Every
/// URL ccgate prints goes through here or [`masked_store_url`].
///
/// [`masked_store_url`]: super::masked_store_url
pub fn mask_url_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>')).unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let url = match url.rfind('@') {
            Some(at) => {
                out.push_str("***");
                &url[at..]
            }
            None => url,
        };
        out.push_str(&mask_query(url));
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Whether `ip` is an address on the public internet: not loopback, unspecified, private
/// (RFC 1918, unique local), shared (CGNAT), link-local (cloud metadata at 169.254.169.254),
/// multicast, broadcast, documentation, benchmarking or reserved. What a receiver may resolve
/// to unless its config allows private addresses (server-side request forgery). An IPv6
/// address that carries an IPv4 one (mapped, NAT64) is judged by that one.
pub fn is_public_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_address(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[0..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::masked_store_url;

    #[test]
    fn address_blocks_match_as_cidr_says() {
        let c = parse_cidr("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()) && c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains("192.0.2.1".parse().unwrap()));
        assert!(parse_cidr("2001:db8::/32").unwrap().contains("2001:db8:1::9".parse().unwrap()));
        assert!(parse_cidr("192.0.2.7").unwrap().contains("192.0.2.7".parse().unwrap()));
        assert!(!parse_cidr("192.0.2.7").unwrap().contains("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn user_info_and_queries_in_messages_are_masked() {
        let m = mask_url_secrets("line 3 | url = \"redis://:hunter2@redis:6379/0\" and https://idp/x");
        assert!(!m.contains("hunter2") && m.contains("redis://***@redis:6379/0") && m.contains("https://idp/x"), "{m}");
        let m = mask_url_secrets(
            "GET https://u:p@idp.example/jwks?token=s3cret&x=1: 500; otlp http://c:4318/v1/traces?key=k2 <x://h?q>",
        );
        assert_eq!(m, "GET https://***@idp.example/jwks?*** 500; otlp http://c:4318/v1/traces?*** <x://h?***>");
        // Passwords with a quote, '/', '?' or '#', and '@' elsewhere: masked up to the last '@'.
        for (url, masked) in [
            ("redis://:pa'ss@redis:6379/0", "redis://***@redis:6379/0"),
            ("redis://:p/a?s#s@redis:6379/0", "redis://***@redis:6379/0"),
            ("https://h/p?u=a@b", "https://***@b"),
            ("https://x/claims#tenant", "https://x/claims#tenant"),
            ("https://h/p?a=1#frag", "https://h/p?***#frag"),
        ] {
            assert_eq!(mask_url_secrets(url), masked, "{url}");
        }
        assert_eq!(masked_store_url("rediss://default:pw@r:6380/0?protocol=resp3"), "rediss://***@r:6380/0?***");
        assert_eq!(masked_store_url("redis://:p\"a'>ss@r:6379/0"), "redis://***@r:6379/0");
        assert_eq!(masked_store_url("redis://r:6379/0"), "redis://r:6379/0");
        assert_eq!(masked_store_url("not a url"), "***");
    }

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.5",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
            "fec0::1",
        ] {
            assert!(!is_public_address(ip.parse().unwrap()), "{ip}");
        }
        for ip in
            ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
        {
            assert!(is_public_address(ip.parse().unwrap()), "{ip}");
        }
    }
}
