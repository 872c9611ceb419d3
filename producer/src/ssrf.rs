//! The guard on URLs customers give us (event endpoints): a customer's URL is untrusted, and without a guard it
//! would let anyone with an API token make Messenger call its own network — Redis, the cloud's metadata service at
//! 169.254.169.254, an admin port on loopback.
//!
//! The rule: `https` only, and every address the name resolves to must be public — not loopback, private (RFC 1918,
//! IPv6 unique-local), link-local, carrier-grade NAT, unspecified, multicast, broadcast, documentation or reserved,
//! IPv4-mapped IPv6 judged as the IPv4 inside. Checked when the URL is saved (a clear error, nothing stored) and
//! again at every connection: the deliverer's client resolves through [`GuardedResolver`], so the connection goes
//! to an address that was checked (a name re-pointed at 127.0.0.1 after it was saved gets nowhere), and follows no
//! redirect. `MESSENGER_EVENTS_ALLOW_PRIVATE=true` lifts the rule (tests, an app on the same private network).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::Url;

/// Why an address may not be called, or `None` if it is public.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("reserved for documentation")
            } else if s[0] == 0x0064 && s[1] == 0xff9b {
                // NAT64: the IPv4 address is in the last 32 bits.
                forbidden_v4(Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8))
            } else {
                None
            }
        }
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
    } else {
        None
    }
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
            let what = if host.trim_matches(['[', ']']) == ip { ip } else { format!("{host} resolves to {ip}, which") };
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
