//! The guard on URLs customers give us (event endpoints): a customer's URL is untrusted, and without a guard it
//! would let anyone with an API token make Messenger call its own network — Redis, the cloud's metadata service at
//! 169.254.169.254, an admin port on loopback.
//!
//! The rule: `https` only, and every address the name resolves to must be public — not loopback, private (RFC 1918,
//! IPv6 unique-local), link-local, carrier-grade NAT, unspecified, multicast, broadcast, documentation or reserved,
//! and every IPv6 form that carries an IPv4 address (mapped, compatible, translated, NAT64, 6to4, Teredo) judged by the
//! IPv4 address inside. Checked when the URL is saved (a clear error, nothing stored) and
//! again at every connection: the deliverer's client resolves through [`GuardedResolver`], so the connection goes
//! to an address that was checked (a name re-pointed at 127.0.0.1 after it was saved gets nowhere), and follows no
//! redirect. `MESSENGER_EVENTS_ALLOW_PRIVATE=true` lifts the rule (tests, an app on the same private network).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Why an address may not be called, or `None` if it is public.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// The IPv4 address in two 16-bit segments.
fn v4(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
}

/// The IPv4 address an IPv6 address carries, for messages (the first that counts, for Teredo).
fn carried_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    if v6.is_loopback() || v6.is_unspecified() {
        return None;
    }
    let teredo = s[0] == 0x2001 && s[1] == 0;
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0; 6]
        || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0)
        || (s[0] == 0x0064 && s[1] == 0xff9b)
    {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else if teredo && forbidden_v4(v4(s[2], s[3])).is_some() {
        Some(v4(s[2], s[3]))
    } else if teredo {
        Some(v4(!s[6], !s[7]))
    } else {
        None
    }
}

/// IPv6, including every form that carries an IPv4 address (judged by the address it carries, since the packets
/// may well end up there): IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64, 6to4 and Teredo.
fn forbidden_v6(v6: Ipv6Addr) -> Option<&'static str> {
    let s = v6.segments();
    if v6.is_loopback() {
        return Some("loopback");
    }
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    // ::ffff:a.b.c.d (IPv4-mapped): the socket talks IPv4 to a.b.c.d.
    if let Some(inner) = v6.to_ipv4_mapped() {
        return forbidden_v4(inner);
    }
    // ::a.b.c.d (IPv4-compatible, deprecated by RFC 4291) and ::ffff:0:a.b.c.d (IPv4-translated, RFC 2765): never
    // a public endpoint's address; what they carry names the worse case.
    let compatible = s[..6] == [0; 6];
    let translated = s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0;
    if compatible || translated {
        return forbidden_v4(v4(s[6], s[7])).or(Some("IPv4-compatible or IPv4-translated (deprecated)"));
    }
    // NAT64: the well-known 64:ff9b::/96 carries the IPv4 address in its last 32 bits; the rest of 64:ff9b::/32
    // (the local-use 64:ff9b:1::/48 of RFC 8215, with the address around the u-octet) is never a public endpoint.
    if s[0] == 0x0064 && s[1] == 0xff9b {
        return if s[2..6] == [0; 4] { forbidden_v4(v4(s[6], s[7])) } else { Some("NAT64 local-use (RFC 8215)") };
    }
    // 6to4 (2002::/16): the IPv4 address of the site's relay is in bits 16-47.
    if s[0] == 0x2002 {
        return forbidden_v4(v4(s[1], s[2]));
    }
    // Teredo (2001:0::/32): the server's IPv4 address in bits 32-63, the client's (inverted) in the last 32.
    if s[0] == 0x2001 && s[1] == 0 {
        return forbidden_v4(v4(s[2], s[3])).or_else(|| forbidden_v4(v4(!s[6], !s[7])));
    }
    if v6.is_multicast() {
        Some("multicast")
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some("private (unique local)")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Some("private (site-local, deprecated)")
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0 {
        Some("reserved for documentation")
    } else if s[0] == 0x0100 && s[1..4] == [0; 3] {
        Some("discard-only")
    } else if s[0] == 0x2001
        && ((s[1] == 0x0002 && s[2] == 0) || (s[1] & 0xfff0) == 0x0010 || (s[1] & 0xfff0) == 0x0020)
    {
        Some("reserved for benchmarks or identifiers (ORCHID)")
    } else if s[0] == 0x5f00 {
        Some("reserved (segment routing)")
    } else {
        None
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives here)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified (\"this network\")")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("carrier-grade NAT (shared address space)")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast, broadcast or reserved")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) || (o[0] == 192 && o[1] == 0 && o[2] == 0) {
        Some("reserved for documentation, benchmarks or protocols")
    } else if o[0] == 192 && o[1] == 88 && o[2] == 99 {
        Some("reserved (the deprecated 6to4 relay anycast)")
    } else {
        None
    }
}

