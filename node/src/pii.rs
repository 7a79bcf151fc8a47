//! PII redaction on the write path (DESIGN §8): which policy a tenant's writes get, the
//! cluster's hash key, and the one call that redacts a command before it is proposed.
//!
//! The detectors and the policies live in [`domain::redact`]; this module only chooses the
//! policy and counts what was redacted. Tenant records do not exist yet, so the policy comes
//! from the node's configuration: a default and per-tenant overrides. Every node of a cluster
//! must use the same PII settings and hash key: any node may be the leader that redacts, and a
//! retried request must be redacted the same way to be recognised as a retry.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::limits::Invalid;
use domain::redact::{HashKey, Policy, Redactor};
use domain::{Command, Redactions};

use crate::observe::names;

/// The PII settings of a node; validated when built.
#[derive(Debug, Clone, Default)]
pub struct PiiConfig {
    default_policy: Policy,
    tenant_policies: BTreeMap<String, Policy>,
    hash_key: Option<Arc<HashKey>>,
}

/// PII settings that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiiConfigError {
    #[error("policy hash (for {scope}) needs --pii-hash-key-file")]
    HashWithoutKey { scope: String },
}

impl PiiConfig {
    /// The settings, refused when a `hash` policy has no key to hash with.
    pub fn new(
        default_policy: Policy,
        tenant_policies: BTreeMap<String, Policy>,
        hash_key: Option<HashKey>,
    ) -> Result<Self, PiiConfigError> {
        if hash_key.is_none() {
            if default_policy == Policy::Hash {
                return Err(PiiConfigError::HashWithoutKey {
                    scope: "the default policy".to_owned(),
                });
            }
            if let Some((tenant, _)) = tenant_policies.iter().find(|(_, p)| **p == Policy::Hash) {
                return Err(PiiConfigError::HashWithoutKey {
                    scope: format!("tenant {tenant:?}"),
                });
            }
        }
        Ok(Self {
            default_policy,
            tenant_policies,
            hash_key: hash_key.map(Arc::new),
        })
    }

    /// The policy of `tenant`'s writes: its override, else the default.
    pub fn policy_for(&self, tenant: &str) -> Policy {
        self.tenant_policies
            .get(tenant)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Redacts `command` under `tenant`'s policy. Refuses what cannot be proposed safely (see
    /// [`Redactor::command`]).
    pub fn redact(&self, tenant: &str, command: Command) -> Result<(Command, Redactions), Invalid> {
        let redactor = match (self.policy_for(tenant), &self.hash_key) {
            (Policy::Keep, _) => Redactor::Keep,
            (Policy::Mask, _) => Redactor::Mask,
            (Policy::Hash, Some(key)) => Redactor::Hash(key),
            // `new` refuses a hash policy without a key; masking is the safe answer anyway.
            (Policy::Hash, None) => Redactor::Mask,
        };
        redactor.command(command)
    }

    /// Counts what a write proposed by this node had redacted, by kind and policy
    /// ([`names::PII_REDACTIONS`]). Called once the entry is in the log, so that a write a
    /// follower redirected is counted once, by the leader that proposed it.
    pub fn count(&self, tenant: &str, redactions: &Redactions) {
        let policy = self.policy_for(tenant);
        for (kind, count) in redactions.iter() {
            metrics::counter!(
                names::PII_REDACTIONS,
                "kind" => kind.as_str(),
                "policy" => policy.as_str()
            )
            .increment(u64::from(count));
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::CallId;
    use domain::redact::HASH_KEY_BYTES_MIN;

    use super::*;

    fn turn(text: &str) -> Command {
        Command::AppendTurn {
            call_id: CallId::from_u128(1),
            speaker: "caller".into(),
            text: text.into(),
            confidence: 1.0,
            language: "en".into(),
            spoken_at_ms: 0,
        }
    }

    fn text_of(command: &Command) -> &str {
        match command {
            Command::AppendTurn { text, .. } => text,
            _ => "",
        }
    }

    #[test]
    fn a_hash_policy_without_a_key_is_refused_naming_where() {
        let tenants = BTreeMap::from([("acme".to_owned(), Policy::Hash)]);
        let error = PiiConfig::new(Policy::Mask, tenants, None).expect_err("no key");
        assert!(error.to_string().contains("tenant \"acme\""), "{error}");
        let error =
            PiiConfig::new(Policy::Hash, BTreeMap::new(), None).expect_err("no key for default");
        assert!(error.to_string().contains("default"), "{error}");
        let key = HashKey::new(vec![9; HASH_KEY_BYTES_MIN]).expect("key");
        assert!(PiiConfig::new(Policy::Hash, BTreeMap::new(), Some(key)).is_ok());
    }

    #[test]
    fn each_tenant_gets_its_override_else_the_default() {
        let key = HashKey::new(vec![9; HASH_KEY_BYTES_MIN]).expect("key");
        let config = PiiConfig::new(
            Policy::Mask,
            BTreeMap::from([
                ("open".to_owned(), Policy::Keep),
                ("linked".to_owned(), Policy::Hash),
            ]),
            Some(key),
        )
        .expect("valid");
        let raw = "mail jo@example.com";
        let (masked, summary) = config.redact("acme", turn(raw)).expect("redact");
        assert_eq!(text_of(&masked), "mail [EMAIL]");
        assert_eq!(summary.total(), 1);
        let (kept, summary) = config.redact("open", turn(raw)).expect("redact");
        assert_eq!(text_of(&kept), raw);
        assert!(summary.is_empty());
        let (hashed, _) = config.redact("linked", turn(raw)).expect("redact");
        assert!(text_of(&hashed).starts_with("mail [EMAIL:"), "{hashed:?}");
    }

    #[test]
    fn the_default_settings_mask() {
        let (masked, _) = PiiConfig::default()
            .redact("acme", turn("call 0412 345 678"))
            .expect("redact");
        assert_eq!(text_of(&masked), "call [PHONE]");
    }
}
