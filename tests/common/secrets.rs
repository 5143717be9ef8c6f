//! A directory laid out as kubelet lays out a Secret volume, updated the way kubelet
//! updates it, for the secret-rotation tests.

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A directory laid out as kubelet lays out a Secret volume: `..data` is a symlink to a
/// timestamped directory holding the keys, and each key is a symlink `key -> ..data/key`.
/// `update` swaps in new data exactly as kubelet does.
pub struct KubeSecretDir {
    dir: TempDir,
    generation: u32,
}

impl KubeSecretDir {
    /// A volume with the given keys (values written without a trailing newline, as
    /// Kubernetes does).
    pub fn new(keys: &[(&str, &[u8])]) -> KubeSecretDir {
        let dir = tempfile::Builder::new()
            .prefix("ambassador-secret-")
            .tempdir()
            .expect("tempdir");
        let mut volume = KubeSecretDir { dir, generation: 0 };
        volume.update(keys);
        for (key, _) in keys {
            std::os::unix::fs::symlink(format!("..data/{key}"), volume.dir.path().join(key))
                .unwrap();
        }
        volume
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The path of a key (the symlink an application reads).
    pub fn key(&self, key: &str) -> PathBuf {
        self.dir.path().join(key)
    }

    /// kubelet's atomic update: write the new data into a fresh `..<timestamp>` directory,
    /// point `..data_tmp` at it, rename `..data_tmp` over `..data`, remove the old data.
    pub fn update(&mut self, keys: &[(&str, &[u8])]) {
        self.generation += 1;
        let stamp = format!("..2026_11_26_10_00_00.{:09}", self.generation);
        let new = self.dir.path().join(&stamp);
        fs::create_dir(&new).unwrap();
        for (key, value) in keys {
            fs::write(new.join(key), value).unwrap();
        }
        let data = self.dir.path().join("..data");
        let old = fs::read_link(&data).ok();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        fs::rename(&tmp, &data).unwrap();
        if let Some(old) = old {
            let _ = fs::remove_dir_all(self.dir.path().join(old));
        }
    }
}
