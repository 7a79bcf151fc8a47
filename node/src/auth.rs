//! Who is calling: bearer tokens (signed JWTs), roles, and the tenant every request acts for.
//!
//! A client presents `authorization: Bearer <JWT>`. The token is an EdDSA (Ed25519) JWT whose
//! header names its key (`kid`) and whose claims are `sub` (the actor, recorded in audit
//! events), `tenant`, `role` (`agent` | `viewer` | `admin`), `exp` and `iat`. Nodes verify with
//! the public keys of a key set (a JWKS file, `--token-keys`) and never hold a signing key, so a
//! node's disk cannot mint tokens. The key set is re-read on SIGHUP: publish the new public key,
//! reload, start issuing with it, and remove the old key once its tokens have expired — keys
//! rotate without downtime.
//!
//! What a role may do is decided per RPC by the `access` column of the RPC table
//! ([`proto::switchboard_rpcs!`]): `read` (viewer, agent, admin), `write` (agent, admin),
//! `admin` (admin). The tenant of a request comes from the token ([`Caller::tenant`]): a body
//! tenant that differs is refused, another tenant's call is NOT_FOUND (the reader's tenancy
//! rule), and only an admin acts for any tenant.
//!
//! With `--insecure` and no key set, authentication is off and every caller is the anonymous
//! administrator (a warning is logged at start): a development mode, never a deployment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tonic::metadata::MetadataMap;

/// The metadata key of the bearer token (HTTP's `Authorization` header).
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Longest token accepted, in bytes; a longer header is refused before any parsing.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// Most keys a key set may hold (two or three during a rotation; the bound stops a huge file).
pub const KEY_SET_KEYS_MAX: usize = 64;

/// Largest key set file read, in bytes.
pub const KEY_SET_FILE_BYTES_MAX: u64 = 256 * 1024;

/// Longest key id, subject and tenant claim, in bytes.
pub const KEY_ID_BYTES_MAX: usize = 64;
pub const SUBJECT_BYTES_MAX: usize = 128;

/// Longest lifetime `token issue` mints, so a dev token cannot live forever by accident.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Clock difference tolerated when checking `exp`, in seconds.
const EXP_LEEWAY_S: u64 = 30;

/// The subject of every caller when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads its tenant's calls and events.
    Viewer,
    /// Writes and reads its tenant's calls.
    Agent,
    /// Cluster operations, every tenant.
    Admin,
}

impl Role {
    pub const NAMES: [&'static str; 3] = ["viewer", "agent", "admin"];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "agent" => Some(Role::Agent),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may call an RPC of `access`.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => true,
            Access::Write => matches!(self, Role::Agent | Role::Admin),
            Access::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an RPC needs (the `access` column of the RPC table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

/// The claims of a Switchboard token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The actor: who is calling (a worker, a person, a service), recorded in audit events.
    pub sub: String,
    /// The tenant the token acts for. An admin token may name `*` (every tenant).
    pub tenant: String,
    pub role: Role,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
}

/// The tenant claim of an admin token that is not bound to one tenant.
pub const ANY_TENANT: &str = "*";

/// Why a request was not authenticated or not allowed (mapped to UNAUTHENTICATED and
/// PERMISSION_DENIED by [`crate::status`]). Messages never echo a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send 'authorization: Bearer <token>' (switchboard token issue)")]
    Missing,
    #[error("the authorization header is not 'Bearer <token>'")]
    NotBearer,
    #[error("the bearer token is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("the token names no key id (kid)")]
    NoKeyId,
    #[error("the token's key id is not in this node's key set")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {reason}")]
    Invalid { reason: &'static str },
    #[error("role {role} may not call {rpc} (it needs {needs})")]
    Role {
        role: Role,
        rpc: &'static str,
        needs: &'static str,
    },
    #[error("the request names tenant {body:?} but the token is for tenant {token:?}")]
    TenantMismatch { body: String, token: String },
    #[error("tenant {tenant:?} is reserved for the cluster's own records; no client writes to it")]
    ReservedTenant { tenant: &'static str },
}

impl AuthError {
    /// Whether this is PERMISSION_DENIED (known caller, not allowed) rather than
    /// UNAUTHENTICATED (caller not known).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            AuthError::Role { .. }
                | AuthError::TenantMismatch { .. }
                | AuthError::ReservedTenant { .. }
        )
    }

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::NotBearer => "not_bearer",
            AuthError::TooLong { .. } => "too_long",
            AuthError::NoKeyId => "no_kid",
            AuthError::UnknownKey => "unknown_key",
            AuthError::Expired => "expired",
            AuthError::Invalid { .. } => "invalid",
            AuthError::Role { .. } => "role",
            AuthError::TenantMismatch { .. } => "tenant",
            AuthError::ReservedTenant { .. } => "reserved_tenant",
        }
    }
}

