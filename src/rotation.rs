//! Secret rotation: notices when a secret file changes and installs the new value in its
//! `RotatingSecret`, without a restart.
//!
//! Kubernetes updates a Secret mounted as a directory by writing the new files into a
//! fresh timestamped directory (`..2026_11_26_…`), pointing a `..data_tmp` symlink at it and
//! renaming that over `..data`; the key files (`password -> ..data/password`) never change
//! themselves. So the watcher watches each secret file's *directory* and treats any event
//! on `..data` (or on the file's own name, for files rewritten in place) as a change. A
//! poller re-reads every file at `[secrets] poll_interval_ms` as a fallback (inotify can
//! be unavailable, or a volume can change in ways that raise no event); both only compare
//! contents, so a spurious wake-up costs a file read.
//!
//! After an event the watcher waits until the directory has been quiet for
//! `debounce_ms` (a burst of swaps ends in the last one), and takes a new value only once
//! two reads `debounce_ms` apart agree (a file being written in place is not taken
//! half-way). A missing, unreadable or empty file keeps the last good value. Environment
//! variables are read once, at start-up: they cannot rotate.
//!
//! It must not block the runtime for long (reads are of small files) and never logs a
//! secret's value.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::SecretsWatch;
use crate::secret::{RotatingSecret, SecretSource};

/// The entry kubelet swaps in a Secret volume.
const DATA_LINK: &str = "..data";

/// How many times a change is re-read while the file keeps changing under the reader
/// before waiting for the next event or poll.
const MAX_SETTLE_ATTEMPTS: usize = 10;

/// Set by Kubernetes in every container of a pod (the API server's address): its presence
/// is how the ambassador knows it runs in a pod.
const IN_POD_VARIABLE: &str = "KUBERNETES_SERVICE_HOST";

/// Whether the process runs in a Kubernetes pod (see [`IN_POD_VARIABLE`]).
fn in_kubernetes() -> bool {
    std::env::var_os(IN_POD_VARIABLE).is_some()
}

/// Warns, at start-up, about secrets whose rotation the proxy cannot see: environment
/// variables, files outside a Kubernetes Secret volume directory (a `subPath` mount, which
/// kubelet never updates), and every file when both watching and polling are off. Each
/// names the secret's config key.
///
/// A file outside a Secret volume is only worth a warning in a pod: on a laptop or a VM
/// the secret is a plain file, rewritten in place if at all, so it is said at info level.
pub fn warn_unwatchable(secrets: &[Arc<RotatingSecret>], settings: &SecretsWatch) {
    let in_pod = in_kubernetes();
    let mut any_file = false;
    for secret in secrets {
        let key = secret.setting().map_or("", |s| s.key.as_str());
        match secret.source() {
            Some(SecretSource::Env(name)) => tracing::warn!(
                key,
                variable = %name,
                "secret comes from an environment variable: it cannot rotate without a restart \
                 (mount the Kubernetes Secret as a directory and use *_file to rotate it)"
            ),
            Some(SecretSource::File(path)) => {
                any_file = true;
                if directory_of(path).join(DATA_LINK).exists() {
                    continue;
                }
                if in_pod {
                    tracing::warn!(
                        key,
                        file = %path.display(),
                        "secret file is not in a Kubernetes Secret volume (no `..data` next to \
                         it, as with a subPath mount): Kubernetes will not update it; mount the \
                         Secret as a directory"
                    );
                } else {
                    tracing::info!(
                        key,
                        file = %path.display(),
                        "secret file is not in a Kubernetes Secret volume (not running in a \
                         pod): a rewrite of the file itself is picked up"
                    );
                }
            }
            None => {}
        }
    }
    if any_file && !settings.watch && settings.poll_interval().is_none() {
        tracing::warn!(
            "[secrets] watch = false and poll_interval_ms = 0: rotated secret files will not be \
             picked up without a restart"
        );
    }
}

/// Starts watching (and polling) the secret files; runs until `stop` fires. Does nothing
/// when no secret comes from a file.
pub fn spawn(secrets: Vec<Arc<RotatingSecret>>, settings: SecretsWatch, stop: CancellationToken) {
    let files: Vec<(Arc<RotatingSecret>, PathBuf)> = secrets
        .into_iter()
        .filter_map(|s| match s.source() {
            Some(SecretSource::File(path)) => {
                let path = path.clone();
                Some((s, path))
            }
            _ => None,
        })
        .collect();
    if files.is_empty() {
        return;
    }
    tokio::spawn(run(files, settings, stop));
}

