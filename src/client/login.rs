//! Where `tenure login` keeps a token for the client commands: one file,
//! `$XDG_CONFIG_HOME/tenure/credentials.json` (else `~/.config/tenure/...`), a JSON object of
//! server URL to token, written whole to a new file of mode 0600 (in a directory of mode 0700)
//! and renamed into place, so no other user can read it and no reader sees half of it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::secret::Secret;

/// The credentials file: `$XDG_CONFIG_HOME/tenure/credentials.json`, else under `$HOME/.config`.
pub fn credentials_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?).join(".config")
        }
    };
    Ok(base.join("tenure").join("credentials.json"))
}

/// The server as the file keys it: without a trailing slash.
fn key(server: &str) -> String {
    server.trim_end_matches('/').to_owned()
}

fn read_all(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a credentials file", path.display()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(error).with_context(|| format!("read {}", path.display())),
    }
}

/// The token stored for `server`, if any.
pub fn stored_token(path: &Path, server: &str) -> anyhow::Result<Option<Secret>> {
    Ok(read_all(path)?.remove(&key(server)).map(Secret::new))
}

/// Store `token` for `server` (replacing one stored before), mode 0600.
pub fn store_token(path: &Path, server: &str, token: &str) -> anyhow::Result<()> {
    let mut all = read_all(path)?;
    all.insert(key(server), token.to_owned());
    let dir = path.parent().context("the credentials file has no directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let temporary = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(&all).expect("a map of strings serialises"))?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stored_token_is_found_by_its_server_in_a_file_only_its_owner_reads() {
        let dir = std::env::temp_dir().join(format!("tenure-login-{}", std::process::id()));
        let path = dir.join("tenure").join("credentials.json");
        store_token(&path, "http://a:8080/", "one").unwrap();
        store_token(&path, "http://b:8080", "two").unwrap();
        store_token(&path, "http://a:8080", "three").unwrap();
        assert_eq!(stored_token(&path, "http://a:8080").unwrap().unwrap().expose(), "three");
        assert_eq!(stored_token(&path, "http://b:8080/").unwrap().unwrap().expose(), "two");
        assert!(stored_token(&path, "http://c:8080").unwrap().is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