/// An authenticated caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    subject: String,
    /// `None`: every tenant (an admin token with tenant `*`, or authentication off).
    tenant: Option<String>,
    role: Role,
    /// The raw token, forwarded when this node asks the leader on the caller's behalf (a
    /// follower's read index). Never logged.
    token: Option<String>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// Every caller when authentication is off.
    pub fn anonymous() -> Self {
        Self {
            subject: ANONYMOUS.to_owned(),
            tenant: None,
            role: Role::Admin,
            token: None,
        }
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether this caller sees every tenant.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The tenant a request acts for: the token's. A body tenant may repeat it or be empty; one
    /// that differs is refused. An admin acts for the body's tenant (or its own token's when the
    /// body names none).
    pub fn tenant(&self, body: &str) -> Result<String, AuthError> {
        match (&self.tenant, self.role) {
            (_, Role::Admin) if !body.is_empty() => Ok(body.to_owned()),
            (Some(token), _) if body.is_empty() || body == token => Ok(token.clone()),
            (Some(token), _) => Err(AuthError::TenantMismatch {
                body: body.to_owned(),
                token: token.clone(),
            }),
            // An admin of every tenant with no tenant in the body: the body's (empty) tenant,
            // which the request's own validation refuses by name.
            (None, _) => Ok(body.to_owned()),
        }
    }

    /// The tenant whose data a cluster-wide read may return: `None` for every tenant (admin).
    pub fn tenant_scope(&self) -> Option<&str> {
        if self.is_admin() {
            None
        } else {
            self.tenant.as_deref()
        }
    }

    /// Checks that this caller may call `rpc`, which needs `access`.
    pub fn allow(&self, rpc: &'static str, access: Access) -> Result<(), AuthError> {
        if self.role.allows(access) {
            Ok(())
        } else {
            Err(AuthError::Role {
                role: self.role,
                rpc,
                needs: access.as_str(),
            })
        }
    }
}

/// One public key of a key set, in JWK form (RFC 8037: `kty` OKP, `crv` Ed25519, `x` the raw
/// public key in base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub kid: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A key set file: `{"keys": [Jwk, ...]}` (the JWKS shape, so other tools can read it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetFile {
    pub keys: Vec<Jwk>,
}

/// A key set that cannot be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("failed to read the token key set {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token key set {path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("the token key set {path} is not a JWKS document: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the token key set {path} holds no key")]
    Empty { path: PathBuf },
    #[error("the token key set {path} holds more than {max} keys")]
    TooMany { path: PathBuf, max: usize },
    #[error("the token key set {path}: key {kid:?}: {problem}")]
    BadKey {
        path: PathBuf,
        kid: String,
        problem: &'static str,
    },
}

/// Verifying keys by key id.
struct Keys {
    by_kid: BTreeMap<String, DecodingKey>,
}

