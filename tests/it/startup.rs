//! An operator's first deploy, with the real binary: the exit-code rule of `run` and
//! `check-config`, port-0 listeners named in the ready file, the key-file permission and
//! placeholder checks, `run --log-format`, `--help`, shell completions, the man page and
//! `keygen --bits`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;

use crate::support::{command, key, Sidecar};

pub(crate) fn run(args: &[&str]) -> Output {
    command(args).output().expect("run alipay-sidecar")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A folder with the vectors' keys (private key mode 0600) and a sidecar.toml on free ports.
pub(crate) struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// The `[admin]` section as [`Setup::new`] writes it.
const ADMIN_ON_PORT_0: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

impl Setup {
    pub(crate) fn new(client_id: &str, extra_outbound: &str) -> Setup {
        // Under /tmp (world-traversable), so a check run as another uid reaches the config.
        let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
        let private = dir.path().join("merchant_private_key.pem");
        std::fs::write(&private, key("merchant", "private_pkcs8_pem")).expect("write");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(
            dir.path().join("alipay_public_key.pem"),
            key("alipay", "public_spki_pem"),
        )
        .expect("write");
        let text = format!(
            "client_id = \"{client_id}\"\n\
             [keys]\n\
             merchant_private_key = \"merchant_private_key.pem\"\n\
             alipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n\
             [outbound]\n\
             listen = \"127.0.0.1:0\"\n\
             gateway = \"https://open-sea-global.alipay.com\"\n\
             {extra_outbound}\
             {ADMIN_ON_PORT_0}"
        );
        let config = dir.path().join("sidecar.toml");
        std::fs::write(&config, text).expect("write config");
        Setup { dir, config }
    }

    /// Moves the admin listener to `listen`.
    pub(crate) fn set_admin(&self, listen: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read");
        let admin = format!("[admin]\nlisten = \"{listen}\"\n");
        std::fs::write(&self.config, text.replace(ADMIN_ON_PORT_0, &admin)).expect("write");
    }

    pub(crate) fn path(&self) -> String {
        self.config.display().to_string()
    }

    pub(crate) fn private_key(&self) -> PathBuf {
        self.dir.path().join("merchant_private_key.pem")
    }

    pub(crate) fn check(&self) -> Output {
        run(&["check-config", "--config", &self.path()])
    }
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn config_and_key_errors_exit_2_from_run_and_check_config_printed_once() {
    // A config error.
    let s = Setup::new("T_111222333", "verfy_responses = false\n");
    for command in ["run", "check-config"] {
        let out = run(&[command, "--config", &s.path()]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{command}: {all}");
        assert_eq!(
            occurrences(&all, "unknown field `verfy_responses`"),
            1,
            "{command} prints the error once: {all}"
        );
        assert!(
            all.contains("did you mean `verify_responses`?"),
            "{command}: {all}"
        );
        assert!(!all.contains("\\n"), "no escaped JSON log line: {all}");
    }
    // A key error: the private key file is gone.
    let s = Setup::new("T_111222333", "");
    std::fs::remove_file(s.private_key()).expect("rm");
    for command in ["run", "check-config"] {
        let out = run(&[command, "--config", &s.path()]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{command}: {all}");
        assert_eq!(occurrences(&all, "does not exist"), 1, "{command}: {all}");
    }
    // A preflight error: the merchant's own public key configured as Alipay's.
    let s = Setup::new("T_111222333", "");
    std::fs::write(
        s.dir.path().join("alipay_public_key.pem"),
        key("merchant", "public_spki_pem"),
    )
    .expect("write");
    for command in ["run", "check-config"] {
        let out = run(&[command, "--config", &s.path()]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{command}: {all}");
        assert_eq!(
            occurrences(&all, "you configured your own public key as Alipay's"),
            1,
            "{command}: {all}"
        );
    }
    // A usage error.
    let out = run(&["run", "--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn port_0_listeners_are_bound_by_the_sidecar_and_named_in_the_ready_file() {
    let s = Setup::new(
        "T_111222333",
        "tls_listen = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:0\"\nforward_to = \"http://127.0.0.1:9\"\n",
    );
    // four listeners on 127.0.0.1:0 are not "two listeners on one address"
    let out = s.check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sidecar = Sidecar::launch(&s.config, &[], &[]);
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sidecar.ready_path).expect("ready file"))
            .expect("JSON");
    assert_eq!(file["pid"], sidecar.pid(), "{file}");
    let names: Vec<&String> = sidecar.listeners.keys().collect();
    assert_eq!(
        names,
        ["admin", "inbound", "outbound", "outbound_tls"],
        "{file}"
    );
    let ports: std::collections::BTreeSet<u16> =
        sidecar.listeners.values().map(|a| a.port()).collect();
    assert_eq!(ports.len(), 4, "four ports, none shared: {file}");
    assert!(!ports.contains(&0), "{file}");
    for addr in sidecar.listeners.values() {
        assert!(addr.ip().is_loopback(), "{file}");
        std::net::TcpStream::connect(addr).expect("every listener accepts");
        // the sidecar holds the port: nobody else can bind it
        assert!(TcpListener::bind(addr).is_err(), "{addr} is free to take");
    }
    // readiness probes the ports actually bound
    assert_eq!(sidecar.admin_get("/readyz").status, 200);
    assert!(sidecar.logged("ready file written"));
    drop(sidecar);

    // a ready file that cannot be written: exit 1 before anything starts
    let nowhere = s.dir.path().join("no-such-folder/ready.json");
    let out = run(&[
        "run",
        "--config",
        &s.path(),
        "--ready-file",
        &nowhere.display().to_string(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--ready-file") && err.contains("no-such-folder"),
        "{err}"
    );
}

#[test]
fn a_valid_config_that_cannot_start_exits_1_and_a_good_one_0() {
    let s = Setup::new("T_111222333", "");
    let out = s.check();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The admin port is taken: the configuration is fine, starting it is not.
    let busy = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let busy = busy.local_addr().expect("addr");
    s.set_admin(&busy.to_string());
    let out = run(&["run", "--config", &s.path()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&busy.to_string()) && all.contains("admin.listen"),
        "{all}"
    );
    let errors = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .count();
    assert_eq!(errors, 1, "the error is printed once: {all}");
}

#[test]
fn help_documents_the_exit_codes_and_the_environment_variables() {
    let out = run(&["run", "--help"]);
    let help = text(&out.stdout);
    for needle in [
        "--log-level",
        "--log-format",
        "[env: ALIPAY_SIDECAR_CONFIG=",
        "[env: ALIPAY_SIDECAR_LOG_LEVEL=",
        "ALIPAY_SIDECAR_<SECTION>_<KEY>",
        "Exit status",
        "2  usage, configuration or key error",
        "1  runtime failure",
    ] {
        assert!(
            help.contains(needle),
            "run --help lacks {needle:?}:\n{help}"
        );
    }
    let help = text(&run(&["check-config", "--help"]).stdout);
    assert!(help.contains("Exit status"), "{help}");
}

#[test]
fn run_log_options_override_the_config() {
    let s = Setup::new("T_111222333", "");
    std::fs::remove_file(s.private_key()).expect("rm"); // stops right after the config loaded
    let out = run(&["run", "--config", &s.path(), "--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown format");
    assert!(text(&out.stderr).contains("json"), "{}", text(&out.stderr));
    let s2 = Setup::new("T_111222333", "");
    // --log-format json: the running sidecar writes JSON lines.
    let mut sidecar = Sidecar::launch(
        &s2.config,
        &["--log-format", "json", "--log-level", "info"],
        &[],
    );
    assert_eq!(sidecar.admin_get("/readyz").status, 200);
    sidecar.signal("TERM");
    let code = sidecar.wait_exit(std::time::Duration::from_secs(60));
    let logs = sidecar.logs();
    assert_eq!(code, Some(0), "clean stop after SIGTERM: {logs}");
    let first = logs.lines().next().unwrap_or_default();
    let parsed: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {logs}"));
    assert!(parsed["level"].is_string(), "{first}");
}

#[test]
fn a_private_key_others_can_read_is_warned_about_like_ssh_does() {
    let s = Setup::new("T_111222333", "");
    let out = s.check();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("UNPROTECTED"), "0600 is fine: {err}");

    std::fs::set_permissions(s.private_key(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let out = s.check();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "a warning, not an error: {err}");
    let private = s.private_key().display().to_string();
    for needle in [
        "warning:",
        "mode 0644",
        "UNPROTECTED PRIVATE KEY FILE",
        &format!("chmod 600 {private}"),
        "sidecar.toml:3",
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {err}");
    }
    assert!(text(&out.stdout).contains("1 warning(s)"));

    // `run` logs the same warning when it starts.
    let sidecar = Sidecar::launch(&s.config, &["--log-format", "json"], &[]);
    let logs = sidecar.logs();
    assert!(logs.contains("UNPROTECTED PRIVATE KEY FILE"), "{logs}");
}

#[test]
fn placeholder_client_ids_are_refused() {
    // The Kubernetes ConfigMap's placeholder, as shipped.
    let s = Setup::new("REPLACE_WITH_YOUR_CLIENT_ID", "");
    for command in ["check-config", "run"] {
        let out = run(&[command, "--config", &s.path()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.contains("\"REPLACE_WITH_YOUR_CLIENT_ID\" is a placeholder")
                && err.contains("sidecar.toml:1")
                && err.contains("ALIPAY_SIDECAR_CLIENT_ID"),
            "{command}: {err}"
        );
    }
    // The environment override fixes it without editing the file.
    let out = command(&["check-config", "--config", &s.path()])
        .env("ALIPAY_SIDECAR_CLIENT_ID", "2188120000000001")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_sandbox_client_id_with_live_paths_is_warned_about() {
    let s = Setup::new("SANDBOX_5YBZ2Q2ZAB7C01234", "");
    let out = s.check();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("is a sandbox one, but live paths (/ams/api/) are allowed"),
        "{err}"
    );
    let s = Setup::new(
        "SANDBOX_5YBZ2Q2ZAB7C01234",
        "allowed_path_prefixes = [\"/ams/sandbox/api/\"]\n",
    );
    let out = s.check();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("live paths"), "{err}");
}

/// An unreadable key file says who the sidecar runs as and the ownership and mode the
/// container image (uid 65532) needs. As root (where every file is readable) the check runs
/// as another uid; otherwise the key is made unreadable.
#[test]
fn an_unreadable_key_names_the_uid_and_the_containers_ownership() {
    let s = Setup::new("T_111222333", "");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = command(&["check-config", "--config", &s.path()]);
    if root {
        use std::os::unix::process::CommandExt;
        for p in [s.dir.path(), s.config.as_path()] {
            let mode = if p.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        std::fs::set_permissions(
            s.dir.path().join("alipay_public_key.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        cmd.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(s.private_key(), std::fs::Permissions::from_mode(0o000))
            .expect("chmod");
    }
    let out = cmd.output().expect("run");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "permission denied",
        "merchant_private_key.pem",
        "the sidecar runs as uid",
    ] {
        assert!(err.contains(needle), "missing {needle:?}: {err}");
    }
    if root {
        // someone else's file: chown, and the container's uid
        assert!(
            err.contains("uid 65534")
                && err.contains("owned by 0:0 with mode 0600")
                && err.contains("uid:gid 65532:65532"),
            "{err}"
        );
    } else {
        // the sidecar's own file with mode 0000: chmod, not chown (issue 20)
        assert!(err.contains("chmod 600") && !err.contains("chown"), "{err}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_and_a_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F _alipay__sidecar"),
        ("zsh", "#compdef alipay-sidecar"),
        ("fish", "complete -c alipay-sidecar"),
    ] {
        let out = run(&["completions", shell]);
        let script = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        assert!(script.contains(marker), "{shell}: {script}");
        for word in [
            "check-config",
            "healthcheck",
            "log-level",
            "ready-file",
            "bits",
        ] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let out = run(&["completions", "powershell"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["man"]);
    let page = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(page.contains(".TH alipay-sidecar 1"), "{page}");
    assert!(page.contains("check\\-config"), "{page}");

    let version = text(&run(&["--version"]).stdout);
    assert!(
        version.starts_with(&format!("alipay-sidecar {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    match option_env!("ALIPAY_SIDECAR_GIT_COMMIT") {
        Some(commit) if !commit.trim().is_empty() && commit.trim() != "unknown" => {
            assert!(version.contains(commit.trim()), "{version}")
        }
        _ => assert!(!version.contains("git"), "{version}"),
    }
}

#[test]
fn keygen_bits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(&[
        "keygen",
        "--out",
        &tmp.path().join("k").display().to_string(),
        "--bits",
        "1024",
    ]);
    assert_eq!(out.status.code(), Some(2), "1024 bits is refused");
    assert!(!tmp.path().join("k").exists(), "nothing written");

    let dir = tmp.path().join("k3072");
    let out = run(&[
        "keygen",
        "--out",
        &dir.display().to_string(),
        "--bits",
        "3072",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("(RSA-3072)"));
    // The sidecar's own tools load it as a 3072-bit key.
    let signed = command(&[
        "sign",
        "--private-key",
        &dir.join("merchant_private_key.pem").display().to_string(),
        "--client-id",
        "T_1",
        "--path",
        "/ams/api/v1/payments/pay",
        "--request-time",
        "1",
        "--body-file",
        &dir.join("merchant_public_key.pem").display().to_string(),
        "--explain",
    ])
    .output()
    .expect("sign");
    assert_eq!(signed.status.code(), Some(0), "{}", text(&signed.stderr));
    assert!(
        text(&signed.stderr).contains("3072-bit"),
        "{}",
        text(&signed.stderr)
    );
}

/// The README's exit-code table is the code's (issue 20 item 6): one row per code of
/// `EXIT_CODES_HELP` (what `--help` prints), in order, each starting with the same
/// headline, and those codes are the constants the commands return.
#[test]
fn the_readme_exit_code_table_matches_the_code() {
    use alipay_sidecar::cli::exit::{EXIT_CODES_HELP, EXIT_INVALID, EXIT_OK, EXIT_USAGE};
    // "  0  success: …" in the help text
    let help: Vec<(i32, String)> = EXIT_CODES_HELP
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("  ")?;
            let (code, text) = rest.split_once("  ")?;
            Some((
                code.parse().ok()?,
                text.split(':').next()?.trim().to_string(),
            ))
        })
        .collect();
    assert_eq!(
        help.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![EXIT_OK, EXIT_INVALID, EXIT_USAGE],
        "{EXIT_CODES_HELP}"
    );
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let section = readme
        .split("### Exit codes, options, completions")
        .nth(1)
        .expect("the README's exit-code section");
    // "| 0 | success: … |" rows of the table
    let rows: Vec<(i32, String)> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let mut cells = l.strip_prefix('|')?.split('|').map(str::trim);
            let code = cells.next()?.parse().ok()?;
            Some((code, cells.next()?.split(':').next()?.trim().to_string()))
        })
        .collect();
    assert_eq!(rows, help, "README.md's table against EXIT_CODES_HELP");
    // and `run --help` prints the rule
    let out = command(&["run", "--help"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(EXIT_CODES_HELP.lines().nth(1).unwrap()),
        "run --help"
    );
}
