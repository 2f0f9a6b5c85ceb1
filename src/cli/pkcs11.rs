//! `alipay-sidecar pkcs11 list` and `alipay-sidecar pkcs11 keygen --label NAME`: the operator
//! tools for a merchant key kept in a PKCS#11 token (docs/hsm.md).
//!
//! Why in the sidecar: the operator needs the public-key fingerprint the sidecar will report
//! and the one-line base64 public key the Antom dashboard asks for, and a key pair made with
//! the attributes the sidecar expects (sensitive, never extractable, allowed to sign) —
//! without a second tool that speaks the module's dialect.

use std::io::Write;
use std::path::PathBuf;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::exit::EXIT_USAGE;
use crate::signer::pkcs11::{find_token, login, module, public_half, read_pin, TokenError};

/// `alipay-sidecar pkcs11 …`.
#[derive(clap::Args, Debug, Clone)]
pub struct Pkcs11Args {
    #[command(subcommand)]
    pub command: Pkcs11Command,
}

/// The token tools.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Pkcs11Command {
    /// List the module's tokens and their key objects with public-key fingerprints (private
    /// keys only with --pin-file: they are visible after a login).
    List(ListArgs),
    /// Make a non-extractable, sensitive RSA-2048 key pair inside the token and print its
    /// public key in the one-line base64 form the Antom dashboard asks for.
    Keygen(TokenKeygenArgs),
}

/// Where the token is.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The vendor's PKCS#11 module (as `[keys] pkcs11_module`).
    #[arg(long, value_name = "PATH")]
    pub module: PathBuf,
    /// The file holding the user PIN (as `[keys] pkcs11_pin_file`).
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// The token label (needed when the module shows several tokens).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
}

/// Options of `pkcs11 list`.
#[derive(clap::Args, Debug, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub token: TokenArgs,
}

/// Options of `pkcs11 keygen`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenKeygenArgs {
    #[command(flatten)]
    pub token: TokenArgs,
    /// The label of the new key pair (the URI's `object=`).
    #[arg(long, value_name = "NAME")]
    pub label: String,
}

/// Runs a `pkcs11` subcommand; exit 0 done, 1 the token refused, 2 usage.
pub fn run(args: &Pkcs11Args, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let result = match &args.command {
        Pkcs11Command::List(a) => list(a, out),
        Pkcs11Command::Keygen(a) => keygen(a, out, err),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            if e.0.contains("module missing") || e.0.contains("--pin-file") {
                EXIT_USAGE
            } else {
                1
            }
        }
    }
}

fn list(args: &ListArgs, out: &mut dyn Write) -> Result<(), TokenError> {
    let t = &args.token;
    let ctx = module(&t.module)?;
    let slots = match &t.token {
        Some(label) => vec![find_token(&ctx, Some(label))?],
        None => ctx
            .get_slots_with_initialized_token()
            .map_err(|e| TokenError(format!("listing the module's tokens failed: {e}")))?,
    };
    let pin = t.pin_file.as_deref().map(read_pin).transpose()?;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim_end().to_string();
        let _ = writeln!(
            out,
            "token \"{label}\" (slot {}, {} {}, serial {})",
            slot.id(),
            info.manufacturer_id().trim_end(),
            info.model().trim_end(),
            info.serial_number().trim_end()
        );
        let session = ctx
            .open_ro_session(slot)
            .map_err(|e| TokenError(format!("opening a session on \"{label}\" failed: {e}")))?;
        let class = if let (Some(pin), Some(file)) = (&pin, &t.pin_file) {
            login(&session, pin, file)?;
            ObjectClass::PRIVATE_KEY
        } else {
            ObjectClass::PUBLIC_KEY
        };
        let handles = session
            .find_objects(&[Attribute::Class(class)])
            .map_err(|e| TokenError(format!("searching \"{label}\" failed: {e}")))?;
        if handles.is_empty() {
            let _ = writeln!(out, "  no {} keys", class_word(class));
        }
        for h in handles {
            let _ = writeln!(out, "  {}", describe_key(&session, h, class, &label));
        }
        if class == ObjectClass::PUBLIC_KEY {
            let _ = writeln!(
                out,
                "  (public key objects only; give --pin-file to list the private keys)"
            );
        }
    }
    Ok(())
}

fn class_word(class: ObjectClass) -> &'static str {
    if class == ObjectClass::PRIVATE_KEY {
        "private"
    } else {
        "public"
    }
}

