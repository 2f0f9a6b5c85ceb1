//! A real PKCS#11 token for the tests: SoftHSM 2 with its own token folder and config in a
//! temp folder (`SOFTHSM2_CONF`), one token `alipay` with user PIN `1234`; and a stalling
//! shim in front of it (a 40-line C module, compiled once per test run) for the signing
//! budget's tests.
//!
//! Under `CI=true` a missing SoftHSM fails the test; elsewhere the test prints
//! `SKIPPED <test>: <why>` to stderr and passes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::sidecar::{command, run_bounded};

/// The token label every test token gets.
pub const TOKEN: &str = "alipay";
/// Its user PIN.
pub const PIN: &str = "1234";

/// Where Debian, Fedora and Homebrew put the SoftHSM module.
const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A fresh SoftHSM token in its own folder.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    /// The SoftHSM config file (`SOFTHSM2_CONF`).
    pub conf: PathBuf,
    /// The SoftHSM module.
    pub module: PathBuf,
    /// A file holding [`PIN`].
    pub pin_file: PathBuf,
}

/// A token for `test`, or `None` (after printing why) when SoftHSM is missing outside CI.
pub fn softhsm(test: &str) -> Option<SoftHsm> {
    let missing = |why: String| {
        // the one skip helper: SKIPPED on the real stderr, a failure under CI=true (.ci/run
        // installs the softhsm2 package)
        super::skip::skip(test, &why);
        None
    };
    let Some(module) = MODULES.iter().map(PathBuf::from).find(|p| p.exists()) else {
        return missing(format!(
            "no SoftHSM module (looked in {}): install softhsm2",
            MODULES.join(", ")
        ));
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN, "--pin", PIN])
        .args(["--so-pin", "5678"])
        .output();
    match init {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return missing(format!(
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
        Err(e) => return missing(format!("softhsm2-util cannot run ({e}): install softhsm2")),
    }
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).unwrap();
    Some(SoftHsm {
        dir,
        conf,
        module,
        pin_file,
    })
}

impl SoftHsm {
    /// The environment a process needs to see this token.
    pub fn env(&self) -> (&'static str, String) {
        ("SOFTHSM2_CONF", self.conf.display().to_string())
    }

    /// `[keys]` lines for the token key `object` (and the vector Alipay key file, which the
    /// caller writes), through `module` (default: SoftHSM itself).
    pub fn keys(&self, object: &str, module: Option<&Path>) -> String {
        format!(
            "merchant_private_key = \"pkcs11:token={TOKEN};object={object};type=private\"\n\
             pkcs11_module = {:?}\npkcs11_pin_file = {:?}\nmerchant_key_version = 1\n\
             alipay_public_keys = {{ \"1\" = \"alipay_public_key.pem\" }}\n",
            module.unwrap_or(&self.module).display().to_string(),
            self.pin_file.display().to_string()
        )
    }

    /// `alipay-sidecar pkcs11 <args> --module … --pin-file …` against this token: (exit
    /// code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let module = self.module.display().to_string();
        let pin = self.pin_file.display().to_string();
        let mut all = vec!["pkcs11"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--module", &module, "--pin-file", &pin]);
        let mut cmd = command(&all);
        let (k, v) = self.env();
        cmd.env(k, v);
        run_bounded(&mut cmd, Duration::from_secs(60))
    }

    /// A sensitive, non-extractable RSA-2048 pair made by `alipay-sidecar pkcs11 keygen`;
    /// returns the one-line base64 public key it printed.
    pub fn keygen(&self, label: &str) -> String {
        let (code, out, err) = self.cli(&["keygen", "--label", label]);
        assert_eq!(code, 0, "pkcs11 keygen: {out}\n{err}");
        out.trim().to_string()
    }

    /// Runs the test helper (`crate::pkcs11::token_helper`, in a child process so this token's
    /// `SOFTHSM2_CONF` applies) with `args`; returns what it printed.
    pub fn helper(&self, args: &[&str]) -> String {
        let exe = std::env::current_exe().unwrap();
        let (k, v) = self.env();
        let out = Command::new(exe)
            .args([
                "pkcs11::token_helper",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(k, v)
            .env("PKCS11_TEST_HELPER", args.join(" "))
            .env("PKCS11_TEST_MODULE", &self.module)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.contains("HELPER-OK"),
            "token helper {args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// The stalling shim: forwards every call to the module named by `PKCS11_SHIM_TARGET`, except
/// that `C_Sign` waits while the file `PKCS11_SHIM_STALL` exists and fails with
/// CKR_DEVICE_ERROR while `PKCS11_SHIM_FAIL` exists. C_Sign is the 44th function of the
/// PKCS#11 2.40 function list (after the version); the shim exports only C_GetFunctionList,
/// so callers take the 2.x path.
const SHIM_C: &str = r#"
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
typedef unsigned long CK_RV;
typedef CK_RV (*any_fn)(void);
typedef struct { unsigned char major, minor; } ck_version;
typedef struct { ck_version version; any_fn f[68]; } ck_list;
typedef CK_RV (*get_list_fn)(ck_list **);
typedef CK_RV (*sign_fn)(unsigned long, unsigned char *, unsigned long, unsigned char *, unsigned long *);
static ck_list shim;
static sign_fn real_sign;
static int exists(const char *var) {
    const char *p = getenv(var);
    return p && access(p, F_OK) == 0;
}
static CK_RV shim_sign(unsigned long s, unsigned char *d, unsigned long n, unsigned char *sig, unsigned long *len) {
    while (exists("PKCS11_SHIM_STALL")) usleep(20000);
    if (exists("PKCS11_SHIM_FAIL")) return 0x30; /* CKR_DEVICE_ERROR */
    return real_sign(s, d, n, sig, len);
}
CK_RV C_GetFunctionList(ck_list **out) {
    const char *target = getenv("PKCS11_SHIM_TARGET");
    void *lib = target ? dlopen(target, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib) return 0x5; /* CKR_GENERAL_ERROR */
    get_list_fn get = (get_list_fn)dlsym(lib, "C_GetFunctionList");
    ck_list *real = NULL;
    if (!get || get(&real) != 0 || !real) return 0x5;
    memcpy(&shim, real, sizeof shim);
    real_sign = (sign_fn)real->f[43];
    shim.f[43] = (any_fn)shim_sign;
    *out = &shim;
    return 0;
}
"#;

/// The compiled shim (built once per test run with the system C compiler).
pub fn stall_shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("alipay-sidecar-pkcs11-shim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("shim.c");
        let lib = dir.join("libstallshim.so");
        std::fs::write(&src, SHIM_C).unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect("cc (the C compiler that links Rust binaries) builds the PKCS#11 shim");
        assert!(
            out.status.success(),
            "building the shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lib
    })
    .clone()
}
