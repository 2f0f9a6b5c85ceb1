//! AMS API keys: the credential of the API-key client of the official SDKs (Python ≥ 1.6.0;
//! Java, PHP and Go since 2026-09), sent as `Authorization: Bearer <key>` in place of the RSA
//! `Client-Id`/`Request-Time`/`Signature` headers.
//!
//! Format (the SDKs' `ApiKeyAuth`):
//! `{isak|irak}_{TEST|PROD}_{base64(client id) without padding}_{secret}`. `isak` is a
//! Standard key, `irak` a Restricted one (limited to some routes); `TEST` keys call the
//! sandbox paths (`/ams/sandbox/api/…`), `PROD` keys the live ones.
//!
//! Why a type of its own: the key is a bearer secret. [`ApiKey`] keeps it out of `Debug`,
//! `Display` and every error of this module, and offers only what may be shown instead —
//! its kind, its environment, the client id it was issued for and a SHA-256 prefix
//! ([`ApiKey::fingerprint`]) — so that a log line, a metric or `check-config` cannot print it
//! by accident.

use std::fmt;

use base64::Engine as _;

/// Standard (`isak`) or Restricted (`irak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyKind {
    /// `isak_…`: every route the merchant may call.
    Standard,
    /// `irak_…`: only the routes it was issued for (others answer `OAUTH_FAIL`).
    Restricted,
}

impl ApiKeyKind {
    /// `Standard` / `Restricted`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyKind::Standard => "Standard",
            ApiKeyKind::Restricted => "Restricted",
        }
    }
}

/// Which Alipay environment a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyEnv {
    /// `TEST`: sandbox paths only (`/ams/sandbox/api/…`).
    Test,
    /// `PROD`: live paths only (`/ams/api/…`).
    Prod,
}

impl ApiKeyEnv {
    /// `TEST` / `PROD`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyEnv::Test => "TEST",
            ApiKeyEnv::Prod => "PROD",
        }
    }

    /// Whether `path` belongs to this environment: `/ams/sandbox/…` for TEST, anything else
    /// for PROD (the SDKs rewrite the first `/ams/api/` into `/ams/sandbox/api/` for TEST
    /// keys, and back for PROD keys).
    pub fn owns_path(self, path: &str) -> bool {
        let sandbox = path.starts_with("/ams/sandbox/");
        match self {
            ApiKeyEnv::Test => sandbox,
            ApiKeyEnv::Prod => !sandbox,
        }
    }
}

/// Why a text is not an API key. The messages never contain the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// No key at all.
    #[error("the file is empty; put the API key from the Antom dashboard in it (one line)")]
    Empty,
    /// More than one line, or whitespace/control characters inside the key.
    #[error(
        "the key contains whitespace or control characters (more than one line?); the file must \
         hold exactly one key on one line"
    )]
    Whitespace,
    /// The prefix is neither `isak_` nor `irak_`.
    #[error(
        "the key does not start with isak_ (Standard) or irak_ (Restricted); an API key looks \
         like isak_TEST_<base64 client id>_<secret>"
    )]
    Kind,
    /// The environment is neither `TEST` nor `PROD`.
    #[error(
        "the key's environment is not TEST or PROD; an API key looks like \
         isak_TEST_<base64 client id>_<secret> or isak_PROD_…"
    )]
    Env,
    /// No `_<secret>` after the client-id part, or an empty part.
    #[error(
        "the key has no client-id part or no secret; an API key has four parts joined by `_`: \
         isak|irak, TEST|PROD, the base64 client id, the secret"
    )]
    Parts,
    /// The client-id part is not unpadded base64 of a printable client id.
    #[error(
        "the key's client-id part is not base64 of a client id (unpadded, standard alphabet); \
         copy the whole key again from the Antom dashboard"
    )]
    ClientId,
}

/// A parsed API key. `Debug` and `Display` show [`ApiKey::describe`], never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    secret_text: String,
    kind: ApiKeyKind,
    env: ApiKeyEnv,
    client_id: String,
    fingerprint: String,
}

/// Longest key accepted: real keys are well under 200 characters.
pub const MAX_API_KEY_LEN: usize = 1024;

