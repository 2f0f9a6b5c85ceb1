//! The messages a newcomer's mistakes get (issue 20, item 8), from the real binary: each says
//! what is wrong in the user's own terms and what to do, once, without a doubled prefix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use alipay_sidecar::config::Config;

use crate::startup::{run, text, Setup};
use crate::support::{command, key, request, Rig, RigConfig, PAY};

/// stdout and stderr of `out`, together.
fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// Fails when a message repeats its own prefix: "signature mismatch: signature mismatch …",
/// "malformed Signature header: malformed Signature header: …" (the words before a ": " come
/// again right after it).
fn assert_no_doubled_prefix(message: &str) {
    for line in message.lines() {
        let mut rest = line;
        while let Some(at) = rest.find(": ") {
            let before = &rest[..at];
            let after = &rest[at + 2..];
            // the last one to four words before the colon
            let words: Vec<&str> = before.split_whitespace().collect();
            for n in 1..=words.len().min(4) {
                let phrase = words[words.len() - n..].join(" ");
                if phrase.chars().count() >= 6
                    && after
                        .get(..phrase.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(&phrase))
                {
                    panic!("doubled prefix {phrase:?} in: {line}");
                }
            }
            rest = after;
        }
    }
}

/// The number of `error:` lines (each is one finding).
fn errors(message: &str) -> usize {
    message
        .lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .count()
}

/// Rewrites the config of `s` with `edit`.
fn edit_config(s: &Setup, edit: impl FnOnce(String) -> String) {
    let path = s.path();
    let text = std::fs::read_to_string(&path).expect("read config");
    std::fs::write(&path, edit(text)).expect("write config");
}

const DEFAULT_CONFIG: &str = "/etc/alipay-sidecar/sidecar.toml";

/// 1. No config file and no --config: the message says it tried the default path and how to
///    make a config, instead of blaming a --config the user never gave.
#[test]
fn no_config_anywhere_names_the_default_path_and_how_to_make_one() {
    assert!(
        !Path::new(DEFAULT_CONFIG).exists(),
        "this test needs {DEFAULT_CONFIG} absent (as on a newcomer's machine)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    for subcommand in ["check-config", "run"] {
        let out = command(&[subcommand])
            .current_dir(dir.path())
            .output()
            .expect("run");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{subcommand}: {err}");
        for needle in [
            "/etc/alipay-sidecar/sidecar.toml is the default config path",
            "neither --config nor ALIPAY_SIDECAR_CONFIG names a file",
            "--config FILE",
            "cp config/sidecar.example.toml sidecar.toml",
            "keygen --out keys/",
        ] {
            assert!(
                err.contains(needle),
                "{subcommand}: missing {needle:?}: {err}"
            );
        }
        assert!(
            !err.contains("check the path given with --config"),
            "{subcommand}: {err}"
        );
        assert_no_doubled_prefix(&err);
    }
    // A path the user did give is blamed as theirs: the flag, or the variable.
    let missing = dir.path().join("nope.toml").display().to_string();
    let out = run(&["check-config", "--config", &missing]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("check the path given with --config"), "{err}");
    let out = command(&["check-config"])
        .env("ALIPAY_SIDECAR_CONFIG", &missing)
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("check the path in ALIPAY_SIDECAR_CONFIG"),
        "{err}"
    );
}

/// 2. A misspelt section gets a "did you mean" naming the section, like misspelt options do.
#[test]
fn a_misspelt_section_gets_a_did_you_mean() {
    for (wrong, right) in [("[outbond]", "[outbound]"), ("[admn]", "[admin]")] {
        let s = Setup::new("T_111222333", "");
        let correct = right.to_string();
        edit_config(&s, |t| t.replace(&correct, wrong));
        let out = s.check();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{wrong}: {err}");
        assert!(
            err.contains(&format!("did you mean `{right}`?")),
            "{wrong}: {err}"
        );
        assert_no_doubled_prefix(&err);
    }
    // an array of tables is named with its double brackets, a nested section with its path
    let s = Setup::new("T_111222333", "");
    edit_config(&s, |t| format!("{t}[[merchant]]\nname = \"a\"\n"));
    let err = text(&s.check().stderr);
    assert!(err.contains("did you mean `[[merchants]]`?"), "{err}");
}

/// 3. A placeholder client id is one error, not followed by a "live client id" error about
///    the same placeholder.
#[test]
fn a_placeholder_client_id_is_one_error_without_a_live_client_id_follow_on() {
    let s = Setup::new(
        "YOUR_CLIENT_ID",
        "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
    );
    let out = s.check();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a placeholder, not a client id"), "{err}");
    assert_eq!(errors(&err), 1, "one error only: {err}");
    assert!(!err.contains("live one"), "{err}");
    let summary = text(&out.stdout);
    assert!(!summary.contains("(live)"), "{summary}");
}

