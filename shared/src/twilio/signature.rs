//! `X-Twilio-Signature`: how Twilio signs webhooks, and checking it (twilio-python's `RequestValidator` rules).
//!
//! The string to sign is the full public URL Twilio requested (query string exactly as received), followed by every
//! POST parameter as `name + value`, names sorted by code point; a repeated name contributes each of its distinct
//! values, sorted. The signature is base64(HMAC-SHA1(auth token, that string)). Because Twilio is inconsistent
//! about ports, a signature is accepted over the URL with its port removed or with its port added (the default one
//! if the URL had none). JSON bodies are signed differently: the URL carries `bodySHA256=<hex sha256 of the body>`
//! and is signed with no parameters.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// base64(HMAC-SHA1(token, url + sorted params)).
pub fn compute(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for name in names {
        let mut values: Vec<&str> = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect();
        values.sort_unstable();
        values.dedup();
        for v in values {
            mac.update(name.as_bytes());
            mac.update(v.as_bytes());
        }
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `header` is Twilio's signature of a form-encoded request to `url` with `params`.
pub fn validate(token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let header = header.trim();
    if header.is_empty() || token.is_empty() {
        return false;
    }
    // Evaluate every candidate (no early return), so timing does not reveal which URL form matched.
    let mut ok = subtle::Choice::from(0);
    for candidate in url_variants(url) {
        let expected = compute(token, &candidate, params);
        ok |= expected.as_bytes().ct_eq(header.as_bytes());
    }
    ok.into()
}

/// Whether `header` signs a JSON-bodied request: the URL's `bodySHA256` must be the body's hash, and the URL
/// (with no parameters) must be signed.
pub fn validate_json(token: &str, url: &str, body: &[u8], header: &str) -> bool {
    let Some(expected_hash) = query_param(url, "bodySHA256") else { return false };
    let actual = hex::encode(Sha256::digest(body));
    let hash_ok: bool = actual.as_bytes().ct_eq(expected_hash.to_ascii_lowercase().as_bytes()).into();
    hash_ok & validate(token, url, &[], header)
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The URL with its port removed, and with its port present (the scheme's default if it had none).
pub fn url_variants(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else { return vec![url.to_owned()] };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') && hostport[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            (&hostport[..i], Some(&hostport[i + 1..]))
        }
        _ => (hostport, None),
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => "",
    };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = format!("{scheme}://{userinfo}{host}:{}{tail}", port.unwrap_or(default_port));
    if default_port.is_empty() && port.is_none() { vec![without] } else { vec![without, with] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn vector_params() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn the_official_test_vector() {
        assert_eq!(compute("12345", URL, &vector_params()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(validate("12345", URL, &vector_params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
    }

    #[test]
    fn repeated_parameters_are_deduplicated_and_sorted() {
        let params =
            p(&[("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]);
        assert_eq!(compute("12345", URL, &params), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    }

    #[test]
    fn the_http_with_port_vector() {
        let url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        assert_eq!(compute("12345", url, &vector_params()), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=");
        assert!(validate("12345", url, &vector_params(), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="));
    }

    #[test]
    fn ports_may_be_added_or_removed_but_not_changed() {
        let sig_443 = compute("12345", "https://h.com:443/p", &vector_params());
        assert!(validate("12345", "https://h.com/p", &vector_params(), &sig_443));
        let sig_plain = compute("12345", "https://h.com/p", &vector_params());
        assert!(validate("12345", "https://h.com:1234/p", &vector_params(), &sig_plain));
        assert!(!validate("12345", "https://h.com:1234/p", &vector_params(), &sig_443));
        // The scheme must match.
        let sig_http = compute("12345", "http://h.com/p", &vector_params());
        assert!(!validate("12345", "https://h.com/p", &vector_params(), &sig_http));
    }

    #[test]
    fn tampering_is_rejected() {
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut changed = vector_params();
        changed[2].1 = "9999".into();
        assert!(!validate("12345", URL, &changed, sig));
        assert!(!validate("wrong", URL, &vector_params(), sig));
        assert!(!validate("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &vector_params(), sig));
        assert!(!validate("12345", "https://mycompany.com/myapp.php?bar=2&foo=1", &vector_params(), sig));
        let mut injected = vector_params();
        injected.push(("Digits".into(), "0000".into()));
        assert!(!validate("12345", URL, &injected, sig));
        assert!(!validate("12345", URL, &vector_params(), ""));
        assert!(!validate("12345", URL, &vector_params(), "not base64 at all"));
    }

    #[test]
    fn json_bodies_are_checked_by_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let hash = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(hex::encode(Sha256::digest(body)), hash);
        let url = format!("https://mycompany.com/myapp.php?bodySHA256={hash}");
        let sig = compute("12345", &url, &[]);
        assert!(validate_json("12345", &url, body, &sig));
        assert!(!validate_json("12345", &url, br#"{"property": "other"}"#, &sig));
    }
}
