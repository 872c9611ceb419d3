//! Auth tokens of the accounts whose webhooks Messenger verifies: the main account's from configuration, each
//! subaccount's from Twilio.
//!
//! Twilio signs every webhook about a number with the auth token of the account that owns the number, so a customer
//! on a subaccount needs that subaccount's token. A parent account reads it with `GET /Accounts/{sid}.json` using
//! its own credentials; Twilio answers 404 for an account that is not one of its subaccounts, and this cache also
//! refuses an answer whose `owner_account_sid` is not the main account (never trust an account we do not own).
//!
//! Tokens are kept in memory only, for a bounded time, and never logged. A signature that fails against a cached
//! token may mean the token was rotated, so the caller may ask for one [`AccountTokens::refresh`]; refreshes (and
//! failed look-ups) of one account happen at most once per `refresh_every`, so a flood of forged webhooks costs at
//! most one Twilio call per account per interval. Concurrent look-ups of one account share one request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

use super::{TwilioClient, TwilioError};
use crate::domain::AccountSid;

/// Why a subaccount's token is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Twilio says the account is not ours (404), or it belongs to another parent, or it is closed.
    #[error("account {0} is not an active subaccount of the main account")]
    NotOurs(String),
    /// Twilio could not be asked (no credentials, or it failed); try again later.
    #[error("could not look up the auth token of {account}: {reason}")]
    Unavailable { account: String, reason: String },
}

#[derive(Default)]
struct Entry {
    token: Option<SecretString>,
    /// When the last look-up (successful or not) started: the rate limit and the lifetime count from here.
    looked_up: Option<Instant>,
    /// The last look-up's failure, repeated until the next look-up is allowed.
    error: Option<TokenError>,
}

pub struct AccountTokens {
    main: AccountSid,
    main_token: SecretString,
    client: TwilioClient,
    ttl: Duration,
    refresh_every: Duration,
    entries: Mutex<HashMap<AccountSid, Arc<tokio::sync::Mutex<Entry>>>>,
    lookups: AtomicU64,
}

impl AccountTokens {
    /// `client` signs with the main account's credentials. `ttl`: how long a token is used before it is read again;
    /// `refresh_every`: the least time between two look-ups of one account.
    pub fn new(client: TwilioClient, main_token: SecretString, ttl: Duration, refresh_every: Duration) -> Self {
        Self {
            main: client.account().clone(),
            main_token,
            client,
            ttl,
            refresh_every,
            entries: Mutex::default(),
            lookups: AtomicU64::new(0),
        }
    }

    pub fn main_account(&self) -> &AccountSid {
        &self.main
    }

    /// Requests made to Twilio for subaccount tokens so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The token that signs `account`'s webhooks.
    pub async fn token(&self, account: &AccountSid) -> Result<SecretString, TokenError> {
        if *account == self.main {
            return Ok(self.main_token.clone());
        }
        let entry = self.entry(account);
        let mut e = entry.lock().await;
        let fresh = e.looked_up.is_some_and(|t| t.elapsed() < self.ttl);
        if let Some(t) = &e.token
            && (fresh || self.rate_limited(&e))
        {
            return Ok(t.clone());
        }
        if self.rate_limited(&e) {
            return Err(self.last_error(&e, account));
        }
        self.look_up(account, &mut e).await
    }

    /// A webhook failed verification with `tried`: look the token up again (it may have been rotated), unless the
    /// account was looked up less than `refresh_every` ago. Returns the new token only if it differs.
    pub async fn refresh(&self, account: &AccountSid, tried: &SecretString) -> Option<SecretString> {
        if *account == self.main {
            return None;
        }
        let entry = self.entry(account);
        let mut e = entry.lock().await;
        // Someone refreshed while we waited for the entry: try their token before asking Twilio again.
        if let Some(t) = &e.token
            && t.expose_secret() != tried.expose_secret()
        {
            return Some(t.clone());
        }
        if self.rate_limited(&e) {
            return None;
        }
        let new = self.look_up(account, &mut e).await.ok()?;
        (new.expose_secret() != tried.expose_secret()).then_some(new)
    }

    fn entry(&self, account: &AccountSid) -> Arc<tokio::sync::Mutex<Entry>> {
        self.entries.lock().unwrap().entry(account.clone()).or_default().clone()
    }

    fn rate_limited(&self, e: &Entry) -> bool {
        e.looked_up.is_some_and(|t| t.elapsed() < self.refresh_every)
    }

    fn last_error(&self, e: &Entry, account: &AccountSid) -> TokenError {
        e.error.clone().unwrap_or_else(|| TokenError::Unavailable {
            account: account.to_string(),
            reason: "looked up too recently".into(),
        })
    }

    async fn look_up(&self, account: &AccountSid, e: &mut Entry) -> Result<SecretString, TokenError> {
        e.looked_up = Some(Instant::now());
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let result = check_subaccount(&self.client, account).await.and_then(|a| {
            a.auth_token.filter(|t| !t.is_empty()).map(SecretString::from).ok_or_else(|| TokenError::Unavailable {
                account: account.to_string(),
                reason: "Twilio returned no auth_token (are the main credentials an API key?)".into(),
            })
        });
        match result {
            Ok(token) => {
                e.token = Some(token.clone());
                e.error = None;
                Ok(token)
            }
            Err(err) => {
                tracing::warn!(account = %account, error.message = %err, "no auth token for a subaccount");
                // A definite "not ours" forgets any cached token; a transient failure keeps using it.
                if matches!(err, TokenError::NotOurs(_)) {
                    e.token = None;
                }
                e.error = Some(err.clone());
                match (&e.token, &err) {
                    (Some(t), TokenError::Unavailable { .. }) => Ok(t.clone()),
                    _ => Err(err),
                }
            }
        }
    }
}

/// Asks Twilio whether `account` is an active subaccount of the client's account (or the account itself), and
/// returns it (with its auth token).
pub async fn check_subaccount(
    client: &TwilioClient,
    account: &AccountSid,
) -> Result<super::types::Account, TokenError> {
    let not_ours = || TokenError::NotOurs(account.to_string());
    match client.fetch_account(account).await {
        Ok(a) => {
            let owner = a.owner_account_sid.as_deref().unwrap_or_default();
            if a.sid.as_deref() != Some(account.as_str())
                || !(owner == client.account().as_str() || account == client.account())
            {
                return Err(not_ours());
            }
            if a.status.as_deref() == Some("closed") {
                return Err(not_ours());
            }
            Ok(a)
        }
        Err(TwilioError::Api { status: 404, .. }) | Err(TwilioError::Api { status: 403, .. }) => Err(not_ours()),
        Err(e) => Err(TokenError::Unavailable { account: account.to_string(), reason: e.short_reason() }),
    }
}
