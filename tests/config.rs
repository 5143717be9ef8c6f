//! The config contract: `--check` on the shipped example, unknown keys and bad values
//! named in the error, missing or empty secret files named (and never a secret).

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

const REPO_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn minimal(extra_upstream: &str) -> String {
    format!(
        "[listen]\naddress = \"127.0.0.1:{}\"\n\n[upstream]\naddress = \"127.0.0.1:6380\"\n{extra_upstream}",
        free_port()
    )
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
    let p = write(dir.path(), "min.toml", &minimal(""));
    let (status, out) = check_config(&p);
    assert!(
        status.success(),
        "--check on a minimal config failed ({status}):\n{out}"
    );
}

#[test]
fn check_rejects_an_unknown_key_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "typo.toml", &minimal("pool_sise = 3\n"));
    assert_check_rejects_naming("unknown key", &p, "pool_sise");

    let p = write(
        dir.path(),
        "section.toml",
        &format!("{}\n[upstreem]\naddress = \"x:1\"\n", minimal("")),
    );
    assert_check_rejects_naming("unknown section", &p, "upstreem");
}

#[test]
fn check_rejects_a_zero_pool() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "zero.toml", &minimal("pool_size = 0\n"));
    assert_check_rejects_naming("pool_size = 0", &p, "pool_size");
}

#[test]
fn check_refuses_replica_reads_outside_cluster_mode() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "standalone.toml",
        &minimal("read_from_replicas = true\n"),
    );
    assert_check_rejects_naming(
        "read_from_replicas in standalone mode",
        &p,
        "read_from_replicas",
    );
    // Off, or on in cluster mode: accepted.
    for extra in [
        "read_from_replicas = false\n",
        "mode = \"cluster\"\nread_from_replicas = true\n",
    ] {
        let p = write(dir.path(), "ok.toml", &minimal(extra));
        let (status, out) = check_config(&p);
        assert!(
            status.success(),
            "--check with {extra:?} failed ({status}):\n{out}"
        );
    }
}

#[test]
fn missing_secret_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let p = write(
        dir.path(),
        "missing.toml",
        &minimal(&format!("password_file = \"{}\"\n", missing.display())),
    );
    assert_check_rejects_naming("a missing secret file", &p, missing.to_str().unwrap());
    // Running (not just checking) fails at start-up the same way.
    assert_start_fails_naming("a missing secret file", &p, &missing);
}

#[test]
fn empty_client_secret_file_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty-secret", "");
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:{}\"\n\n[client]\npassword_file = \"{}\"\n\n[upstream]\naddress = \"127.0.0.1:6380\"\n",
        free_port(),
        empty.display()
    );
    let p = write(dir.path(), "empty.toml", &text);
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
    let p = write(
        dir.path(),
        "bad.toml",
        &minimal(&format!(
            "password_file = \"{}\"\npool_size = \"eight\"\n",
            sf.display()
        )),
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
    let p = write(
        dir.path(),
        "env.toml",
        &minimal(&format!("password_env = \"{var}\"\n")),
    );
    let (status, out) = run_proxy_to_exit(
        &["--config", p.to_str().unwrap(), "--check"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(1), "output:\n{out}");
    assert!(out.contains(var), "the variable is not named:\n{out}");
}
