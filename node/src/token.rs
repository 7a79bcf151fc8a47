//! `switchboard token`: make signing keys and mint bearer tokens ([`crate::auth`]).
//!
//! `keygen` writes an Ed25519 signing key and adds its public half to the key set nodes verify
//! with; `issue` signs a token. The signing key stays with whoever issues tokens (an operator,
//! a token service); nodes get only the key set.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::auth::{self, KeyError, Role, SigningKey};

/// Default lifetime of an issued token.
pub const TOKEN_TTL_DEFAULT: &str = "24h";

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a signing key and add its public key to the key set (`token-keys.json`) in DIR:
    /// the first key of a cluster, or the next one of a rotation.
    Keygen(KeygenArgs),
    /// Sign a bearer token for a tenant and role; prints it on stdout.
    Issue(IssueArgs),
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Directory of the key set and signing keys (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Id of the new key (letters, digits, '-', '_'); tokens name it in their header.
    #[arg(long, default_value = "k1")]
    pub kid: String,
    /// Replace a signing key of the same id.
    #[arg(long)]
    pub force: bool,
    /// Do nothing when the key set and this key's signing key already exist (a compose or
    /// init step that runs at every start).
    #[arg(long, conflicts_with = "force")]
    pub if_missing: bool,
}

#[derive(Debug, Clone, Args)]
pub struct IssueArgs {
    /// The signing key (a `token-signing-KID.pem` of `token keygen`).
    #[arg(long, env = "SWITCHBOARD_SIGNING_KEY")]
    pub key: PathBuf,
    /// Tenant the token acts for; `*` (admin only) for every tenant with no default.
    #[arg(long)]
    pub tenant: String,
    /// Role: agent (write and read its tenant), viewer (read), admin (cluster, every tenant).
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// Who the token speaks for (recorded as the actor of admin actions and erasures).
    #[arg(long, default_value = "cli")]
    pub subject: String,
    /// Lifetime, e.g. 15m, 24h, 30d (at most 366d).
    #[arg(long, default_value = TOKEN_TTL_DEFAULT, value_parser = parse_ttl)]
    pub ttl: Duration,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?}: expected one of {:?}", Role::NAMES))
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = match text.strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .map(|d| Duration::from_secs(d.saturating_mul(24 * 3600)))
            .map_err(|_| format!("{text:?}: expected a duration such as 15m, 24h or 30d"))?,
        None => harness::parse_duration(text).map_err(|e| e.to_string())?,
    };
    if ttl.is_zero() || ttl > auth::TOKEN_TTL_MAX {
        return Err(format!("{text:?}: must be more than 0 and at most 366d"));
    }
    Ok(ttl)
}

/// Runs a `token` subcommand, printing what it made.
pub fn run(command: TokenCommand) -> Result<(), KeyError> {
    match command {
        TokenCommand::Keygen(args) => {
            let key = args.dir.join(auth::files::signing_key(&args.kid));
            let set = args.dir.join(auth::files::KEY_SET);
            if args.if_missing && key.exists() && set.exists() {
                println!("signing key: {} (kept)", key.display());
                println!("key set:     {} (kept)", set.display());
                return Ok(());
            }
            let (key, set) = auth::keygen(&args.dir, &args.kid, args.force)?;
            println!("signing key: {}", key.display());
            println!("key set:     {}", set.display());
            Ok(())
        }
        TokenCommand::Issue(args) => {
            println!("{}", issue(&args)?);
            Ok(())
        }
    }
}

/// A signed token as `args` describe it.
pub fn issue(args: &IssueArgs) -> Result<String, KeyError> {
    let key = SigningKey::read_pem(&args.key, None)?;
    let claims = SigningKey::claims(&args.subject, &args.tenant, args.role, args.ttl);
    key.sign(&claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_days_and_refuses_forever() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("400d").is_err());
    }

    #[test]
    fn an_issued_token_verifies_against_the_key_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, set) = auth::keygen(dir.path(), "k1", false).expect("keygen");
        let token = issue(&IssueArgs {
            key,
            tenant: "acme".to_owned(),
            role: Role::Viewer,
            subject: "ops@acme".to_owned(),
            ttl: Duration::from_secs(60),
        })
        .expect("issue");
        let caller = auth::Verifier::load(&set)
            .expect("key set")
            .verify(&token)
            .expect("verifies");
        assert_eq!(caller.subject(), "ops@acme");
        assert_eq!(caller.role(), Role::Viewer);
    }

    #[test]
    fn keygen_refuses_to_overwrite_a_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        auth::keygen(dir.path(), "k1", false).expect("keygen");
        assert!(matches!(
            auth::keygen(dir.path(), "k1", false),
            Err(KeyError::Exists { .. })
        ));
        auth::keygen(dir.path(), "k1", true).expect("forced");
    }
}
