//! The deployment artifacts (Dockerfile, Kubernetes examples, Grafana dashboard, alert rules)
//! keep the properties the issue asks for, and only use metric names the code exposes. There
//! is no Docker engine or cluster here, so these are static checks of the files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

use crate::metrics::{one_of_each, sample_names};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions grouped by build stage (a new stage starts at each FROM).
fn dockerfile_stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(
        current.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical.iter().filter(|l| !l.trim().is_empty()) {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("instructions before the first FROM")
            .push(instruction);
    }
    stages
}

fn args_of<'a>(stage: &'a [Instruction], keyword: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    stage
        .iter()
        .filter(move |i| i.keyword == keyword)
        .map(|i| i.args.as_str())
}

/// Splits `FROM [--platform=…] image[:tag][@digest] [AS name]` into (image, tag, digest).
fn from_image(args: &str) -> (String, Option<String>, Option<String>) {
    let reference = args
        .split_whitespace()
        .find(|word| !word.starts_with("--"))
        .expect("FROM names an image");
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest.to_owned())),
        None => (reference, None),
    };
    // A ':' after the last '/' separates the tag (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    match rest[last_slash..].split_once(':') {
        Some((name, tag)) => (
            format!("{}{}", &rest[..last_slash], name),
            Some(tag.to_owned()),
            digest,
        ),
        None => (rest.to_owned(), None, digest),
    }
}

/// The JSON array of an exec-form instruction (`["a", "b"]`), after any `--options`.
fn exec_form(args: &str) -> Vec<String> {
    let start = args
        .find('[')
        .unwrap_or_else(|| panic!("not exec form: {args}"));
    serde_json::from_str(&args[start..]).unwrap_or_else(|e| panic!("bad exec form {args}: {e}"))
}

/// `scripts/dockerfile-replay.sh --plan` (what CI replays of the build stage) against a
/// Dockerfile; `Err` with its stderr when it refuses it.
fn replay_plan(dockerfile: &Path) -> Result<Vec<String>, String> {
    let out = std::process::Command::new("bash")
        .arg(repo_file("scripts/dockerfile-replay.sh"))
        .arg("--plan")
        .env("REPLAY_DOCKERFILE", dockerfile)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect())
}

