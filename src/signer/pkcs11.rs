//! The merchant key in a PKCS#11 token (HSM, cloud KMS module, SoftHSM): module loading, the
//! logged-in session pool, finding and checking the key, and signing a digest.
//!
//! Why this shape:
//! - one module load and one `C_Initialize` per module path per process ([`module`]), and one
//!   logged-in session pool per token and PIN ([`SessionPool`]), shared by every merchant and
//!   every reload that uses them; a module is never finalized while the process runs;
//! - only the SHA-256 digest, wrapped in the PKCS#1 DigestInfo, crosses to the token
//!   (`CKM_RSA_PKCS`): the token pads and signs, the body never leaves the process;
//! - a session that saw an error is closed, not reused, and the key handle is looked up again
//!   on the next sign (a token that was reset or re-plugged comes back without a restart);
//! - the public half is read from the private key object (CKA_MODULUS and
//!   CKA_PUBLIC_EXPONENT, public attributes of an RSA private key), so the preflight checks a
//!   token key exactly like a file key. No code reads a secret attribute: the private exponent,
//!   primes or a secret value are never asked for (`tests/it/pkcs11.rs` checks the source).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use base64::Engine as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use cryptoki::types::AuthPin;

use super::budget::{self, Budget};
use super::{Backend, SignFailure, Signer, SigningKey};
use crate::config::Pkcs11Key;
use crate::protocol::{sha256_hex, ContentDigest, PublicKey};

/// DER prefix of the PKCS#1 v1.5 DigestInfo for SHA-256 (RFC 8017 §9.2 note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Concurrent signs when neither `max_concurrent_signs` nor the token's session limit says.
const DEFAULT_SLOTS: usize = 8;
/// Upper bound of the default taken from the token (some report tens of thousands).
const MAX_DEFAULT_SLOTS: u64 = 64;
/// Largest PIN file read.
const MAX_PIN_BYTES: u64 = 1024;

/// What is wrong with a token key, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

fn ck(what: &str, e: CkError) -> TokenError {
    TokenError(format!("{what}: {e}"))
}