impl ApiKey {
    /// Parses the key as stored in a file: surrounding whitespace (the final newline) is
    /// ignored; anything else must be exactly one key.
    pub fn parse(text: &str) -> Result<ApiKey, ApiKeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if text.len() > MAX_API_KEY_LEN || text.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ApiKeyError::Whitespace);
        }
        let mut parts = text.splitn(3, '_');
        let kind = match parts.next() {
            Some("isak") => ApiKeyKind::Standard,
            Some("irak") => ApiKeyKind::Restricted,
            _ => return Err(ApiKeyError::Kind),
        };
        let env = match parts.next() {
            Some("TEST") => ApiKeyEnv::Test,
            Some("PROD") => ApiKeyEnv::Prod,
            _ => return Err(ApiKeyError::Env),
        };
        let (id_part, secret) = parts
            .next()
            .and_then(|rest| rest.split_once('_'))
            .ok_or(ApiKeyError::Parts)?;
        if id_part.is_empty() || secret.is_empty() {
            return Err(ApiKeyError::Parts);
        }
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(id_part)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(id_part))
            .map_err(|_| ApiKeyError::ClientId)?;
        let client_id = String::from_utf8(decoded).map_err(|_| ApiKeyError::ClientId)?;
        if client_id.is_empty() || client_id.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(ApiKeyError::ClientId);
        }
        let digest = crate::content::sha256_hex(text.as_bytes());
        Ok(ApiKey {
            secret_text: text.to_string(),
            kind,
            env,
            client_id,
            fingerprint: format!("SHA256:{}", &digest[..16]),
        })
    }

    /// Standard or Restricted.
    pub fn kind(&self) -> ApiKeyKind {
        self.kind
    }

    /// TEST or PROD.
    pub fn env(&self) -> ApiKeyEnv {
        self.env
    }

    /// The client id the key was issued for (decoded from the key; not secret).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// `SHA256:` and the first 16 hex digits of the SHA-256 of the whole key: enough to tell
    /// two keys apart in a log or a dashboard, useless for guessing the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The value of the `Authorization` header: `Bearer <key>`. The only way to the key text;
    /// it goes to the gateway and nowhere else.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.secret_text)
    }

    /// What may be shown of the key: `Standard TEST API key SHA256:… for client id …`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} API key {} for client id {}",
            self.kind.as_str(),
            self.env.as_str(),
            self.fingerprint,
            crate::echo(&self.client_id)
        )
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.describe())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(s)
    }

    #[test]
    fn parses_and_never_shows_the_secret() {
        let text = format!(
            "isak_TEST_{}_s3cr3t_with_underscores-and+more\n",
            b64("SANDBOX_5YBZ2Q2ZAB7C01234")
        );
        let k = ApiKey::parse(&text).unwrap();
        assert_eq!(k.kind(), ApiKeyKind::Standard);
        assert_eq!(k.env(), ApiKeyEnv::Test);
        assert_eq!(k.client_id(), "SANDBOX_5YBZ2Q2ZAB7C01234");
        assert_eq!(k.authorization(), format!("Bearer {}", text.trim()));
        assert!(k.fingerprint().starts_with("SHA256:") && k.fingerprint().len() == 23);
        for shown in [format!("{k:?}"), k.to_string(), k.describe()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("Standard TEST"), "{shown}");
        }
        let r = ApiKey::parse(&format!("irak_PROD_{}_x", b64("2188120000000001"))).unwrap();
        assert_eq!(r.kind(), ApiKeyKind::Restricted);
        assert_eq!(r.env(), ApiKeyEnv::Prod);
    }

    #[test]
    fn refuses_malformed_keys_without_echoing_them() {
        let id = b64("T_1");
        let cases = [
            ("", ApiKeyError::Empty),
            ("sk_live_SECRETVALUE", ApiKeyError::Kind),
            ("isak_DEV_x_SECRETVALUE", ApiKeyError::Env),
            ("isak_TEST_SECRETVALUE", ApiKeyError::Parts),
            ("isak_TEST__SECRETVALUE", ApiKeyError::Parts),
            (&*format!("isak_TEST_{id}_"), ApiKeyError::Parts),
            ("isak_TEST_!!!_SECRETVALUE", ApiKeyError::ClientId),
            (
                &*format!("isak_TEST_{id}_SECRET VALUE"),
                ApiKeyError::Whitespace,
            ),
            (
                &*format!("isak_TEST_{id}_SECRETVALUE\nisak_TEST_{id}_x"),
                ApiKeyError::Whitespace,
            ),
        ];
        for (text, want) in cases {
            let e = ApiKey::parse(text).unwrap_err();
            assert_eq!(e, want, "{text}");
            assert!(!e.to_string().contains("SECRETVALUE"));
        }
    }

    #[test]
    fn environments_own_their_paths() {
        assert!(ApiKeyEnv::Test.owns_path("/ams/sandbox/api/v1/payments/pay"));
        assert!(!ApiKeyEnv::Test.owns_path("/ams/api/v1/payments/pay"));
        assert!(ApiKeyEnv::Prod.owns_path("/ams/api/v1/payments/pay"));
        assert!(!ApiKeyEnv::Prod.owns_path("/ams/sandbox/api/v1/payments/pay"));
    }
}