impl Keys {
    fn load(path: &Path) -> Result<Self, KeySetError> {
        let size = std::fs::metadata(path)
            .map_err(|source| KeySetError::Read {
                path: path.to_owned(),
                source,
            })?
            .len();
        if size > KEY_SET_FILE_BYTES_MAX {
            return Err(KeySetError::TooLarge {
                path: path.to_owned(),
                max: KEY_SET_FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read(path).map_err(|source| KeySetError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: KeySetFile =
            serde_json::from_slice(&text).map_err(|source| KeySetError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if file.keys.is_empty() {
            return Err(KeySetError::Empty {
                path: path.to_owned(),
            });
        }
        if file.keys.len() > KEY_SET_KEYS_MAX {
            return Err(KeySetError::TooMany {
                path: path.to_owned(),
                max: KEY_SET_KEYS_MAX,
            });
        }
        let mut by_kid = BTreeMap::new();
        for jwk in &file.keys {
            let bad = |problem| KeySetError::BadKey {
                path: path.to_owned(),
                kid: jwk.kid.chars().take(KEY_ID_BYTES_MAX).collect(),
                problem,
            };
            if jwk.kid.is_empty() || jwk.kid.len() > KEY_ID_BYTES_MAX {
                return Err(bad("kid must be 1 to 64 bytes"));
            }
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                return Err(bad("only Ed25519 keys (kty OKP, crv Ed25519) are accepted"));
            }
            if jwk.alg.as_deref().is_some_and(|alg| alg != "EdDSA") {
                return Err(bad("alg must be EdDSA"));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(jwk.x.as_bytes())
                .map_err(|_| bad("x is not base64url"))?;
            if raw.len() != 32 {
                return Err(bad("x is not a 32-byte Ed25519 public key"));
            }
            if by_kid
                .insert(jwk.kid.clone(), DecodingKey::from_ed_der(&raw))
                .is_some()
            {
                return Err(bad("kid appears twice"));
            }
        }
        Ok(Self { by_kid })
    }
}

/// Most verified tokens remembered; past it the memory is cleared and refilled.
pub const VERIFIED_TOKENS_MAX: usize = 4096;

/// Verifies bearer tokens against a key set that can be reloaded.
pub struct Verifier {
    path: PathBuf,
    keys: RwLock<Arc<Keys>>,
    /// Tokens already verified (by SHA-256), with their caller and expiry: a worker sends the
    /// same token with every request, and a signature check costs far more than a hash. Cleared
    /// on every reload, so a key removed from the set stops working at once.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Caller, u64)>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the key set at `path`.
    pub fn load(path: &Path) -> Result<Self, KeySetError> {
        let keys = Keys::load(path)?;
        Ok(Self {
            path: path.to_owned(),
            keys: RwLock::new(Arc::new(keys)),
            verified: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Re-reads the key set; on error the keys in use stay as they were. Returns the key ids
    /// now in use.
    pub fn reload(&self) -> Result<Vec<String>, KeySetError> {
        let keys = Keys::load(&self.path)?;
        let kids = keys.by_kid.keys().cloned().collect();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        Ok(kids)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The caller a token names, if it verifies.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::TooLong {
                max: TOKEN_BYTES_MAX,
            });
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = unix_seconds();
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        if let Some((caller, exp)) = remembered {
            return if now <= exp.saturating_add(EXP_LEEWAY_S) {
                Ok(caller)
            } else {
                Err(AuthError::Expired)
            };
        }
        let (caller, exp) = self.verify_signed(token)?;
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= VERIFIED_TOKENS_MAX {
            verified.clear();
        }
        verified.insert(digest, (caller.clone(), exp));
        Ok(caller)
    }

    /// Checks the signature and claims of `token`: its caller and expiry.
    fn verify_signed(&self, token: &str) -> Result<(Caller, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid {
            reason: "not a JWT",
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid {
                reason: "alg must be EdDSA",
            });
        }
        let kid = header.kid.ok_or(AuthError::NoKeyId)?;
        let keys = self.keys();
        let key = keys.by_kid.get(&kid).ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = EXP_LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Invalid {
                reason: "bad signature",
            },
            _ => AuthError::Invalid {
                reason: "claims are not sub, tenant, role, exp, iat",
            },
        })?;
        let claims = data.claims;
        check_claims(&claims)?;
        let tenant = (claims.tenant != ANY_TENANT).then_some(claims.tenant);
        if tenant.is_none() && claims.role != Role::Admin {
            return Err(AuthError::Invalid {
                reason: "only an admin token may name every tenant (*)",
            });
        }
        Ok((
            Caller {
                subject: claims.sub,
                tenant,
                role: claims.role,
                token: Some(token.to_owned()),
            },
            claims.exp,
        ))
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_claims(claims: &Claims) -> Result<(), AuthError> {
    if claims.sub.is_empty() || claims.sub.len() > SUBJECT_BYTES_MAX {
        return Err(AuthError::Invalid {
            reason: "sub must be 1 to 128 bytes",
        });
    }
    if claims.tenant.is_empty() || claims.tenant.len() > domain::limits::TENANT_ID_BYTES_MAX {
        return Err(AuthError::Invalid {
            reason: "tenant must be 1 to 128 bytes",
        });
    }
    Ok(())
}

/// How a node authenticates callers.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `--insecure` without a key set: every caller is [`Caller::anonymous`].
    Off,
    /// Bearer tokens verified against a key set.
    Tokens(Arc<Verifier>),
}

impl Auth {
    /// The caller of a request, from its `authorization` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let verifier = match self {
            Auth::Off => return Ok(Caller::anonymous()),
            Auth::Tokens(verifier) => verifier,
        };
        let value = metadata
            .get(AUTHORIZATION_HEADER)
            .ok_or(AuthError::Missing)?;
        if value.len() > TOKEN_BYTES_MAX + "Bearer ".len() {
            return Err(AuthError::TooLong {
                max: TOKEN_BYTES_MAX,
            });
        }
        let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?;
        verifier.verify(token.trim())
    }

    /// Re-reads the key set (SIGHUP); nothing to do when authentication is off.
    pub fn reload(&self) -> Result<Option<Vec<String>>, KeySetError> {
        match self {
            Auth::Off => Ok(None),
            Auth::Tokens(verifier) => verifier.reload().map(Some),
        }
    }
}

/// A signing key: an Ed25519 private key in PKCS#8 and the id it is published under.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A signing key or key set that cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to generate an Ed25519 key")]
    Generate,
    #[error("failed to read the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 private key in PKCS#8 PEM ('switchboard token keygen')")]
    NotAKey { path: PathBuf },
    #[error("{path} already exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("key id {kid:?} must be 1 to 64 letters, digits, '-' or '_'")]
    BadKid { kid: String },
    #[error("failed to sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error(transparent)]
    KeySet(#[from] KeySetError),
    #[error("failed to encode the key set: {0}")]
    Encode(#[from] serde_json::Error),
}

const PEM_TAG: &str = "PRIVATE KEY";

impl SigningKey {
    /// A new random key.
    pub fn generate(kid: &str) -> Result<Self, KeyError> {
        check_kid(kid)?;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError::Generate)?;
        Ok(Self {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
        })
    }

    /// Reads a key written by [`SigningKey::write_pem`]; its id is the file's `kid:` comment
    /// line, or `kid` when given.
    pub fn read_pem(path: &Path, kid: Option<&str>) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let not_a_key = || KeyError::NotAKey {
            path: path.to_owned(),
        };
        let kid = match kid {
            Some(kid) => kid.to_owned(),
            None => text
                .lines()
                .find_map(|line| line.strip_prefix("kid: "))
                .ok_or_else(not_a_key)?
                .trim()
                .to_owned(),
        };
        check_kid(&kid)?;
        let body: String = text
            .lines()
            .skip_while(|line| !line.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|line| !line.starts_with("-----END PRIVATE KEY-----"))
            .collect();
        let pkcs8 = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| not_a_key())?;
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|_| not_a_key())?;
        Ok(Self { kid, pkcs8 })
    }