fn describe_key(session: &Session, h: ObjectHandle, class: ObjectClass, token: &str) -> String {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::Sensitive,
                AttributeType::Extractable,
            ],
        )
        .unwrap_or_default();
    let (mut label, mut id, mut kind, mut sensitive, mut extractable) =
        (String::new(), Vec::new(), None, None, None);
    for a in attrs {
        match a {
            Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(i) => id = i,
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::Sensitive(s) => sensitive = Some(s),
            Attribute::Extractable(e) => extractable = Some(e),
            _ => {}
        }
    }
    let id_hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut line = format!("{} key \"{label}\" id {id_hex}: ", class_word(class));
    if kind != Some(KeyType::RSA) {
        line.push_str(&format!(
            "{} (not usable: the sidecar signs with RSA)",
            kind.map(|k| k.to_string())
                .unwrap_or_else(|| "unknown type".into())
        ));
        return line;
    }
    let public = if class == ObjectClass::PRIVATE_KEY {
        public_half(session, h).map_err(|e| e.0)
    } else {
        rsa_public(session, h)
    };
    match public {
        Ok(p) => line.push_str(&format!("RSA-{} fingerprint {}", p.bits(), p.fingerprint())),
        Err(e) => line.push_str(&format!("RSA, not usable: {e}")),
    }
    if class == ObjectClass::PRIVATE_KEY {
        let yes = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        line.push_str(&format!(
            " sensitive={} extractable={} uri {}",
            yes(sensitive),
            yes(extractable),
            uri(token, &label)
        ));
    }
    line
}

/// The public key of a public key object (no sign check: it does not sign).
fn rsa_public(session: &Session, h: ObjectHandle) -> Result<crate::protocol::PublicKey, String> {
    use base64::Engine as _;
    let attrs = session
        .get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
        .map_err(|e| e.to_string())?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(m) => n = Some(m),
            Attribute::PublicExponent(x) => e = Some(x),
            _ => {}
        }
    }
    let (Some(n), Some(e)) = (n, e) else {
        return Err("no modulus".into());
    };
    let der = crate::signer::pkcs11::rsa_spki_der(&n, &e);
    crate::protocol::PublicKey::from_text(&base64::engine::general_purpose::STANDARD.encode(der))
        .map_err(|e| e.to_string())
}

/// `pkcs11:token=…;object=…;type=private`, percent-encoding what RFC 7512 requires.
fn uri(token: &str, object: &str) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }
    format!(
        "pkcs11:token={};object={};type=private",
        enc(token),
        enc(object)
    )
}

fn keygen(
    args: &TokenKeygenArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), TokenError> {
    let t = &args.token;
    let label = args.label.trim();
    if label.is_empty() {
        return Err(TokenError(
            "--label is empty; name the key, e.g. merchant-2026".into(),
        ));
    }
    let Some(pin_file) = &t.pin_file else {
        return Err(TokenError(
            "keygen needs --pin-file (making a key requires a login as the token's user)".into(),
        ));
    };
    let ctx = module(&t.module)?;
    let slot = find_token(&ctx, t.token.as_deref())?;
    let token_label = ctx
        .get_token_info(slot)
        .map(|i| i.label().trim_end().to_string())
        .unwrap_or_default();
    let pin = read_pin(pin_file)?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| TokenError(format!("opening a read-write session failed: {e}")))?;
    login(&session, &pin, pin_file)?;
    let existing = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| TokenError(format!("searching the token failed: {e}")))?;
    if !existing.is_empty() {
        return Err(TokenError(format!(
            "the token already has a private key labelled \"{label}\"; choose another --label \
             (nothing was made)"
        )));
    }
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| TokenError(format!("no randomness for the id: {e}")))?;
    let common = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let public_template = [
        &common[..],
        &[
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        ],
    ]
    .concat();
    let private_template = [
        &common[..],
        &[
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
        ],
    ]
    .concat();
    let (_, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &public_template,
            &private_template,
        )
        .map_err(|e| TokenError(format!("the token could not make the key pair: {e}")))?;
    let public = public_half(&session, private)?;
    let _ = writeln!(out, "{}", public.to_spki_base64());
    let _ = writeln!(
        err,
        "made a sensitive, non-extractable RSA-2048 key pair \"{label}\" (id {}) in token \
         \"{token_label}\"; public-key fingerprint {}.\nPaste the line above into the Antom \
         dashboard, then configure:\n  merchant_private_key = \"{}\"",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        public.fingerprint(),
        uri(&token_label, label)
    );
    Ok(())
}