/// Why a URL whose host is an address (not a name) may not be called, or `None` (a name: the resolver checks it at
/// each connection).
pub fn forbidden_literal(url: &str) -> Option<&'static str> {
    let parsed = Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_start_matches('[').trim_end_matches(']');
    forbidden(host.parse::<IpAddr>().ok()?)
}

/// Checks a customer's endpoint URL: parses it, checks the scheme and every address its host resolves to (one
/// resolution). Returns the URL, or what is wrong with it in words a customer can act on.
pub async fn check_url(raw: &str, allow_private: bool) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        other => return Err(format!("must be an https URL, not {other}:")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("may not carry a user name or password (the events are signed instead)".into());
    }
    if raw.len() > 2_000 {
        return Err("is longer than 2,000 characters".into());
    }
    let host = url.host_str().ok_or("has no host")?.to_owned();
    if allow_private {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    for addr in resolve(&host, port).await? {
        if let Some(why) = forbidden(addr.ip()) {
            let ip = addr.ip().to_string();
            let mut what =
                if host.trim_matches(['[', ']']) == ip { ip } else { format!("{host} resolves to {ip}, which") };
            if let IpAddr::V6(v6) = addr.ip()
                && let Some(inner) = carried_v4(v6)
            {
                what = format!("{what} (carrying {inner})");
            }
            return Err(format!(
                "{what} is a {why} address: Messenger only calls public addresses (set \
                 MESSENGER_EVENTS_ALLOW_PRIVATE=true for an endpoint on the deployment's own network)"
            ));
        }
    }
    Ok(url)
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    // A literal address (IPv6 in brackets in the URL, bare here).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} could not be resolved: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addrs)
}

/// reqwest's resolver for the deliverer: resolves once and hands the client only addresses that pass
/// [`forbidden`] (all of them when private addresses are allowed), so the connection is made to a checked address.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs =
                resolve(&host, 0).await.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let ok: Vec<SocketAddr> = addrs.into_iter().filter(|a| allow || forbidden(a.ip()).is_none()).collect();
            if ok.is_empty() {
                return Err(format!("{host} resolves only to addresses Messenger may not call").into());
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused_and_public_ones_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "192.0.2.1",
            "198.18.0.1",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad} passed");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "52.1.2.3", "100.128.0.1"] {
            assert_eq!(forbidden(good.parse().unwrap()), None, "{good}");
        }
    }

    /// Every IPv6 form that carries an IPv4 address is judged by that address: one unit test per prefix, with a
    /// private address inside (refused, naming what it carries) and, where the form is still in use, a public one
    /// (allowed).
    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it() {
        for (bad, why) in [
            // IPv4-mapped ::ffff:0:0/96
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            // IPv4-compatible ::/96
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("::8.8.8.8", "deprecated"),
            // IPv4-translated ::ffff:0:0:0/96
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:10.0.0.1", "private"),
            ("::ffff:0:8.8.8.8", "deprecated"),
            // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b:1::a00:1", "local-use"),
            ("64:ff9b:1:7f00:0:100:808:808", "local-use"),
            // 6to4 2002::/16: 2002:AABB:CCDD:: carries AA.BB.CC.DD
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:1::1", "private"),
            ("2002:a9fe:a9fe::", "link-local"),
            // Teredo 2001::/32: the server in bits 32-63, the client inverted in the last 32
            ("2001:0:a00:1::1", "private"),
            ("2001:0:808:808:0:0:f5ff:fffe", "private"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ] {
            assert_eq!(
                forbidden(bad.parse().unwrap()).map(|w| w.contains(why)),
                Some(true),
                "{bad}: {:?}",
                forbidden(bad.parse().unwrap())
            );
        }
        for good in ["64:ff9b::808:808", "2002:808:808::1", "2001:0:4136:e378:8000:63bf:f7f7:f7f7"] {
            assert_eq!(forbidden(good.parse().unwrap()), None, "{good}");
        }
        assert_eq!(forbidden_literal("https://[2002:7f00:1::]/hooks"), Some("loopback"));
        assert_eq!(forbidden_literal("https://10.1.2.3/"), Some("private"));
        assert_eq!(forbidden_literal("https://example.com/"), None);
        for other in ["100::1", "2001:2::1", "2001:10::1", "2001:20::1", "3fff::1", "fec0::1", "5f00::1", "192.88.99.1"]
        {
            assert!(forbidden(other.parse().unwrap()).is_some(), "{other}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_and_address() {
        for (url, words) in [
            ("http://8.8.8.8/hook", "https"),
            ("https://127.0.0.1/hook", "loopback"),
            ("https://10.0.0.5/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "link-local"),
            ("https://[::1]/hook", "loopback"),
            ("https://localhost/hook", "loopback"),
            ("https://user:pw@8.8.8.8/", "password"),
            ("not a url", "not a URL"),
        ] {
            let e = check_url(url, false).await.expect_err(url);
            assert!(e.contains(words), "{url}: {e}");
        }
        assert!(check_url("https://8.8.8.8/hook", false).await.is_ok());
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }
}