/// Issue 20 item 2: the CI replay of the image build (scripts/dockerfile-replay.sh) reads the
/// Dockerfile's actual build stage, every instruction of it, as this file's own parser does;
/// and an instruction it could not execute faithfully stops it rather than being skipped.
#[test]
fn the_ci_replay_executes_every_line_of_the_dockerfile_build_stage() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    let expected: Vec<String> = stages[0]
        .iter()
        .map(|i| {
            format!("{} {}", i.keyword, i.args)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let plan = replay_plan(&repo_file("Dockerfile")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan, expected, "the replay's reading of the build stage");
    assert!(plan.iter().filter(|l| l.starts_with("RUN ")).count() >= 3);
    assert!(plan.iter().any(|l| l.starts_with("COPY src ")));

    // the step-2 build refreshes every workspace member the step-1 placeholders stood for
    let members = [
        "alipay-sidecar",
        "ams-signature",
        "sidecar-store",
        "ams-mock-gateway",
    ];
    let step1 = plan
        .iter()
        .find(|l| l.contains("fn main() {}"))
        .expect("the placeholder step");
    for m in members {
        assert!(
            step1.contains(&format!("target/release/.fingerprint/{m}-*")),
            "step 1 leaves the placeholder {m} built: {step1}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let original = read("Dockerfile");
    for (what, edited) in [
        (
            "a cache mount",
            original.replacen(
                "RUN find src",
                "RUN --mount=type=cache,target=/x find src",
                1,
            ),
        ),
        (
            "an unknown instruction",
            original.replacen(
                "ARG GIT_COMMIT",
                "ADD https://example.com/x /x\nARG GIT_COMMIT",
                1,
            ),
        ),
        (
            "a COPY with flags",
            original.replacen("COPY src ./src", "COPY --chown=1:1 src ./src", 1),
        ),
    ] {
        assert_ne!(edited, original, "{what}: the edit applies");
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, edited).unwrap();
        let err = replay_plan(&path).expect_err(what);
        assert!(err.contains("dockerfile-replay:"), "{what}: {err}");
    }
}

#[test]
fn dockerfile_is_multi_stage_pinned_non_root_and_healthchecked() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    assert!(
        stages.len() >= 2,
        "expected a build stage and a runtime stage"
    );
    let stage_names: Vec<String> = stages
        .iter()
        .filter_map(|s| s[0].args.split_whitespace().last().map(str::to_owned))
        .collect();

    for stage in &stages {
        let (image, tag, digest) = from_image(&stage[0].args);
        if stage_names.contains(&image) && tag.is_none() {
            continue; // FROM an earlier stage
        }
        let tag = tag.unwrap_or_default();
        assert!(
            digest.is_some() || (!tag.is_empty() && tag != "latest"),
            "FROM {image} is not pinned to an exact tag or digest"
        );
    }

    let build = &stages[0];
    let (build_image, build_tag, _) = from_image(&build[0].args);
    assert!(build_image.ends_with("rust"), "build stage: {build_image}");
    let version = build_tag.unwrap_or_default();
    let numbers: Vec<&str> = version.split('-').next().unwrap_or("").split('.').collect();
    assert!(
        numbers.len() == 3 && numbers.iter().all(|n| n.parse::<u32>().is_ok()),
        "the Rust image must be pinned to an exact x.y.z version, not {version}"
    );
    let runs: Vec<&str> = args_of(build, "RUN").collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("apt-get install") && r.split_whitespace().any(|w| w == "cmake")),
        "the build stage must install cmake (pingora needs it): {runs:?}"
    );
    assert!(
        runs.iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")),
        "the build must be `cargo build --release --locked`: {runs:?}"
    );

    // Dependencies are built in their own layer, before the sources are copied.
    let build_steps: Vec<&Instruction> = build.iter().collect();
    let first_src_copy = build_steps
        .iter()
        .position(|i| i.keyword == "COPY" && i.args.starts_with("src"))
        .expect("COPY src");
    assert!(
        build_steps[..first_src_copy]
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("cargo build")),
        "a dependency-only `cargo build` must come before COPY src"
    );

    let runtime = stages.last().expect("a final stage");
    let (image, tag, digest) = from_image(&runtime[0].args);
    assert_eq!(image, "gcr.io/distroless/cc-debian12");
    assert!(tag.unwrap_or_default().contains("nonroot"));
    let digest = digest.expect("the runtime image is pinned by digest");
    assert!(
        digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        "not a sha256 digest: {digest}"
    );
    assert!(
        args_of(runtime, "COPY").any(|c| c.starts_with("config/sidecar.example.toml")
            && c.ends_with("/usr/share/doc/alipay-sidecar/sidecar.example.toml")),
        "the example config the error messages cite ships in the image"
    );
    assert!(
        args_of(runtime, "RUN").next().is_none(),
        "the runtime stage has no shell: RUN cannot work there"
    );

    let user = args_of(runtime, "USER")
        .last()
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "final USER must not be root: {user}"
    );

    let exposed: BTreeSet<&str> = args_of(runtime, "EXPOSE")
        .flat_map(str::split_whitespace)
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for port in ["8080", "8081", "9090"] {
        assert!(exposed.contains(port), "EXPOSE lacks {port}: {exposed:?}");
    }

    let binary = "/usr/local/bin/alipay-sidecar";
    let healthcheck = args_of(runtime, "HEALTHCHECK")
        .last()
        .expect("the final stage has a HEALTHCHECK");
    let command = healthcheck
        .split_once("CMD")
        .map(|(_, cmd)| exec_form(cmd))
        .expect("HEALTHCHECK CMD in exec form");
    assert_eq!(command.first().map(String::as_str), Some(binary));
    assert!(command.iter().any(|a| a == "healthcheck"), "{command:?}");
    // The admin address comes from the config the default CMD runs, not a fixed port.
    let config_arg = command
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| command.get(i + 1));
    assert_eq!(
        config_arg.map(String::as_str),
        Some("/etc/alipay-sidecar/sidecar.toml"),
        "{command:?}"
    );

    assert!(
        args_of(runtime, "COPY").any(|c| c.contains("--from=") && c.ends_with(binary)),
        "the binary is copied from the build stage to {binary}"
    );
    let mut argv = exec_form(args_of(runtime, "ENTRYPOINT").last().expect("ENTRYPOINT"));
    if let Some(cmd) = args_of(runtime, "CMD").last() {
        argv.extend(exec_form(cmd));
    }
    assert_eq!(
        argv,
        [
            binary,
            "run",
            "--config",
            "/etc/alipay-sidecar/sidecar.toml"
        ]
    );
}

