//! `hostplanectl token create|list|revoke`: the coordinator's tokens file
//! (`auth.tokens_file`), edited in place without a coordinator. The file is
//! rewritten whole through a temporary file and a rename (comments are not
//! kept); an existing file keeps its owner, group and mode (so a file the
//! `hostplane` user reads stays readable to it), a new one is 0600. The
//! coordinator reads it at start and on SIGHUP (`systemctl reload`).
use std::path::Path;

use hostplane_common::tokens::{self, Role, TokenEntry, TokensFile};

use crate::cli::{TokenCmd, TokenRole};
use crate::commands::{Out, emit};
use crate::error::Error;

pub async fn run(cmd: TokenCmd, out: &mut Out) -> Result<u8, Error> {
    // One editor at a time: two `token create` runs would each read the
    // file, add their token and write it back, and one would be lost.
    let file = match &cmd {
        TokenCmd::Create { tokens_file, .. } | TokenCmd::Revoke { tokens_file, .. } => {
            Some(tokens_file.clone())
        }
        TokenCmd::List { .. } => None,
    };
    let _lock = match &file {
        Some(f) => Some(lock(f)?),
        None => None,
    };
    match cmd {
        TokenCmd::Create {
            name,
            role,
            tokens_file,
        } => {
            let mut f = read_or_empty(&tokens_file)?;
            if name.trim().is_empty() {
                return Err(Error::Usage {
                    reason: "the token's name must not be empty".into(),
                });
            }
            if f.tokens.iter().any(|t| t.name == name) {
                return Err(Error::InvalidInput {
                    path: tokens_file.display().to_string(),
                    reason: format!("a token named {name:?} exists; revoke it first or pick another name"),
                });
            }
            let token = tokens::generate_token();
            let role = match role {
                TokenRole::Viewer => Role::Viewer,
                TokenRole::Operator => Role::Operator,
                TokenRole::Admin => Role::Admin,
            };
            f.tokens.push(TokenEntry {
                name: name.clone(),
                role,
                sha256: tokens::hash_token(&token),
            });
            write(&tokens_file, &f)?;
            eprintln!(
                "added {name} ({}) to {}; the token is shown only now — reload the coordinator (SIGHUP) to apply",
                role.name(),
                tokens_file.display()
            );
            emit(out, &format!("{token}\n")).await?;
        }
        TokenCmd::List { tokens_file } => {
            let f = load(&tokens_file)?;
            let mut text = String::from("NAME\tROLE\n");
            for t in &f.tokens {
                text.push_str(&format!("{}\t{}\n", t.name, t.role.name()));
            }
            emit(out, &text).await?;
        }
        TokenCmd::Revoke { name, tokens_file } => {
            let mut f = load(&tokens_file)?;
            let before = f.tokens.len();
            f.tokens.retain(|t| t.name != name);
            if f.tokens.len() == before {
                return Err(Error::InvalidInput {
                    path: tokens_file.display().to_string(),
                    reason: format!("no token named {name:?}"),
                });
            }
            write(&tokens_file, &f)?;
            emit(
                out,
                &format!("revoked {name}; reload the coordinator (SIGHUP) to apply\n"),
            )
            .await?;
        }
    }
    Ok(crate::error::exit::OK)
}

/// An exclusive lock on `<file>.lock` beside the tokens file (kept, empty),
/// held until dropped; a second editor waits for it.
fn lock(path: &Path) -> Result<std::fs::File, Error> {
    let lock_path = path.with_extension("lock");
    let fail = |e: std::io::Error| Error::InvalidInput {
        path: path.display().to_string(),
        reason: format!("cannot lock {}: {e}", lock_path.display()),
    };
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(fail)?;
    f.lock().map_err(fail)?;
    Ok(f)
}

fn load(path: &Path) -> Result<TokensFile, Error> {
    tokens::load(path).map_err(|e| Error::InvalidInput {
        path: path.display().to_string(),
        reason: e.reason,
    })
}

fn read_or_empty(path: &Path) -> Result<TokensFile, Error> {
    if path.exists() {
        load(path)
    } else {
        Ok(TokensFile::default())
    }
}

/// Replace the file atomically: a temporary file beside it with the old
/// file's owner, group and mode (0600 for a new file), then a rename.
fn write(path: &Path, f: &TokensFile) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let fail = |e: String| Error::InvalidInput {
        path: path.display().to_string(),
        reason: e,
    };
    let text = serde_norway::to_string(f).map_err(|e| fail(e.to_string()))?;
    let text =
        format!("# hostplane admin tokens (SHA-256 of each token); edit with `hostplanectl token`.\n{text}");
    let old = std::fs::metadata(path).ok();
    let mode = old.as_ref().map_or(0o600, |m| m.mode() & 0o7777);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let cant = |e: std::io::Error| fail(format!("cannot write {}: {e}", tmp.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(cant)?;
    let written = (|| {
        if let Some(m) = &old {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(cant(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| fail(format!("cannot replace the file: {e}")))
}
