//! The config contract: `--check` on the shipped example, unknown keys and bad values
//! named in the error, missing or empty secret files named (and never a secret).

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const REPO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// `[listen]` on a free port, `[upstream]` at 127.0.0.1:6380 (nothing needs to listen
/// there for `--check`).
fn minimal() -> AmbassadorConfig {
    AmbassadorConfig::new("127.0.0.1:6380").listen_on(free_port())
}

/// `config` with `key = value` added to `[upstream]`: for what the typed config cannot
/// hold (an unknown key, a value of the wrong type).
fn with_odd_upstream_key(
    config: &AmbassadorConfig,
    key: &str,
    value: impl Into<toml::Value>,
) -> String {
    let mut table = config.to_table();
    table["upstream"]
        .as_table_mut()
        .expect("[upstream] is a table")
        .insert(key.to_owned(), value.into());
    toml::to_string(&table).unwrap()
}

/// `--check` on `p` exits with status 1 and names `name` in its output.
#[track_caller]
fn assert_check_rejects_naming(what: &str, p: &Path, name: &str) {
    let (status, out) = check_config(p);
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: --check exit status; output:\n{out}"
    );
    assert!(
        out.contains(name),
        "{what}: \"{name}\" is not named:\n{out}"
    );
}

/// Running the proxy on `p` fails at start-up and names `path` in its output.
#[track_caller]
fn assert_start_fails_naming(what: &str, p: &Path, path: &Path) {
    let (status, out) = run_proxy_to_exit(
        &["--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert!(!status.success(), "started with {what}:\n{out}");
    assert!(
        out.contains(path.to_str().unwrap()),
        "{what}: path not named:\n{out}"
    );
}

#[test]
fn check_accepts_the_repo_config() {
    let (status, out) = check_config(Path::new(REPO_CONFIG));
    assert!(
        status.success(),
        "--check on config.toml failed ({status}):\n{out}"
    );
}

#[test]
fn check_accepts_a_minimal_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = minimal().write(&dir.path().join("min.toml"));
    let (status, out) = check_config(&p);
    assert!(
        status.success(),
        "--check on a minimal config failed ({status}):\n{out}"
    );
}

#[test]
fn check_rejects_an_unknown_key_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "typo.toml",
        &with_odd_upstream_key(&minimal(), "pool_sise", 3),
    );
    assert_check_rejects_naming("unknown key", &p, "pool_sise");

    let mut table = minimal().to_table();
    let mut upstreem = toml::Table::new();
    upstreem.insert("address".to_owned(), "x:1".into());
    table.insert("upstreem".to_owned(), upstreem.into());
    let p = write(
        dir.path(),
        "section.toml",
        &toml::to_string(&table).unwrap(),
    );
    assert_check_rejects_naming("unknown section", &p, "upstreem");
}

#[test]
fn check_rejects_a_zero_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = minimal();
    config.upstream.pool_size = Some(0);
    let p = config.write(&dir.path().join("zero.toml"));
    assert_check_rejects_naming("pool_size = 0", &p, "pool_size");
}

#[test]
fn check_refuses_replica_reads_outside_cluster_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = minimal();
    config.upstream.read_from_replicas = Some(true);
    let p = config.write(&dir.path().join("standalone.toml"));
    assert_check_rejects_naming(
        "read_from_replicas in standalone mode",
        &p,
        "read_from_replicas",
    );
    // Off, or on in cluster mode: accepted.
    for (mode, read_from_replicas) in [(None, false), (Some(UpstreamMode::Cluster), true)] {
        let mut config = minimal();
        config.upstream.mode = mode;
        config.upstream.read_from_replicas = Some(read_from_replicas);
        let p = config.write(&dir.path().join("ok.toml"));
        let (status, out) = check_config(&p);
        assert!(
            status.success(),
            "--check with {:?} failed ({status}):\n{out}",
            config.upstream
        );
    }
}

#[test]
fn missing_secret_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let mut config = minimal();
    config.upstream.password_file = Some(missing.clone());
    let p = config.write(&dir.path().join("missing.toml"));
    assert_check_rejects_naming("a missing secret file", &p, missing.to_str().unwrap());
    // The key, the path, and what to do.
    let (_, out) = check_config(&p);
    assert!(
        out.contains(&format!("[upstream] password_file {}", missing.display()))
            && out.contains("mount the Secret as a directory"),
        "{out}"
    );
    // Running (not just checking) fails at start-up the same way.
    assert_start_fails_naming("a missing secret file", &p, &missing);
}

