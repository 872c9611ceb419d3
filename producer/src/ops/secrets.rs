//! Secrets at rest, from the operator's side: how the customers' events secrets are stored (in clear from before
//! sealing, or sealed under which key), and sealing them all under the current key — the middle step of changing
//! `MESSENGER_SECRETS_KEY` (`shared::secrets` has the whole procedure).

use std::collections::BTreeMap;

use serde::Serialize;
use shared::customers::{self, PreviousSecret, StoredSecret};
use shared::secrets::{self, Storage};

use super::{Deps, OpsError};

/// How the stored secrets are kept.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SecretsReport {
    /// The key new secrets are sealed with (its id), if one is configured.
    pub current_key: Option<String>,
    /// Secrets (current and replaced ones) by how they are stored: `clear`, or `sealed:<key id>`.
    pub by_storage: BTreeMap<String, u64>,
    /// Customers with at least one secret that does not open with the configured keys.
    pub unopened: Vec<String>,
    /// Secrets sealed anew under the current key by this call (`rewrap` only).
    pub sealed_now: u64,
}

fn label(s: &Storage) -> String {
    match s {
        Storage::Clear => "clear".into(),
        Storage::Sealed(id) => format!("sealed:{id}"),
    }
}

/// Counts the stored secrets by how they are kept; with `rewrap`, first seals every one that opens but is not
/// under the current key (each only if it still holds what was read).
pub async fn report(deps: &Deps, rewrap: bool) -> Result<SecretsReport, OpsError> {
    let keys = deps.settings.events.keys.as_ref();
    if rewrap && keys.is_none() {
        return Err(OpsError::NotConfigured(super::customers::NO_KEY.into()));
    }
    let mut out = SecretsReport { current_key: keys.map(|k| k.current_id().to_owned()), ..Default::default() };
    let mut conn = deps.conn();
    for c in super::customers::list(deps).await? {
        let owner = c.id.as_str();
        let mut swaps: Vec<(&str, String, String)> = Vec::new();
        let mut unopened = false;
        let stored = [
            c.events_secret.clone().map(|s| ("events_secret", s, None)),
            c.events_secret_previous.clone().map(|p| ("events_secret_prev", p.secret.clone(), Some(p))),
        ];
        for (field, secret, previous) in stored.into_iter().flatten() {
            match secrets::open(keys, &secret.0, owner) {
                Ok(o) if rewrap && !o.current => {
                    let keys = keys.expect("checked above");
                    let sealed = StoredSecret(keys.seal(&o.plain, owner));
                    let (read, new) = match previous {
                        Some(p) => (p.to_string(), PreviousSecret { secret: sealed, until_ms: p.until_ms }.to_string()),
                        None => (secret.0.clone(), sealed.0),
                    };
                    swaps.push((field, read, new));
                }
                Ok(_) => {}
                Err(_) => unopened = true,
            }
        }
        if !swaps.is_empty() {
            out.sealed_now += customers::reseal(&mut conn, &c.id, &swaps).await?;
        }
        if unopened {
            out.unopened.push(c.id.to_string());
        }
    }
    // Counted after the rewrap, from what is stored now.
    for c in super::customers::list(deps).await? {
        let stored = [c.events_secret.map(|s| s.0), c.events_secret_previous.map(|p| p.secret.0)];
        for s in stored.into_iter().flatten() {
            *out.by_storage.entry(label(&secrets::storage(&s))).or_default() += 1;
        }
    }
    Ok(out)
}