/// The image is the production binary: built without the `mock-gateway` feature (no fake
/// gateway, no `demo`), and its dependency-only layer sees every workspace member's manifest
/// (cargo reads them all; one missing makes that layer fail, a stale copy makes it useless).
#[test]
fn dockerfile_builds_without_the_mock_gateway_and_caches_every_crate() {
    let stages = dockerfile_stages(&read("Dockerfile"));
    let build = &stages[0];
    let builds: Vec<&str> = args_of(build, "RUN")
        .filter(|r| r.contains("cargo build"))
        .collect();
    assert!(
        builds.len() >= 2,
        "a dependency layer and the real build: {builds:?}"
    );
    for run in &builds {
        assert!(
            run.split_whitespace().any(|w| w == "--no-default-features"),
            "every image build must use --no-default-features: {run}"
        );
    }

    let first_build = build
        .iter()
        .position(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a cargo build");
    let copied_before: Vec<&str> = build[..first_build]
        .iter()
        .filter(|i| i.keyword == "COPY")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    let crates = std::fs::read_dir(repo_file("crates")).expect("crates/");
    let mut members = 0;
    for entry in crates {
        let path = entry.expect("crates/ entry").path();
        if !path.join("Cargo.toml").is_file() {
            continue;
        }
        members += 1;
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        let manifest = format!("crates/{name}/Cargo.toml");
        assert!(
            copied_before.contains(&manifest.as_str()),
            "the dependency layer must COPY {manifest} before its cargo build: {copied_before:?}"
        );
    }
    assert!(members >= 2, "crates/ holds the workspace's library crates");
    assert!(
        args_of(build, "COPY").any(|c| c.starts_with("crates ")),
        "the real build copies crates/"
    );
}

#[test]
fn dockerignore_keeps_build_output_and_secrets_out_of_the_context() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for entry in ["target", ".git", "tests", "*.pem"] {
        assert!(ignored.contains(entry), ".dockerignore lacks {entry}");
    }
    // What the Dockerfile copies must stay in the context.
    for needed in ["src", "crates", "Cargo.toml", "Cargo.lock"] {
        assert!(!ignored.contains(needed), ".dockerignore drops {needed}");
    }
    // config/ stays out, except the example config the image ships.
    assert!(
        ignored.contains("!config/sidecar.example.toml"),
        ".dockerignore must re-include config/sidecar.example.toml"
    );
}

// ---------------------------------------------------------------------------------------
// Dashboard and alerts use only metric names the code exposes

/// Every `alipay_sidecar_*` identifier in a text.
fn referenced_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("alipay_sidecar_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every sample name the code can expose: the core set, plus the state store's features
/// (journal, delivery worker, reconciler), which register their metrics when they start.
fn exposed_names() -> BTreeSet<String> {
    let mut names = sample_names(&one_of_each());
    alipay_sidecar::journal::metrics().register_merchants(["default"]);
    alipay_sidecar::reconcile::register_metrics();
    alipay_sidecar::backfill::register_metrics(["default"]);
    alipay_sidecar::credentials::metrics().register_merchants(["default"]);
    alipay_sidecar::store::register_metrics();
    alipay_sidecar::retention::register_metrics();
    alipay_sidecar::signer::register_metrics("default");
    names.extend(sample_names(&alipay_sidecar::metrics::render()));
    names
}

fn assert_names_exist(file: &str, text: &str) -> BTreeSet<String> {
    let exposed = exposed_names();
    let referenced = referenced_metric_names(text);
    assert!(
        !referenced.is_empty(),
        "{file} uses no alipay_sidecar_* metric"
    );
    let unknown: Vec<&String> = referenced.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metric names the code does not expose: {unknown:?}\nexposed: {exposed:?}"
    );
    referenced
}

#[test]
fn the_extraction_catches_a_drifted_name() {
    let exposed = sample_names(&one_of_each());
    let drifted = referenced_metric_names(r#"rate(alipay_sidecar_request_total[5m])"#);
    assert!(!drifted.is_subset(&exposed));
}

#[test]
fn dashboard_parses_and_uses_only_exposed_metrics() {
    let text = read("config/grafana/alipay-sidecar.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "alipay-sidecar");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        if panel["type"] != "row" {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for target in targets {
                assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
            }
        }
    }
    let used = assert_names_exist("alipay-sidecar.json", &text);
    for required in [
        "alipay_sidecar_requests_total",
        "alipay_sidecar_errors_total",
        "alipay_sidecar_request_duration_seconds_bucket",
        "alipay_sidecar_upstream_duration_seconds_bucket",
        "alipay_sidecar_signature_verifications_total",
        "alipay_sidecar_key_reloads_total",
        "alipay_sidecar_notification_time_skew_seconds_bucket",
        "alipay_sidecar_in_flight_requests",
        "alipay_sidecar_build_info",
        "alipay_sidecar_gateway_rejections_total",
        "alipay_sidecar_app_credentials_dropped_total",
    ] {
        assert!(
            used.contains(required),
            "dashboard does not show {required}"
        );
    }
    assert!(text.contains("histogram_quantile("));
}