/// Every secret's error names its own key: `[client]`, `[[client.users]]` (with the
/// user), the Sentinels' password, TLS files; a missing file says to mount the Secret as
/// a directory, an unset variable names the variable. Never a value.
#[test]
fn every_startup_error_names_its_key_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let present = write(dir.path(), "pw", "Present-Secret-Value-9\n");
    let cases: Vec<(&str, AmbassadorConfig, String)> = vec![
        (
            "[client] password_file",
            {
                let mut c = minimal();
                c.client_mut().password_file = Some(missing.clone());
                c
            },
            format!("[client] password_file {}", missing.display()),
        ),
        (
            "[[client.users]] password_env",
            {
                let mut c = minimal();
                c.client_mut().password_file = Some(present.clone());
                c.client_mut().users.push(common::config::ClientUser {
                    username: "reports".into(),
                    password_file: None,
                    password_env: Some("AMBASSADOR_TEST_UNSET_USER_PW".into()),
                    ..Default::default()
                });
                c
            },
            "[[client.users]] `reports` password_env: environment variable \
            AMBASSADOR_TEST_UNSET_USER_PW is not set"
                .to_owned(),
        ),
        (
            "[upstream] sentinel_password_file",
            {
                let mut c = minimal();
                c.upstream.mode = Some(UpstreamMode::Sentinel);
                c.upstream.master_name = Some("mymaster".into());
                c.upstream.password_file = Some(present.clone());
                c.upstream.sentinel_password_file = Some(missing.clone());
                c
            },
            format!("[upstream] sentinel_password_file {}", missing.display()),
        ),
        (
            "[listen] tls_cert_file",
            {
                let mut c = minimal();
                c.listen.tls_cert_file = Some(missing.clone());
                c.listen.tls_key_file = Some(present.clone());
                c
            },
            format!("[listen] tls_cert_file {}", missing.display()),
        ),
    ];
    for (n, (what, config, named)) in cases.into_iter().enumerate() {
        let p = config.write(&dir.path().join(format!("case{n}.toml")));
        let (status, out) = check_config(&p);
        assert_eq!(status.code(), Some(1), "{what}: --check passed:\n{out}");
        assert!(out.contains(&named), "{what}: \"{named}\" not in:\n{out}");
        if named.contains(missing.to_str().unwrap()) {
            assert!(
                out.contains("mount the Secret as a directory"),
                "{what}:\n{out}"
            );
        }
        assert!(
            !out.contains("Present-Secret-Value-9"),
            "{what}: a value is shown:\n{out}"
        );
        let (status, run_out) = run_proxy_to_exit(
            &["--config", p.to_str().unwrap()],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(status.code(), Some(1), "{what}: started:\n{run_out}");
        assert!(run_out.contains(&named), "{what}: at start-up:\n{run_out}");
    }
}

#[test]
fn empty_client_secret_file_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty-secret", "");
    let mut config = minimal();
    config.client_mut().password_file = Some(empty.clone());
    let p = config.write(&dir.path().join("empty.toml"));
    assert_start_fails_naming("an empty secret file", &p, &empty);
    // A file holding only the newline is empty too.
    fs::write(&empty, "\n").unwrap();
    let (status, out) = check_config(&p);
    assert_eq!(
        status.code(),
        Some(1),
        "a newline-only secret was accepted:\n{out}"
    );
}

#[test]
fn secret_contents_never_in_error_output() {
    // A valid secret next to an invalid key: the error must not print the secret.
    let dir = tempfile::tempdir().unwrap();
    let secret = "Never-Print-Me-6612";
    let sf = write(dir.path(), "pw", &format!("{secret}\n"));
    let mut config = minimal();
    config.upstream.password_file = Some(sf);
    let p = write(
        dir.path(),
        "bad.toml",
        &with_odd_upstream_key(&config, "pool_size", "eight"),
    );
    let (status, out) = check_config(&p);
    assert_eq!(status.code(), Some(1), "output:\n{out}");
    assert!(
        !out.contains(secret),
        "the secret appears in the error output"
    );
}

#[test]
fn unset_password_env_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let var = "AMBASSADOR_TEST_UNSET_VAR_93";
    let mut config = minimal();
    config.upstream.password_env = Some(var.to_owned());
    let p = config.write(&dir.path().join("env.toml"));
    let (status, out) = run_proxy_to_exit(
        &["--config", p.to_str().unwrap(), "--check"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "output:\n{out}");
    assert!(
        out.contains(&format!(
            "[upstream] password_env: environment variable {var} is not set"
        )),
        "the key and the variable are not named:\n{out}"
    );
}

/// A password written into the upstream address (people paste `REDIS_URL`s) is refused by
/// `--check`, which points at `password_file`/`password_env` and never echoes it; addresses
/// whose port cannot work are refused too, naming the address.
#[test]
fn check_refuses_credentials_and_bad_ports_in_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = minimal();
    config.upstream.address = Some("redis://:s3cretpw@127.0.0.1:6390".to_owned());
    let p = config.write(&dir.path().join("userinfo.toml"));
    let (status, out) = check_config(&p);
    assert_eq!(status.code(), Some(1), "--check passed:\n{out}");
    assert!(
        out.contains("password_file"),
        "no pointer to password_file:\n{out}"
    );
    assert!(!out.contains("s3cretpw"), "the password was echoed:\n{out}");
    // Started (not just checked): refused the same way, never echoed.
    let (status, out) = run_proxy_to_exit(
        &["--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "started:\n{out}");
    assert!(out.contains("[upstream] address"), "{out}");
    assert!(!out.contains("s3cretpw"), "the password was echoed:\n{out}");
    for (n, bad) in [
        "127.0.0.1:abc",
        "127.0.0.1:99999",
        "127.0.0.1:",
        ":6390",
        "127.0.0.1:0",
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = minimal();
        config.upstream.address = Some(bad.to_owned());
        let p = config.write(&dir.path().join(format!("port{n}.toml")));
        assert_check_rejects_naming(bad, &p, &format!("`{bad}`"));
    }
}