/// 4. A private key the sidecar's own user owns, with mode 0000, needs `chmod 600`, not
///    `chown`. As root (who reads any file) the check runs as uid 65534 owning the files.
#[test]
fn an_own_key_with_mode_0000_is_told_to_chmod_600() {
    let s = Setup::new("T_111222333", "");
    let private = s.private_key();
    let dir: PathBuf = private.parent().expect("folder").to_path_buf();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = command(&["check-config", "--config", &s.path()]);
    if root {
        use std::os::unix::process::CommandExt;
        for p in [
            dir.clone(),
            PathBuf::from(s.path()),
            dir.join("alipay_public_key.pem"),
            private.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown");
        }
        cmd.uid(65534).gid(65534);
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let out = cmd.output().expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("`chmod 600 {}`", private.display())),
        "{err}"
    );
    assert!(!err.contains("chown"), "{err}");
    assert_no_doubled_prefix(&err);
}

/// 5. A live path with a SANDBOX_ client id: still refused with SIDECAR_PATH_NOT_ALLOWED, and
///    the message names the sandbox path to use instead.
#[test]
fn a_live_path_with_a_sandbox_client_id_names_the_sandbox_path_to_use() {
    let rig = Rig::start(
        RigConfig {
            client_id: "SANDBOX_5YBZ2Q2ZAB7C01234",
            outbound: "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
            ..Default::default()
        },
        |_| {},
        |_| {},
    );
    let r = rig.pay("p-1", "");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 403, "{body}");
    assert_eq!(
        r.header("x-alipay-sidecar-error"),
        Some("SIDECAR_PATH_NOT_ALLOWED"),
        "{body}"
    );
    assert!(
        body.contains("is a sandbox one: use /ams/sandbox/api/v1/payments/pay"),
        "{body}"
    );
    assert_no_doubled_prefix(&body);
    assert!(rig.gw.received().is_empty(), "nothing reached the gateway");
}

/// A signed notification-shaped message made with `sign`: (Signature header value, body).
fn signed(dir: &Path, body: &[u8]) -> String {
    let private = dir.join("merchant_private.pem");
    std::fs::write(&private, key("merchant", "private_pkcs8_pem")).expect("write key");
    let body_file = dir.join("signed-body.json");
    std::fs::write(&body_file, body).expect("write body");
    let out = run(&[
        "sign",
        "--private-key",
        &private.display().to_string(),
        "--client-id",
        "C1",
        "--path",
        "/alipay/notify",
        "--request-time",
        "1700000000000",
        "--body-file",
        &body_file.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", all(&out));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Signature: "))
        .expect("a Signature line")
        .to_string()
}

/// `verify` of `body` against `signature` with the merchant's public key.
fn verify(dir: &Path, signature: &str, body: &[u8]) -> Output {
    let public = dir.join("merchant_public.pem");
    std::fs::write(&public, key("merchant", "public_spki_pem")).expect("write key");
    let body_file = dir.join("checked-body.json");
    std::fs::write(&body_file, body).expect("write body");
    run(&[
        "verify",
        "--public-key",
        &public.display().to_string(),
        "--client-id",
        "C1",
        "--path",
        "/alipay/notify",
        "--time",
        "1700000000000",
        "--signature",
        signature,
        "--body-file",
        &body_file.display().to_string(),
    ])
}

/// 6. `verify` with a body file that gained a newline (an editor, `echo`): the tool finds
///    that the signature verifies without it and says so; other mismatches list the trailing
///    newline among the usual causes.
#[test]
fn verify_names_a_trailing_newline_that_was_not_signed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = br#"{"notifyType":"PAYMENT_RESULT"}"#;
    let signature = signed(dir.path(), body);
    assert_eq!(verify(dir.path(), &signature, body).status.code(), Some(0));
    for (ending, name) in [
        (&b"\n"[..], "a newline"),
        (&b"\r\n"[..], "a CRLF line ending"),
    ] {
        let out = verify(dir.path(), &signature, &[&body[..], ending].concat());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "the body file ends with {name} that was not signed: without it the signature \
                 verifies"
            )),
            "{err}"
        );
        assert_no_doubled_prefix(&err);
    }
    let out = verify(dir.path(), &signature, br#"{"notifyType":"OTHER"}"#);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a trailing newline"), "{err}");
    assert!(!err.contains("that was not signed"), "{err}");
}

/// 7. `verify --signature <the base64 alone>` is a usage error (exit 2) asking for the whole
///    header value, without "malformed Signature header: malformed Signature header".
#[test]
fn verify_with_a_bare_signature_asks_for_the_whole_header_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = b"{}";
    let header = signed(dir.path(), body);
    let bare = header
        .rsplit_once("signature=")
        .map(|(_, v)| v.to_string())
        .expect("signature field");
    let out = verify(dir.path(), &bare, body);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("pass the whole header value"), "{err}");
    assert!(
        err.contains("algorithm=RSA256,keyVersion=1,signature="),
        "{err}"
    );
    assert!(!err.contains("malformed Signature header"), "{err}");
    assert_no_doubled_prefix(&err);
}