#[test]
fn alert_rules_parse_and_use_only_exposed_metrics() {
    let text = read("config/prometheus/alerts.yml");
    let rules: Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let mut names = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name").to_owned();
            assert!(
                rule["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{name}"
            );
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name} severity"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name} summary"
            );
            names.push(name);
        }
    }
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate alert names: {names:?}"
    );

    let used = assert_names_exist("alerts.yml", &text);
    for required in [
        "alipay_sidecar_signature_verifications_total",
        "alipay_sidecar_key_reloads_total",
        "alipay_sidecar_errors_total",
        "alipay_sidecar_key_last_reload_timestamp_seconds",
        "alipay_sidecar_gateway_rejections_total",
        "alipay_sidecar_store_up",
        "alipay_sidecar_reconcile_cancels_total",
        "alipay_sidecar_reconcile_inquiries_total",
        "alipay_sidecar_reconcile_conflicts_total",
        "alipay_sidecar_backfill_events_total",
        "alipay_sidecar_backfill_last_complete_timestamp_seconds",
    ] {
        assert!(used.contains(required), "no alert on {required}");
    }
    assert!(
        text.contains("AlipaySidecarGatewayRejectsCredentials"),
        "the credential-rejection alert is named as docs/operating.md says"
    );
    // issue 18: the reconciler's withheld cancel (L6) and refused answers (M1) alert
    assert!(
        text.contains(r#"result="withheld""#),
        "no alert on withheld cancels"
    );
    assert!(
        text.contains(r#"result="refused""#),
        "no alert on refused answers"
    );
    assert!(text.contains("SIDECAR_GATEWAY_"), "no gateway error alert");
    assert!(text.contains("up{"), "no sidecar-down alert");
}

// ---------------------------------------------------------------------------------------
// Kubernetes examples

fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kubernetes_objects() -> Vec<(String, Value)> {
    let dir = repo_file("config/kubernetes");
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("config/kubernetes exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for doc in yaml_documents(&format!("config/kubernetes/{file}")) {
                objects.push((file.clone(), doc));
            }
        }
    }
    objects
}

fn object<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}");
    found[0]
}

/// The one Secret called `name`.
fn secret_named<'a>(objects: &'a [(String, Value)], name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one Secret {name}");
    found[0]
}

/// The pod's `alipay-sidecar` init container (a native sidecar).
fn sidecar_container(pod: &Value) -> &Value {
    pod["initContainers"]
        .as_sequence()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "alipay-sidecar")
        .expect("an initContainer named alipay-sidecar")
}

fn sidecar_toml(objects: &[(String, Value)]) -> toml::Table {
    let config_map = object(objects, "ConfigMap");
    config_map["data"]["sidecar.toml"]
        .as_str()
        .expect("ConfigMap has sidecar.toml")
        .parse()
        .expect("sidecar.toml is TOML")
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen}"))
}

#[test]
fn services_expose_only_the_inbound_port() {
    let objects = kubernetes_objects();
    let services: Vec<&(String, Value)> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Service")
        .collect();
    assert!(!services.is_empty(), "no Service in config/kubernetes");
    let inbound = port_of(
        sidecar_toml(&objects)["inbound"]["listen"]
            .as_str()
            .expect("[inbound] listen"),
    );
    assert_eq!(inbound, 8081);
    for (file, service) in services {
        let ports = service["spec"]["ports"].as_sequence().expect("ports");
        assert_eq!(
            ports.len(),
            1,
            "{file}: only the inbound port may be exposed"
        );
        assert_eq!(ports[0]["port"].as_u64(), Some(8081), "{file}");
        // A number: the inbound port is declared on the native-sidecar init container, whose
        // named ports Services resolve only from Kubernetes 1.32 on.
        let target = &ports[0]["targetPort"];
        assert_eq!(
            target.as_u64(),
            Some(u64::from(inbound)),
            "{file}: targetPort must be the number {inbound}, not {target:?}"
        );
    }
}

