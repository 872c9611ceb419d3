//! Bearer tokens: admin tokens, and app tokens scoped to the customers they may use.
//!
//! Tokens come from `MESSENGER_API_TOKENS` (comma-separated) and/or the file named by `MESSENGER_API_TOKENS_FILE`
//! (one per line, `#` comments). Each entry is `NAME:TOKEN:SCOPE`, where SCOPE is `admin` or customer ids joined by
//! `+` (`appA:s3cr3t:acme+globex`). Only SHA-256 digests of the tokens are kept in memory, and a presented token is
//! compared with every configured one in constant time, so neither timing nor length reveals anything.
//!
//! Names and values are unique: a dashboard session names its token and carries a fingerprint of its value, so two
//! tokens of one name would let one's session act with the other's reach. Duplicates stop the server at start.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use shared::domain::CustomerId;
use subtle::ConstantTimeEq;

use super::error::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Customers(HashSet<CustomerId>),
}

#[derive(Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
    scope: Scope,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Vec<Token>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|t| (&t.name, &t.scope))).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `NAME:TOKEN:SCOPE` entries separated by commas or newlines; a name or a value given twice is an error
    /// naming them.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut out: Vec<Token> = Vec::new();
        for (i, raw) in spec.split([',', '\n']).enumerate() {
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(token), Some(scope)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("API token entry {} is not NAME:TOKEN:SCOPE", i + 1));
            };
            if token.len() < 16 {
                return Err(format!("API token {name:?} is shorter than 16 characters"));
            }
            let scope = if scope == "admin" {
                Scope::Admin
            } else {
                let ids = scope
                    .split('+')
                    .map(|c| CustomerId::parse(c).map_err(|e| format!("API token {name:?}: {e}")))
                    .collect::<Result<HashSet<_>, _>>()?;
                Scope::Customers(ids)
            };
            if name.is_empty() {
                return Err(format!("API token entry {} has an empty name", i + 1));
            }
            out.push(Token { name: name.to_owned(), digest: digest(token), scope });
        }
        let mut problems = Vec::new();
        for (i, a) in out.iter().enumerate() {
            for b in &out[..i] {
                if a.name == b.name && !problems.iter().any(|p: &String| p.contains(&format!("{:?}", a.name))) {
                    problems.push(format!("the name {:?} is given to more than one token", a.name));
                }
                if a.digest == b.digest {
                    problems.push(format!("the tokens {:?} and {:?} have the same value", b.name, a.name));
                }
            }
        }
        if !problems.is_empty() {
            return Err(format!(
                "API tokens: {} (each token needs its own name and its own value: a dashboard session is bound to both)",
                problems.join("; ")
            ));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name and value digest of the token `presented` is, if it is one (compared in constant time).
    pub fn authenticate(&self, presented: &str) -> Option<(String, [u8; 32])> {
        self.find(presented).map(|t| (t.name.clone(), t.digest))
    }

    /// The value digest and scope of the token named `name` (sessions name their token and carry a fingerprint of
    /// this digest: a removed or rotated token ends its sessions).
    pub fn by_name(&self, name: &str) -> Option<([u8; 32], Scope)> {
        self.0.iter().find(|t| t.name == name).map(|t| (t.digest, t.scope.clone()))
    }

    fn find(&self, presented: &str) -> Option<&Token> {
        let d = digest(presented);
        let mut found = None;
        for t in &self.0 {
            if bool::from(t.digest.ct_eq(&d)) {
                found = Some(t);
            }
        }
        found
    }
}

/// The authenticated caller of a `/v1` request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name (kept where a person's decision is recorded).
    pub name: String,
    pub scope: Scope,
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::Admin => Ok(()),
            Scope::Customers(_) => Err(ApiError::forbidden("this token may not manage customers")),
        }
    }

    pub fn require_customer(&self, c: &CustomerId) -> Result<(), ApiError> {
        match &self.scope {
            Scope::Admin => Ok(()),
            Scope::Customers(ids) if ids.contains(c) => Ok(()),
            Scope::Customers(_) => Err(ApiError::forbidden(format!("this token may not act for customer {c}"))),
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Tokens>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(ApiError::unauthorized)?;
        let tokens = Arc::<Tokens>::from_ref(state);
        let t = tokens.find(presented).ok_or_else(ApiError::unauthorized)?;
        Ok(Caller { name: t.name.clone(), scope: t.scope.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_into_scopes() {
        let t = Tokens::parse("ops:0123456789abcdef:admin, app:fedcba9876543210:acme+globex").unwrap();
        assert_eq!(t.find("0123456789abcdef").unwrap().scope, Scope::Admin);
        match &t.find("fedcba9876543210").unwrap().scope {
            Scope::Customers(ids) => assert_eq!(ids.len(), 2),
            _ => panic!(),
        }
        assert!(t.find("0123456789abcdeX").is_none());
    }

    #[test]
    fn bad_entries_are_rejected_by_name() {
        assert!(Tokens::parse("nocolons").unwrap_err().contains("NAME:TOKEN:SCOPE"));
        assert!(Tokens::parse("a:short:admin").unwrap_err().contains("shorter than 16"));
        assert!(Tokens::parse("a:0123456789abcdef:bad{id}").unwrap_err().contains("customer id"));
        assert!(Tokens::parse(":0123456789abcdef:admin").unwrap_err().contains("empty name"));
    }

    #[test]
    fn names_and_values_given_twice_are_named() {
        let e = Tokens::parse("dup:0123456789abcdef:admin,dup:fedcba9876543210:acme").unwrap_err();
        assert!(e.contains("the name \"dup\" is given to more than one token"), "{e}");
        let e = Tokens::parse("a:0123456789abcdef:admin\nb:0123456789abcdef:acme").unwrap_err();
        assert!(e.contains("the tokens \"a\" and \"b\" have the same value"), "{e}");
        assert!(!e.contains("0123456789abcdef"), "the error shows a token: {e}");
    }
}