/// 8. A bad `--log-level` is blamed on the flag; only a bad ALIPAY_SIDECAR_LOG_LEVEL (or
///    ALIPAY_SIDECAR_LOG_FORMAT) that really was set is blamed on the variable.
#[test]
fn a_bad_log_level_blames_the_flag_or_the_variable_that_set_it() {
    let s = Setup::new("T_111222333", "");
    let out = run(&["run", "--config", &s.path(), "--log-level", "x=y=z"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--log-level") && err.contains("is not a log filter"),
        "{err}"
    );
    assert!(!err.contains("ALIPAY_SIDECAR_LOG_LEVEL"), "{err}");

    let out = command(&["run", "--config", &s.path()])
        .env("ALIPAY_SIDECAR_LOG_LEVEL", "x=y=z")
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable ALIPAY_SIDECAR_LOG_LEVEL"),
        "{err}"
    );

    let out = command(&["run", "--config", &s.path()])
        .env("ALIPAY_SIDECAR_LOG_FORMAT", "xml")
        .output()
        .expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("environment variable ALIPAY_SIDECAR_LOG_FORMAT is \"xml\"")
            && err.contains("json, text"),
        "{err}"
    );
    // given on the command line, clap's own message blames the flag, rightly
    let out = run(&["run", "--config", &s.path(), "--log-format", "xml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("ALIPAY_SIDECAR_LOG_FORMAT"), "{err}");
}

/// 9. `healthcheck --config` on a port-0 admin listener cannot know the port: it says so and
///    names --url, instead of probing 127.0.0.1:0.
#[test]
fn healthcheck_on_a_port_0_admin_listener_says_to_pass_url() {
    let s = Setup::new("T_111222333", ""); // [admin] listen = "127.0.0.1:0"
    let out = run(&["healthcheck", "--config", &s.path()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("has port 0 (ephemeral)"), "{err}");
    assert!(err.contains("--url http://127.0.0.1:PORT/readyz"), "{err}");
    assert!(!err.contains("127.0.0.1:0/readyz"), "{err}");
}

/// 10. No doubled prefixes ("signature mismatch: signature mismatch"), and "an Origin
///     header", not "a origin".
#[test]
fn messages_repeat_no_prefix_and_use_the_right_article() {
    let dir = tempfile::tempdir().expect("tempdir");
    let header = signed(dir.path(), b"{}");
    let mismatch = text(&verify(dir.path(), &header, b"{ }").stderr);
    assert_eq!(
        mismatch.matches("signature mismatch").count(),
        1,
        "{mismatch}"
    );
    assert_no_doubled_prefix(&mismatch);
    let malformed =
        text(&verify(dir.path(), "algorithm=RSA256,keyVersion=1,signature", b"{}").stderr);
    assert_eq!(
        malformed.matches("malformed Signature header").count(),
        1,
        "{malformed}"
    );
    assert_no_doubled_prefix(&malformed);

    let rig = Rig::with("");
    let r = request(
        rig.outbound,
        "POST",
        PAY,
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://shop.example"),
        ],
        b"{}",
    )
    .expect("request");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 403, "{body}");
    assert!(body.contains("carries an Origin header"), "{body}");
    assert_no_doubled_prefix(&body);

    // the detector itself catches what issue 20 saw
    let caught = std::panic::catch_unwind(|| {
        assert_no_doubled_prefix(
            "invalid: signature mismatch: signature mismatch with keyVersion 1",
        )
    });
    assert!(
        caught.is_err(),
        "the doubled-prefix check must catch a doubled prefix"
    );
}

/// 11. The example config binds inbound to loopback and maps no path; the container setups
///     that need every interface say so; the compose file's app image is flagged as a
///     placeholder, in the file and in the README.
#[test]
fn the_example_config_is_safe_as_copied_and_the_compose_placeholder_is_flagged() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example_path = root.join("config/sidecar.example.toml");
    let example = std::fs::read_to_string(&example_path).expect("example");
    let c = Config::parse(&example, &example_path, Vec::new()).expect("example parses");
    let inbound = c.inbound.as_ref().expect("inbound");
    assert!(inbound.listen.ip().is_loopback(), "{}", inbound.listen);
    assert!(inbound.path_map.is_empty(), "path_map is an example only");
    assert!(
        example.contains("# path_map = {"),
        "path_map stays shown, commented"
    );
    assert!(
        example.contains("there it must be \"0.0.0.0:8081\""),
        "the example explains the container's 0.0.0.0"
    );

    let compose =
        std::fs::read_to_string(root.join("config/docker-compose.yaml")).expect("compose");
    assert!(
        compose.contains("ALIPAY_SIDECAR_INBOUND_LISTEN: \"0.0.0.0:8081\""),
        "the compose setup overrides the example's loopback inbound listener"
    );
    let image_line = compose
        .lines()
        .position(|l| l.contains("image: ghcr.io/example/payments-app"))
        .expect("the app image");
    assert!(
        compose
            .lines()
            .nth(image_line - 1)
            .is_some_and(|l| l.contains("PLACEHOLDER")),
        "the compose file flags the app image as a placeholder"
    );
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let flowed = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowed.contains("image (`ghcr.io/example/payments-app`) is a placeholder"),
        "the README flags the compose app image next to where compose is mentioned"
    );
}