#[test]
fn deployment_runs_a_hardened_native_sidecar_with_probes_and_secret_keys() {
    let objects = kubernetes_objects();
    let deployment = object(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let config = sidecar_toml(&objects);

    let sidecar = sidecar_container(pod);
    assert_eq!(sidecar["restartPolicy"], "Always", "native sidecar");
    assert!(
        !pod["containers"]
            .as_sequence()
            .expect("containers")
            .is_empty(),
        "the app container"
    );

    // Probes on the admin port, which must then listen beyond loopback.
    let admin_listen = config["admin"]["listen"].as_str().expect("[admin] listen");
    assert!(
        admin_listen.starts_with("0.0.0.0:"),
        "kubelet cannot probe {admin_listen}"
    );
    let admin_port = port_of(admin_listen);
    let named_ports: Vec<(String, u64)> = sidecar["ports"]
        .as_sequence()
        .expect("sidecar ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    let resolve = |port: &Value| -> u64 {
        port.as_u64().unwrap_or_else(|| {
            let name = port.as_str().expect("probe port");
            named_ports
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .unwrap_or_else(|| panic!("probe port {name} is not declared"))
        })
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(resolve(&get["port"]), u64::from(admin_port), "{probe}");
    }
    assert!(
        named_ports.iter().all(|(_, p)| *p != 8080),
        "the loopback-only outbound port must not be declared"
    );
    let outbound = config["outbound"]["listen"]
        .as_str()
        .expect("[outbound] listen");
    assert!(
        outbound.starts_with("127.0.0.1:"),
        "outbound must stay on loopback"
    );
    assert_eq!(
        config["inbound"]["forward_to"].as_str(),
        Some("http://127.0.0.1:3000")
    );

    // Security context: pod-level settings count for the container too.
    let setting = |key: &str| {
        let own = &sidecar["securityContext"][key];
        if own.is_null() {
            pod["securityContext"][key].clone()
        } else {
            own.clone()
        }
    };
    assert_eq!(setting("runAsNonRoot"), Value::Bool(true));
    assert_eq!(setting("readOnlyRootFilesystem"), Value::Bool(true));
    assert_eq!(setting("allowPrivilegeEscalation"), Value::Bool(false));
    let dropped = sidecar["securityContext"]["capabilities"]["drop"]
        .as_sequence()
        .expect("capabilities.drop");
    assert!(dropped.iter().any(|c| c == "ALL"));
    if let Some(uid) = setting("runAsUser").as_u64() {
        assert_ne!(uid, 0);
    }

    // Keys come from a Secret, read-only, at the documented path; config from the ConfigMap.
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let mounts = sidecar["volumeMounts"].as_sequence().expect("volumeMounts");
    let mount_at = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
    };
    let volume = |name: &Value| {
        volumes
            .iter()
            .find(|v| &v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name:?}"))
    };
    let keys_mount = mount_at("/etc/alipay-sidecar/keys");
    assert_eq!(keys_mount["readOnly"], Value::Bool(true));
    assert!(
        keys_mount["subPath"].is_null(),
        "subPath mounts never see Secret updates"
    );
    let keys_volume = volume(&keys_mount["name"]);
    assert_eq!(keys_volume["secret"]["secretName"], "alipay-sidecar-keys");
    let config_volume = volume(&mount_at("/etc/alipay-sidecar")["name"]);
    let config_map = object(&objects, "ConfigMap");
    assert_eq!(
        config_volume["configMap"]["name"],
        config_map["metadata"]["name"]
    );

    // The key files the config names are the ones the example Secret provides.
    let secret = secret_named(&objects, "alipay-sidecar-keys");
    assert_eq!(secret["metadata"]["name"], "alipay-sidecar-keys");
    let provided: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .expect("stringData")
        .keys()
        .filter_map(|k| k.as_str().map(|k| format!("/etc/alipay-sidecar/keys/{k}")))
        .collect();
    let keys = &config["keys"];
    let mut wanted = vec![keys["merchant_private_key"].as_str().expect("merchant key")];
    wanted.extend(
        keys["alipay_public_keys"]
            .as_table()
            .expect("alipay_public_keys")
            .values()
            .filter_map(|v| v.as_str()),
    );
    for path in wanted {
        assert!(
            provided.contains(path),
            "{path} is not in the example Secret"
        );
    }
    for value in secret["stringData"]
        .as_mapping()
        .expect("stringData")
        .values()
    {
        assert!(
            value.as_str().is_some_and(|v| v.contains("PLACEHOLDER")),
            "the example Secret must hold placeholders only"
        );
    }

    // Termination grace covers shutdown_grace + shutdown_timeout.
    let seconds = |key: &str| {
        humantime::parse_duration(config["server"][key].as_str().expect(key))
            .expect(key)
            .as_secs()
    };
    let budget = seconds("shutdown_grace") + seconds("shutdown_timeout");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > budget,
        "{grace} s does not cover the sidecar's {budget} s"
    );

    // Scrape annotations point at the admin port.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin_port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn prometheus_operator_scrapes_the_admin_port() {
    let objects = kubernetes_objects();
    let monitor = objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == "PodMonitor" || o["kind"] == "ServiceMonitor")
        .expect("a PodMonitor or ServiceMonitor");
    let endpoints = if monitor["kind"] == "PodMonitor" {
        &monitor["spec"]["podMetricsEndpoints"]
    } else {
        &monitor["spec"]["endpoints"]
    };
    let endpoint = &endpoints.as_sequence().expect("endpoints")[0];
    assert_eq!(endpoint["port"], "admin");
    assert_eq!(endpoint["path"], "/metrics");
    let deployment = object(&objects, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(&pod_labels[key], value, "selector does not match the pod");
    }
}