async fn run(
    files: Vec<(Arc<RotatingSecret>, PathBuf)>,
    settings: SecretsWatch,
    stop: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    // Kept alive for as long as this task: dropping it stops the watch.
    let _watcher = if settings.watch {
        start_watcher(&files, changed.clone(), settings.poll_interval().is_some())
    } else {
        None
    };
    let mut poll = settings.poll_interval().map(|period| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    let debounce = settings.debounce();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {
                // Last one wins: wait until the events stop for `debounce`.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = changed.notified() => continue,
                        _ = tokio::time::sleep(debounce) => break,
                    }
                }
                tracing::debug!("secret directory changed; re-reading secrets");
                check_all(&files, debounce).await;
            }
            _ = tick(&mut poll) => check_all(&files, debounce).await,
        }
    }
}

async fn tick(poll: &mut Option<Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Re-reads every file and installs what changed, once two reads `debounce` apart agree.
async fn check_all(files: &[(Arc<RotatingSecret>, PathBuf)], debounce: Duration) {
    for (secret, _) in files {
        for _ in 0..MAX_SETTLE_ATTEMPTS {
            let Some(first) = secret.read_source() else {
                break;
            };
            match first {
                Ok(value) if value == secret.current() => break,
                Err(error) => {
                    secret.install(Err(error));
                    break;
                }
                Ok(value) => {
                    tokio::time::sleep(debounce).await;
                    match secret.read_source() {
                        Some(Ok(again)) if again == value => {
                            secret.install(Ok(value));
                            break;
                        }
                        // Still being written (or gone again): look once more.
                        _ => tracing::debug!("secret file changed while being read; re-reading"),
                    }
                }
            }
        }
    }
}

/// Watches the directory of every secret file. `None` (and a warning) if the platform's
/// watcher cannot be set up; the poller then carries rotation alone.
fn start_watcher(
    files: &[(Arc<RotatingSecret>, PathBuf)],
    changed: Arc<Notify>,
    polling: bool,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};

    let mut names: BTreeSet<OsString> = BTreeSet::new();
    names.insert(OsString::from(DATA_LINK));
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for (_, path) in files {
        if let Some(name) = path.file_name() {
            names.insert(name.to_owned());
        }
        dirs.insert(directory_of(path).to_owned());
    }
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // The watcher's own errors (a queue overflow): re-read to be safe.
            changed.notify_one();
            return;
        };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let relevant = event
            .paths
            .iter()
            .any(|p| p.file_name().is_some_and(|n| names.contains(n)));
        if relevant {
            changed.notify_one();
        }
    };
    let fallback = if polling {
        "relying on polling"
    } else {
        "rotation will not be seen ([secrets] poll_interval_ms = 0)"
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch secret files; {fallback}");
            return None;
        }
    };
    for dir in &dirs {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(%error, directory = %dir.display(), "cannot watch secret directory; {fallback}");
        }
    }
    Some(watcher)
}

/// The directory a secret file sits in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{Secret, SecretSetting};
    use std::os::unix::fs::symlink;

    fn file(path: PathBuf) -> SecretSetting {
        SecretSetting {
            key: "[upstream] password_file".to_owned(),
            source: SecretSource::File(path),
        }
    }

    /// Lays out a Kubernetes Secret volume and swaps its data the way kubelet does.
    fn kube_swap(dir: &Path, stamp: &str, value: &str) {
        let data = dir.join(stamp);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("password"), value).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(stamp, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(DATA_LINK)).unwrap();
        if !dir.join("password").exists() {
            symlink("..data/password", dir.join("password")).unwrap();
        }
    }

    fn settings(watch: bool, poll_ms: u64) -> SecretsWatch {
        SecretsWatch {
            watch,
            poll_interval_ms: poll_ms,
            debounce_ms: 20,
        }
    }

    async fn wait_for(secret: &RotatingSecret, want: &[u8]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while secret.current().expose() != want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "value not picked up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn watcher_sees_kubelet_swaps_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        kube_swap(dir.path(), "..2026_11_26_10_00_00.000000001", "one");
        let secret = Arc::new(
            RotatingSecret::load(file(dir.path().join("password")), Duration::ZERO).unwrap(),
        );
        let stop = CancellationToken::new();
        // Polling off: only the watcher can see the change.
        spawn(vec![secret.clone()], settings(true, 0), stop.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 0..10 {
            kube_swap(
                dir.path(),
                &format!("..2026_11_26_10_00_01.{i:09}"),
                &format!("v{i}"),
            );
        }
        wait_for(&secret, b"v9").await;
        stop.cancel();
    }

    #[tokio::test]
    async fn poller_alone_sees_changes_and_keeps_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "one\n").unwrap();
        let secret = Arc::new(RotatingSecret::load(file(path.clone()), Duration::ZERO).unwrap());
        let stop = CancellationToken::new();
        spawn(vec![secret.clone()], settings(false, 20), stop.clone());
        std::fs::write(&path, "").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(secret.current().expose(), b"one");
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(secret.current().expose(), b"one");
        std::fs::write(&path, "two\n").unwrap();
        wait_for(&secret, b"two").await;
        stop.cancel();
        assert!(!RotatingSecret::fixed(Secret::new("x")).can_rotate());
    }
}