    /// The key as PEM, with its id on a comment line before the block.
    pub fn to_pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let mut pem = format!("kid: {}\n-----BEGIN {PEM_TAG}-----\n", self.kid);
        for chunk in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {PEM_TAG}-----\n"));
        pem
    }

    /// The public half, as a key set entry.
    pub fn jwk(&self) -> Result<Jwk, KeyError> {
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.pkcs8)
            .map_err(|_| KeyError::Generate)?;
        Ok(Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            alg: Some("EdDSA".to_owned()),
            use_: Some("sig".to_owned()),
        })
    }

    /// A signed token for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ed_der(&self.pkcs8);
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }

    /// Claims for a token of `ttl` from now.
    pub fn claims(subject: &str, tenant: &str, role: Role, ttl: Duration) -> Claims {
        let now = unix_seconds();
        Claims {
            sub: subject.to_owned(),
            tenant: tenant.to_owned(),
            role,
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
        }
    }
}

fn check_kid(kid: &str) -> Result<(), KeyError> {
    let ok = !kid.is_empty()
        && kid.len() <= KEY_ID_BYTES_MAX
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadKid {
            kid: kid.chars().take(KEY_ID_BYTES_MAX).collect(),
        })
    }
}

/// File names of a token directory (`switchboard token keygen --dir DIR`).
pub mod files {
    /// The public key set nodes verify with (`serve --token-keys`).
    pub const KEY_SET: &str = "token-keys.json";

    /// The signing key of `kid` (kept by whoever issues tokens, never by nodes).
    pub fn signing_key(kid: &str) -> String {
        format!("token-signing-{kid}.pem")
    }
}