/// The ConfigMap's `sidecar.toml` and the shipped example config are real configurations of
/// this version: an option renamed in the code must not leave the examples behind.
#[test]
fn example_configs_parse_with_the_current_schema() {
    use alipay_sidecar::config::Config;
    let configmap = yaml_documents("config/kubernetes/configmap.yaml")
        .into_iter()
        .find_map(|doc| doc["data"]["sidecar.toml"].as_str().map(str::to_string))
        .expect("configmap.yaml has data.sidecar.toml");
    let path = repo_file("config/kubernetes/sidecar.toml");
    let cfg = Config::parse(&configmap, &path, Vec::new())
        .unwrap_or_else(|e| panic!("configmap sidecar.toml: {e}"));
    assert!(
        cfg.outbound
            .as_ref()
            .is_some_and(|o| o.listen_addrs().iter().all(|a| a.ip().is_loopback())),
        "the signer stays on loopback in the pod"
    );
    assert_eq!(cfg.inbound.as_ref().map(|i| i.listen.port()), Some(8081));
    assert_eq!(cfg.admin.listen.port(), 9090);
    assert!(cfg.merchants[0]
        .keys
        .credential
        .path()
        .starts_with("/etc/alipay-sidecar/keys"));

    let example = read("config/sidecar.example.toml");
    Config::parse(
        &example,
        &repo_file("config/sidecar.example.toml"),
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("sidecar.example.toml: {e}"));
}