/// The module loaded from `path`, initialized once per process.
pub fn module(path: &Path) -> Result<Pkcs11, TokenError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    if !path.exists() {
        return Err(TokenError(format!(
            "the PKCS#11 module {} does not exist (module missing): install the vendor's \
             library (SoftHSM: the `softhsm2` package) or correct `pkcs11_module`",
            path.display()
        )));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        TokenError(format!(
            "the PKCS#11 module {} could not be loaded ({e}): is it a PKCS#11 library for this \
             machine's architecture?",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ck(&format!("C_Initialize of {} failed", path.display()), e)),
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Reads the user PIN from its file (trailing newline and spaces dropped).
pub fn read_pin(path: &Path) -> Result<AuthPin, TokenError> {
    read_pin_and_digest(path).map(|(pin, _)| pin)
}

/// The PIN and the SHA-256 of its text: a changed PIN file (a rotated PIN) makes a new pool
/// at the next reload; the PIN itself is never kept outside the `AuthPin`.
fn read_pin_and_digest(path: &Path) -> Result<(AuthPin, String), TokenError> {
    let bytes = crate::files::read_file(path, MAX_PIN_BYTES)
        .map_err(|e| TokenError(format!("cannot read the PIN file {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| TokenError(format!("the PIN file {} is not text", path.display())))?;
    let pin = text.trim_end_matches(['\n', '\r', ' ', '\t']);
    if pin.is_empty() {
        return Err(TokenError(format!(
            "the PIN file {} is empty",
            path.display()
        )));
    }
    Ok((AuthPin::new(pin.into()), sha256_hex(pin.as_bytes())))
}

fn token_label(ctx: &Pkcs11, slot: Slot) -> Option<String> {
    ctx.get_token_info(slot)
        .ok()
        .map(|t| t.label().trim_end().to_string())
}

/// The slot holding the token labelled `label` (or the only token when `None`).
pub fn find_token(ctx: &Pkcs11, label: Option<&str>) -> Result<Slot, TokenError> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| ck("listing the module's tokens failed", e))?;
    let labels: Vec<(Slot, String)> = slots
        .iter()
        .filter_map(|s| token_label(ctx, *s).map(|l| (*s, l)))
        .collect();
    let present = || {
        if labels.is_empty() {
            "the module shows no initialized token".to_string()
        } else {
            format!(
                "tokens present: {}",
                labels
                    .iter()
                    .map(|(_, l)| format!("\"{l}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    match label {
        Some(want) => labels
            .iter()
            .find(|(_, l)| l == want)
            .map(|(s, _)| *s)
            .ok_or_else(|| {
                TokenError(format!(
                    "token not found: no token labelled \"{want}\" ({}); check `token=` in the \
                     URI (SoftHSM: `softhsm2-util --show-slots`) and SOFTHSM2_CONF or the \
                     vendor's configuration",
                    present()
                ))
            }),
        None if labels.len() == 1 => Ok(labels[0].0),
        None => Err(TokenError(format!(
            "the URI names no token and the module has {} ({}); add `token=<label>` to the URI (`--token` for `pkcs11` commands)",
            labels.len(),
            present()
        ))),
    }
}

/// Logs `session` in as the user; "already logged in" (another session of this process did
/// it) is success.
pub fn login(session: &Session, pin: &AuthPin, pin_file: &Path) -> Result<(), TokenError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(TokenError(format!(
            "wrong PIN: the token refused the PIN in {} (CKR_PIN_INCORRECT); put the user PIN \
             of this token in the file (tokens lock the PIN after a few wrong tries)",
            pin_file.display()
        ))),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(TokenError(
            "the token's user PIN is locked (CKR_PIN_LOCKED): the security officer must reset it"
                .into(),
        )),
        Err(e) => Err(ck("logging in to the token failed", e)),
    }
}

/// Logged-in sessions of one token, shared by every key on it.
pub struct SessionPool {
    ctx: Pkcs11,
    slot: Slot,
    pin: AuthPin,
    pin_file: PathBuf,
    idle: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool")
            .field("slot", &self.slot.id())
            .finish()
    }
}

impl SessionPool {
    /// A session: an idle one, or a new one, logged in.
    fn take(&self) -> Result<Session, TokenError> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        let s = self
            .ctx
            .open_ro_session(self.slot)
            .map_err(|e| ck("opening a session on the token failed", e))?;
        login(&s, &self.pin, &self.pin_file)?;
        Ok(s)
    }

    /// Back to the pool after a successful use (a session that failed is dropped: closed).
    fn give_back(&self, s: Session) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// Concurrent signs the token allows: its session limit, or [`DEFAULT_SLOTS`].
    fn session_limit(&self) -> usize {
        match self
            .ctx
            .get_token_info(self.slot)
            .map(|t| t.max_session_count())
        {
            Ok(Limit::Max(n)) if n > 0 => n.min(MAX_DEFAULT_SLOTS) as usize,
            _ => DEFAULT_SLOTS,
        }
    }
}

/// Module, token slot and the PIN's SHA-256: what a pool is shared by.
type PoolId = (PathBuf, u64, String);

/// The pool for (module, token, PIN): one per process.
fn pool(key: &Pkcs11Key) -> Result<Arc<SessionPool>, TokenError> {
    static POOLS: OnceLock<Mutex<HashMap<PoolId, Arc<SessionPool>>>> = OnceLock::new();
    let ctx = module(&key.module)?;
    let slot = find_token(&ctx, key.token.as_deref())?;
    let (pin, pin_digest) = read_pin_and_digest(&key.pin_file)?;
    let id = (key.module.clone(), slot.id(), pin_digest);
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = pools.get(&id) {
        return Ok(p.clone());
    }
    let p = Arc::new(SessionPool {
        ctx,
        slot,
        pin,
        pin_file: key.pin_file.clone(),
        idle: Mutex::new(Vec::new()),
    });
    // log in now: a wrong PIN is reported at start, not on the first payment
    let s = p.take()?;
    p.give_back(s);
    pools.insert(id, p.clone());
    Ok(p)
}

/// The search template for the key the URI names.
fn template(object: Option<&str>, id: Option<&[u8]>) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(label) = object {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = id {
        t.push(Attribute::Id(id.to_vec()));
    }
    t
}

/// The labels of the private keys on the token, for "no such object".
fn private_key_labels(session: &Session) -> Vec<String> {
    let Ok(handles) = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]) else {
        return Vec::new();
    };
    handles
        .into_iter()
        .filter_map(|h| {
            session
                .get_attributes(h, &[AttributeType::Label])
                .ok()
                .and_then(|a| match a.into_iter().next() {
                    Some(Attribute::Label(l)) => Some(String::from_utf8_lossy(&l).into_owned()),
                    _ => None,
                })
        })
        .collect()
}

fn find_key(session: &Session, key: &Pkcs11Key) -> Result<ObjectHandle, TokenError> {
    let found = session
        .find_objects(&template(key.object.as_deref(), key.id.as_deref()))
        .map_err(|e| ck("searching the token failed", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            let labels = private_key_labels(session);
            Err(TokenError(format!(
                "no such object: the token has no private key {} (private keys on the token: \
                 {}); check `object=`/`id=` in the URI",
                describe(key),
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    labels
                        .iter()
                        .map(|l| format!("\"{l}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )))
        }
        many => Err(TokenError(format!(
            "{} private keys match {}; add `id=` to the URI to pick one",
            many.len(),
            describe(key)
        ))),
    }
}

fn describe(key: &Pkcs11Key) -> String {
    match (&key.object, &key.id) {
        (Some(o), Some(id)) => format!("labelled \"{o}\" with id {}", hex(id)),
        (Some(o), None) => format!("labelled \"{o}\""),
        (None, Some(id)) => format!("with id {}", hex(id)),
        (None, None) => "at all".into(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads and checks the key's public attributes: RSA, 2048–4096 bits, allowed to sign; the
/// public half as a [`PublicKey`].
pub fn public_half(session: &Session, handle: ObjectHandle) -> Result<PublicKey, TokenError> {
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Sign,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| ck("reading the key's attributes failed", e))?;
    let (mut kind, mut sign, mut n, mut e) = (None, None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::Sign(s) => sign = Some(s),
            Attribute::Modulus(m) => n = Some(m),
            Attribute::PublicExponent(x) => e = Some(x),
            _ => {}
        }
    }
    if kind != Some(KeyType::RSA) {
        return Err(TokenError(format!(
            "key not RSA: the object's key type is {}; Alipay signs with RSA (2048–4096 bits): \
             make an RSA key in the token (`alipay-sidecar pkcs11 keygen`)",
            kind.map(|k| k.to_string())
                .unwrap_or_else(|| "unknown".into())
        )));
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err(TokenError(
            "the token does not show the key's modulus and public exponent".into(),
        ));
    };
    let n = strip_zeros(&n);
    let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if !(2048..=4096).contains(&bits) {
        return Err(TokenError(format!(
            "the key is RSA-{bits}; Alipay keys are RSA 2048–4096 bits: make an RSA-2048 key \
             in the token (`alipay-sidecar pkcs11 keygen`)"
        )));
    }
    if sign != Some(true) {
        return Err(TokenError(
            "key without the sign permission: the object's CKA_SIGN is false, so the token \
             refuses to sign with it; make a key with the sign usage (`alipay-sidecar pkcs11 \
             keygen`, or pkcs11-tool --usage-sign)"
                .into(),
        ));
    }
    let spki = rsa_spki_der(n, strip_zeros(&e));
    PublicKey::from_text(&base64::engine::general_purpose::STANDARD.encode(spki))
        .map_err(|e| TokenError(format!("the token's public key does not parse: {e}")))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[i..]
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    der_len(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

fn der_uint(v: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(v);
    der(0x02, &c)
}

/// SubjectPublicKeyInfo (rsaEncryption) DER of the RSA public key (n, e).
pub fn rsa_spki_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    const RSA_ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let rsa_key = der(0x30, &[der_uint(n), der_uint(e)].concat());
    let mut bits = vec![0u8];
    bits.extend(rsa_key);
    der(0x30, &[RSA_ALG.to_vec(), der(0x03, &bits)].concat())
}

/// The token key of one merchant: found, checked, with its public half.
pub struct TokenSigner {
    inner: Arc<TokenKey>,
    budget: Arc<Budget>,
    merchant: String,
}

/// What a blocking sign needs (moved to tokio's blocking pool).
struct TokenKey {
    pool: Arc<SessionPool>,
    key: Pkcs11Key,
    /// The key's handle, `None` after an error (looked up again on the next sign).
    handle: Mutex<Option<ObjectHandle>>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("uri", &self.inner.key.uri)
            .finish()
    }
}

/// Reaches the token, finds and checks the key, and returns the merchant's signing key (start,
/// reload and `check-config`).
pub fn load(merchant: &str, key: &Pkcs11Key) -> Result<SigningKey, TokenError> {
    let pool = pool(key)?;
    let session = pool.take()?;
    let handle = find_key(&session, key)?;
    let public = public_half(&session, handle)?;
    pool.give_back(session);
    let slots = key
        .max_concurrent_signs
        .unwrap_or_else(|| pool.session_limit());
    let signer = TokenSigner {
        budget: budget::for_merchant(merchant, slots),
        inner: Arc::new(TokenKey {
            pool,
            key: key.clone(),
            handle: Mutex::new(Some(handle)),
        }),
        merchant: merchant.to_string(),
    };
    super::metrics::announce(merchant, Backend::Pkcs11);
    Ok(SigningKey::external(
        merchant,
        Arc::new(signer),
        public,
        key.uri.clone(),
    ))
}

impl TokenKey {
    /// One sign on a pooled session (blocking: runs on tokio's blocking pool).
    fn sign_blocking(&self, digest: &[u8]) -> Result<Vec<u8>, TokenError> {
        let session = self.pool.take()?;
        let cached = *self.handle.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            let handle = match cached {
                Some(h) => h,
                None => find_key(&session, &self.key)?,
            };
            let mut input = Vec::with_capacity(SHA256_DIGEST_INFO.len() + digest.len());
            input.extend_from_slice(&SHA256_DIGEST_INFO);
            input.extend_from_slice(digest);
            let sig = session
                .sign(&Mechanism::RsaPkcs, handle, &input)
                .map_err(|e| ck("the token refused to sign", e))?;
            Ok::<_, TokenError>((handle, sig))
        })();
        match result {
            Ok((handle, sig)) => {
                *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
                self.pool.give_back(session);
                Ok(sig)
            }
            Err(e) => {
                // the session is closed (dropped) and the key looked up again next time
                *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = None;
                drop(session);
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Signer for TokenSigner {
    fn backend(&self) -> Backend {
        Backend::Pkcs11
    }

    async fn sign(&self, digest: &ContentDigest) -> Result<Vec<u8>, SignFailure> {
        let inner = self.inner.clone();
        let digest = digest.as_bytes().to_vec();
        self.budget
            .run(&self.merchant, self.inner.key.sign_timeout, move || {
                inner.sign_blocking(&digest).map_err(|e| e.0)
            })
            .await
    }
}