/// Creates a signing key in `dir` and adds its public half to the key set there (creating the
/// set when missing): the first step of a rotation as well as of a new cluster.
pub fn keygen(dir: &Path, kid: &str, force: bool) -> Result<(PathBuf, PathBuf), KeyError> {
    let key = SigningKey::generate(kid)?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let key_path = dir.join(files::signing_key(kid));
    if key_path.exists() && !force {
        return Err(KeyError::Exists { path: key_path });
    }
    let set_path = dir.join(files::KEY_SET);
    let mut set = if set_path.exists() {
        let text = std::fs::read(&set_path).map_err(|source| KeyError::Read {
            path: set_path.clone(),
            source,
        })?;
        serde_json::from_slice::<KeySetFile>(&text).map_err(|source| KeySetError::Parse {
            path: set_path.clone(),
            source,
        })?
    } else {
        KeySetFile::default()
    };
    set.keys.retain(|jwk| jwk.kid != kid);
    set.keys.push(key.jwk()?);
    write_private(&key_path, key.to_pem().as_bytes())?;
    let json = serde_json::to_vec_pretty(&set)?;
    write_file(&set_path, &json)?;
    Ok((key_path, set_path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| KeyError::Write {
            path: path.to_owned(),
            source,
        })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| KeyError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_dir() -> (tempfile::TempDir, SigningKey, Verifier) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key_path, set_path) = keygen(dir.path(), "k1", false).expect("keygen");
        let key = SigningKey::read_pem(&key_path, None).expect("read key");
        let verifier = Verifier::load(&set_path).expect("load key set");
        (dir, key, verifier)
    }

    fn token(key: &SigningKey, tenant: &str, role: Role) -> String {
        key.sign(&SigningKey::claims(
            "worker-1",
            tenant,
            role,
            Duration::from_secs(60),
        ))
        .expect("sign")
    }

    #[test]
    fn a_token_verifies_with_its_claims() {
        let (_dir, key, verifier) = key_dir();
        let caller = verifier
            .verify(&token(&key, "acme", Role::Agent))
            .expect("verifies");
        assert_eq!(caller.subject(), "worker-1");
        assert_eq!(caller.role(), Role::Agent);
        assert_eq!(caller.tenant(""), Ok("acme".to_owned()));
        assert_eq!(caller.tenant("acme"), Ok("acme".to_owned()));
        assert!(matches!(
            caller.tenant("globex"),
            Err(AuthError::TenantMismatch { .. })
        ));
        assert_eq!(caller.tenant_scope(), Some("acme"));
    }

    #[test]
    fn an_admin_acts_for_any_tenant() {
        let (_dir, key, verifier) = key_dir();
        let caller = verifier
            .verify(&token(&key, ANY_TENANT, Role::Admin))
            .expect("verifies");
        assert_eq!(caller.tenant("globex"), Ok("globex".to_owned()));
        assert_eq!(caller.tenant_scope(), None);
    }

    #[test]
    fn only_an_admin_token_may_name_every_tenant() {
        let (_dir, key, verifier) = key_dir();
        let err = verifier
            .verify(&token(&key, ANY_TENANT, Role::Agent))
            .expect_err("refused");
        assert!(matches!(err, AuthError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let (_dir, key, verifier) = key_dir();
        let good = token(&key, "acme", Role::Viewer);
        // Swap the claims for an admin's, keeping the signature.
        let admin = token(&key, "acme", Role::Admin);
        let mut parts: Vec<&str> = good.split('.').collect();
        let admin_claims = admin.split('.').nth(1).expect("claims part");
        parts[1] = admin_claims;
        let forged = parts.join(".");
        assert_eq!(
            verifier.verify(&forged).expect_err("refused"),
            AuthError::Invalid {
                reason: "bad signature"
            }
        );
    }

    #[test]
    fn a_token_of_another_key_set_is_refused() {
        let (_dir, _key, verifier) = key_dir();
        let other = tempfile::tempdir().expect("temp dir");
        let (key_path, _) = keygen(other.path(), "k1", false).expect("keygen");
        let stranger = SigningKey::read_pem(&key_path, None).expect("read key");
        let err = verifier
            .verify(&token(&stranger, "acme", Role::Admin))
            .expect_err("refused");
        assert_eq!(
            err,
            AuthError::Invalid {
                reason: "bad signature"
            }
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let (_dir, key, verifier) = key_dir();
        let mut claims = SigningKey::claims("w", "acme", Role::Agent, Duration::ZERO);
        claims.exp = claims.iat.saturating_sub(3600);
        let expired = key.sign(&claims).expect("sign");
        assert_eq!(
            verifier.verify(&expired).expect_err("refused"),
            AuthError::Expired
        );
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let (_dir, key, verifier) = key_dir();
        let good = token(&key, "acme", Role::Admin);
        let claims = good.split('.').nth(1).expect("claims part");
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let unsigned = format!("{none_header}.{claims}.");
        assert!(verifier.verify(&unsigned).is_err());
        let hs_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k1"}"#);
        let hs = format!("{hs_header}.{claims}.AAAA");
        assert_eq!(
            verifier.verify(&hs).expect_err("refused"),
            AuthError::Invalid {
                reason: "alg must be EdDSA"
            }
        );
    }

    #[test]
    fn keys_rotate_through_a_reload() {
        let (dir, old_key, verifier) = key_dir();
        let (new_path, _) = keygen(dir.path(), "k2", false).expect("second key");
        let new_key = SigningKey::read_pem(&new_path, None).expect("read key");
        // Not yet reloaded: the new key is unknown.
        assert_eq!(
            verifier
                .verify(&token(&new_key, "acme", Role::Agent))
                .expect_err("unknown before reload"),
            AuthError::UnknownKey
        );
        assert_eq!(
            verifier.reload().expect("reload"),
            vec!["k1".to_owned(), "k2".to_owned()]
        );
        verifier
            .verify(&token(&new_key, "acme", Role::Agent))
            .expect("new key verifies");
        verifier
            .verify(&token(&old_key, "acme", Role::Agent))
            .expect("old key still verifies during the rotation");
        // A key removed from the set stops working at the reload, though its token was verified.
        let set_path = dir.path().join(files::KEY_SET);
        let mut set: KeySetFile =
            serde_json::from_slice(&std::fs::read(&set_path).expect("read")).expect("parse");
        set.keys.retain(|jwk| jwk.kid != "k1");
        std::fs::write(&set_path, serde_json::to_vec(&set).expect("encode")).expect("write");
        verifier.reload().expect("reload without k1");
        assert_eq!(
            verifier
                .verify(&token(&old_key, "acme", Role::Agent))
                .expect_err("k1 is gone"),
            AuthError::UnknownKey
        );
        // A broken file keeps the keys in use.
        std::fs::write(dir.path().join(files::KEY_SET), b"{not json").expect("write");
        assert!(verifier.reload().is_err());
        verifier
            .verify(&token(&new_key, "acme", Role::Agent))
            .expect("keys kept after a bad reload");
    }

    #[test]
    fn roles_allow_by_access() {
        assert!(Role::Viewer.allows(Access::Read));
        assert!(!Role::Viewer.allows(Access::Write));
        assert!(!Role::Viewer.allows(Access::Admin));
        assert!(Role::Agent.allows(Access::Write));
        assert!(!Role::Agent.allows(Access::Admin));
        assert!(Role::Admin.allows(Access::Admin));
        for name in Role::NAMES {
            assert_eq!(Role::parse(name).map(Role::as_str), Some(name));
        }
    }

    #[test]
    fn the_header_must_be_a_bearer_token() {
        let (_dir, key, verifier) = key_dir();
        let auth = Auth::Tokens(Arc::new(verifier));
        let mut metadata = MetadataMap::new();
        assert_eq!(
            auth.authenticate(&metadata).expect_err("missing"),
            AuthError::Missing
        );
        metadata.insert(
            AUTHORIZATION_HEADER,
            "Basic dXNlcjpwdw==".parse().expect("ascii"),
        );
        assert_eq!(
            auth.authenticate(&metadata).expect_err("basic"),
            AuthError::NotBearer
        );
        let value = format!("Bearer {}", token(&key, "acme", Role::Agent));
        metadata.insert(AUTHORIZATION_HEADER, value.parse().expect("ascii"));
        assert_eq!(
            auth.authenticate(&metadata).expect("bearer").subject(),
            "worker-1"
        );
    }

    #[test]
    fn a_key_set_with_a_bad_key_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys.json");
        std::fs::write(
            &path,
            br#"{"keys":[{"kty":"RSA","crv":"Ed25519","kid":"old","x":"AAAA"}]}"#,
        )
        .expect("write");
        let err = Verifier::load(&path).expect_err("refused");
        assert!(err.to_string().contains("\"old\""), "{err}");
        std::fs::write(&path, br#"{"keys":[]}"#).expect("write");
        assert!(matches!(
            Verifier::load(&path).expect_err("empty"),
            KeySetError::Empty { .. }
        ));
    }
}