/// `config/docker-compose.yaml`: the sidecar shares the app's network namespace (so the
/// loopback-only outbound listener is reachable by the app and nothing else), mounts the
/// config and keys read-only where the image expects them, is built from this repository's
/// Dockerfile, and gets time to drain.
#[test]
fn compose_file_runs_the_sidecar_in_the_apps_network_namespace() {
    let docs = yaml_documents("config/docker-compose.yaml");
    assert_eq!(docs.len(), 1, "one compose document");
    let services = docs[0]["services"]
        .as_mapping()
        .expect("services is a mapping");
    let sidecar = services
        .iter()
        .find(|(_, s)| {
            s["build"]["dockerfile"] == "Dockerfile" || s["image"] == "alipay-sidecar:local"
        })
        .map(|(_, s)| s)
        .expect("a service built from the Dockerfile");
    let mode = sidecar["network_mode"].as_str().expect("network_mode");
    let app_name = mode
        .strip_prefix("service:")
        .unwrap_or_else(|| panic!("network_mode {mode:?} must be service:<app>"));
    let app = &docs[0]["services"][app_name];
    assert!(
        app.is_mapping(),
        "network_mode names a defined service: {app_name}"
    );
    assert!(
        sidecar["ports"].is_null(),
        "a service in another's network namespace cannot publish ports"
    );

    // The build context is the repository root, where the Dockerfile is.
    let context = sidecar["build"]["context"].as_str().expect("build context");
    let root = repo_file("config").join(context);
    assert!(
        root.join(
            sidecar["build"]["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile")
        )
        .is_file(),
        "build context {context} (relative to config/) holds the Dockerfile"
    );

    // The app publishes the inbound port only, never the signing proxy.
    let published: Vec<String> = app["ports"]
        .as_sequence()
        .expect("the app publishes the inbound port")
        .iter()
        .map(|p| {
            p.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{p:?}"))
        })
        .collect();
    assert!(
        published.iter().any(|p| p.ends_with(":8081")),
        "{published:?}"
    );
    assert!(
        !published.iter().any(|p| p.contains("8080")),
        "the outbound listener must not be published: {published:?}"
    );

    // Config and keys where the image's CMD and [keys] expect them, read-only.
    let volumes: Vec<&str> = sidecar["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for target in [
        "/etc/alipay-sidecar/sidecar.toml",
        "/etc/alipay-sidecar/keys",
    ] {
        let volume = volumes
            .iter()
            .find(|v| v.split(':').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("nothing mounted at {target}: {volumes:?}"));
        assert!(volume.ends_with(":ro"), "{volume} must be read-only");
    }

    let grace = sidecar["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let grace = humantime::parse_duration(grace).expect("a duration");
    assert!(
        grace >= std::time::Duration::from_secs(35),
        "stop_grace_period {grace:?} < shutdown_grace + shutdown_timeout"
    );
}

#[test]
fn a_privileged_tls_port_is_bindable_by_the_non_root_sidecar() {
    let objects = kubernetes_objects();
    let config = sidecar_toml(&objects);
    let Some(tls) = config["outbound"]["tls_listen"].as_str() else {
        return; // no HTTPS listener configured: nothing to bind
    };
    let port = port_of(tls);
    assert!(
        tls.starts_with("127.0.0.1:"),
        "the HTTPS signer stays on loopback: {tls}"
    );
    if port >= 1024 {
        return;
    }
    let deployment = object(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let sysctl_ok = pod["securityContext"]["sysctls"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|s| {
            s["name"] == "net.ipv4.ip_unprivileged_port_start"
                && s["value"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v <= u64::from(port))
        });
    let sidecar = sidecar_container(pod);
    let cap_ok = sidecar["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|c| c == "NET_BIND_SERVICE");
    assert!(
        sysctl_ok || cap_ok,
        "tls_listen = {tls} needs net.ipv4.ip_unprivileged_port_start <= {port} or NET_BIND_SERVICE"
    );
}

/// The mount of `container` whose folder holds `file`, and the pod volume behind it.
fn mount_holding<'a>(pod: &'a Value, container: &'a Value, file: &str) -> (&'a Value, &'a Value) {
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .is_some_and(|p| file.starts_with(&format!("{}/", p.trim_end_matches('/'))))
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
        .unwrap_or_else(|| panic!("no mount holds {file}"));
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    (mount, volume)
}

/// Issue 17: the HTTPS listener's CA comes from a Secret mounted into the sidecar (a
/// directory mount, so updates arrive), the trust bundle goes to an emptyDir the app mounts
/// read-only, and the app's `SSL_CERT_FILE` names that bundle where the app sees it.
#[test]
fn the_app_trusts_the_sidecar_through_the_ca_secret_and_the_shared_trust_bundle() {
    let objects = kubernetes_objects();
    let config = sidecar_toml(&objects);
    let deployment = object(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let sidecar = sidecar_container(pod);
    let outbound = &config["outbound"];
    assert!(
        outbound.get("tls_listen").is_some(),
        "the HTTPS listener is on"
    );
    assert!(
        outbound.get("tls_cert").is_none() && outbound.get("tls_key").is_none(),
        "tls_ca_cert and tls_cert are exclusive"
    );

    // the CA: both files from one Secret, read-only, no subPath, not world-readable
    let mut ca_secret = None;
    for key in ["tls_ca_cert", "tls_ca_key"] {
        let file = outbound
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("[outbound] {key}"));
        let (mount, volume) = mount_holding(pod, sidecar, file);
        assert_eq!(mount["readOnly"], Value::Bool(true), "{key}");
        assert!(
            mount["subPath"].is_null(),
            "{key}: subPath mounts never see updates"
        );
        let name = volume["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not on a Secret volume"));
        // `0440` is octal to Kubernetes (YAML 1.1); serde_yaml (YAML 1.2) leaves it a string
        let mode = &volume["secret"]["defaultMode"];
        let mode = mode.as_u64().or_else(|| {
            mode.as_str().and_then(|m| {
                u64::from_str_radix(m.trim_start_matches("0o").trim_start_matches('0'), 8).ok()
            })
        });
        assert!(
            mode.is_some_and(|m| m & 0o007 == 0),
            "{key}: the CA key must not be world-readable ({mode:?})"
        );
        let secret = secret_named(&objects, name);
        let file_name = file.rsplit('/').next().unwrap();
        let data = &secret["stringData"][file_name];
        assert!(
            data.as_str().is_some_and(|v| v.contains("PLACEHOLDER")),
            "{key}: the example Secret {name} provides {file_name} (a placeholder)"
        );
        assert!(ca_secret.is_none_or(|n| n == name), "one Secret for both");
        ca_secret = Some(name);
    }
    assert_ne!(
        ca_secret,
        Some("alipay-sidecar-keys"),
        "the CA lives as long as the deployment, the keys rotate: separate Secrets"
    );

    // the trust bundle: written by the sidecar on an emptyDir the app mounts read-only
    let trust = outbound
        .get("tls_trust_out")
        .and_then(|v| v.as_str())
        .expect("[outbound] tls_trust_out");
    let (mount, volume) = mount_holding(pod, sidecar, trust);
    assert!(volume["emptyDir"].is_mapping(), "{trust} is on an emptyDir");
    assert_ne!(
        mount["readOnly"],
        Value::Bool(true),
        "the sidecar writes it"
    );
    let apps: Vec<&Value> = pod["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .collect();
    let mut trusted_by = 0;
    for app in apps {
        let Some(app_mount) = app["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == mount["name"])
        else {
            continue;
        };
        assert_eq!(
            app_mount["readOnly"],
            Value::Bool(true),
            "read-only in the app"
        );
        let relative = trust
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap()
            .trim_start_matches('/');
        let seen_at = format!(
            "{}/{relative}",
            app_mount["mountPath"]
                .as_str()
                .unwrap()
                .trim_end_matches('/')
        );
        let env = app["env"]
            .as_sequence()
            .expect("app env")
            .iter()
            .find(|e| e["name"] == "SSL_CERT_FILE")
            .expect("the app's SSL_CERT_FILE");
        assert_eq!(env["value"].as_str(), Some(seen_at.as_str()));
        trusted_by += 1;
    }
    assert_eq!(trusted_by, 1, "the app container mounts the trust bundle");
}

/// The compose example wires the same: the CA mounted read-only into the sidecar, the trust
/// bundle on a volume the sidecar writes and the app reads (read-only), `SSL_CERT_FILE` in
/// the app, at the paths the Kubernetes example's config uses (the compose file's header
/// shows those config lines).
#[test]
fn compose_file_shares_the_trust_bundle_with_the_app() {
    let config = sidecar_toml(&kubernetes_objects());
    let trust = config["outbound"]["tls_trust_out"]
        .as_str()
        .expect("tls_trust_out");
    let ca_dir = config["outbound"]["tls_ca_cert"]
        .as_str()
        .and_then(|p| p.rsplit_once('/'))
        .map(|(d, _)| d)
        .expect("tls_ca_cert");
    let (trust_dir, _) = trust.rsplit_once('/').unwrap();
    let text = read("config/docker-compose.yaml");
    for line in ["tls_ca_cert = ", "tls_ca_key = ", "tls_trust_out = "] {
        assert!(text.contains(line), "the header shows `{line}`");
    }
    assert!(text.contains(&format!("tls_trust_out = \"{trust}\"")));
    let docs = yaml_documents("config/docker-compose.yaml");
    let services = &docs[0]["services"];
    let volumes_of = |s: &Value| -> Vec<String> {
        s["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let sidecar = services
        .as_mapping()
        .unwrap()
        .values()
        .find(|s| s["image"] == "alipay-sidecar:local")
        .expect("the sidecar service");
    let app_name = sidecar["network_mode"]
        .as_str()
        .and_then(|m| m.strip_prefix("service:"))
        .unwrap();
    let app = &services[app_name];
    let sidecar_volumes = volumes_of(sidecar);
    let ca = sidecar_volumes
        .iter()
        .find(|v| v.split(':').nth(1) == Some(ca_dir))
        .unwrap_or_else(|| panic!("nothing mounted at {ca_dir}: {sidecar_volumes:?}"));
    assert!(ca.ends_with(":ro"), "{ca}");
    let shared = sidecar_volumes
        .iter()
        .find(|v| v.split(':').nth(1) == Some(trust_dir))
        .unwrap_or_else(|| panic!("nothing mounted at {trust_dir}: {sidecar_volumes:?}"));
    assert!(!shared.ends_with(":ro"), "the sidecar writes {shared}");
    let volume_name = shared.split(':').next().unwrap();
    assert!(
        docs[0]["volumes"][volume_name].is_mapping(),
        "{volume_name} is a named volume"
    );
    let app_volume = volumes_of(app)
        .into_iter()
        .find(|v| v.split(':').next() == Some(volume_name))
        .expect("the app mounts the trust volume");
    assert!(app_volume.ends_with(":ro"), "{app_volume}");
    let app_dir = app_volume.split(':').nth(1).unwrap();
    let file = trust.rsplit('/').next().unwrap();
    assert_eq!(
        app["environment"]["SSL_CERT_FILE"].as_str(),
        Some(format!("{app_dir}/{file}").as_str())
    );
}
