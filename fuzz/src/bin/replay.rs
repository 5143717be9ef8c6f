//! Runs fuzz inputs through the same property checks as the libFuzzer targets, without
//! libFuzzer: works on a stable toolchain with plain `cargo run`.
//!
//!     cargo run --release --bin replay -- <request_scanner|reply_scanner|session> <file-or-dir>...
//!
//! Directories are read one level deep (a libFuzzer corpus). A failed property panics and
//! names the file; the exit status is then non-zero.

use std::path::{Path, PathBuf};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: replay <request_scanner|reply_scanner|session> <file-or-dir>...");
        std::process::exit(2);
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for arg in args {
        let path = Path::new(&arg);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .unwrap_or_else(|e| panic!("{arg}: {e}"))
                .map(|e| e.expect("directory entry").path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path.to_path_buf());
        }
    }
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        eprintln!("{}: {} bytes", file.display(), data.len());
        ambassador_fuzz::check(&target, &data);
    }
    eprintln!("{target}: {} inputs, all properties hold", files.len());
}
