//! Admin API bearer tokens: the tokens file the coordinator reads
//! (`auth.tokens_file`) and `hostplanectl token create` writes.
//!
//! ```yaml
//! tokens:
//!   - {name: alice, role: admin, sha256: <64 hex digits>}
//! ```
//! Only the SHA-256 of a token is stored (`printf %s "$TOKEN" | sha256sum`);
//! the token itself is shown once, when it is made.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// What a token may do: `viewer` reads and watches, `operator` also approves
/// maintenance, marks nodes rebooted and reprovisions, `admin` does everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<TokenEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// Lower-case hex SHA-256 of the token.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
#[error("tokens file {path}: {reason}")]
pub struct TokensError {
    pub path: PathBuf,
    pub reason: String,
}

/// The stored form of a token: lower-case hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes from the OS-seeded CSPRNG, hex (64 characters).
pub fn generate_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Parse and check a tokens file's text: every hash 64 hex digits (stored
/// lower-case), names non-empty and unique, no hash twice.
pub fn parse(path: &Path, text: &str) -> Result<TokensFile, TokensError> {
    let fail = |reason: String| TokensError {
        path: path.to_path_buf(),
        reason,
    };
    let mut f: TokensFile = serde_norway::from_str(text).map_err(|e| fail(e.to_string()))?;
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, t) in f.tokens.iter_mut().enumerate() {
        t.sha256 = t.sha256.trim().to_ascii_lowercase();
        if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(format!(
                "tokens[{i}] ({}): sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                t.name
            )));
        }
        if t.name.is_empty() || !names.insert(t.name.clone()) {
            return Err(fail(format!(
                "tokens[{i}]: name {:?} is empty or repeated",
                t.name
            )));
        }
        if !hashes.insert(t.sha256.clone()) {
            return Err(fail(format!(
                "tokens[{i}] ({}): the same token hash appears twice",
                t.name
            )));
        }
    }
    Ok(f)
}

/// Read and check a tokens file.
pub fn load(path: &Path) -> Result<TokensFile, TokensError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokensError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.yaml")
    }

    #[test]
    fn errors_name_the_entry() {
        let e = parse(p(), "tokens:\n  - {name: a, role: admin, sha256: abc}\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("tokens[0] (a): sha256 must be 64 hex digits"),
            "{e}"
        );
        let h = hash_token("t");
        let dup = format!(
            "tokens:\n  - {{name: a, role: admin, sha256: {h}}}\n  - {{name: a, role: viewer, sha256: {h}}}\n"
        );
        assert!(parse(p(), &dup).unwrap_err().to_string().contains("repeated"));
        let twice = format!(
            "tokens:\n  - {{name: a, role: admin, sha256: {h}}}\n  - {{name: b, role: viewer, sha256: {h}}}\n"
        );
        assert!(
            parse(p(), &twice)
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        let role = format!("tokens:\n  - {{name: a, role: root, sha256: {h}}}\n");
        assert!(
            parse(p(), &role)
                .unwrap_err()
                .to_string()
                .contains("unknown variant")
        );
    }

    #[test]
    fn hashes_are_stored_lower_case_and_tokens_are_random() {
        let upper = hash_token("t").to_ascii_uppercase();
        let f = parse(
            p(),
            &format!("tokens:\n  - {{name: a, role: viewer, sha256: {upper}}}\n"),
        )
        .unwrap();
        assert_eq!(f.tokens[0].sha256, hash_token("t"));
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        // sha256("abc"), a published test vector.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
