//! Small state files under `state_dir`, written atomically (temp file, fsync,
//! rename, fsync of the directory) so a crash leaves the old or the new
//! version, never a torn one. Blocking I/O runs in `spawn_blocking`.
use std::io;
use std::path::{Path, PathBuf};

use hostplane_proto::v1::DesiredState;

/// The last applied desired state.
pub const DESIRED_FILE: &str = "desired.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Replace `path` with `bytes` atomically.
pub async fn write_atomic(path: PathBuf, bytes: Vec<u8>) -> Result<(), StateError> {
    let p = path.clone();
    tokio::task::spawn_blocking(move || crate::state_file::write_atomic(&p, &bytes))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        .map_err(|source| StateError::Io { path, source })
}

/// The file's bytes, or None when it does not exist.
pub async fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The last applied desired state, if any.
pub async fn load_desired(state_dir: &Path) -> Result<Option<DesiredState>, StateError> {
    let path = state_dir.join(DESIRED_FILE);
    let Some(bytes) = read_optional(&path).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Corrupt { path, source })
}

/// Store `ds` as the last applied desired state (proto3 JSON).
pub async fn store_desired(state_dir: &Path, ds: &DesiredState) -> Result<(), StateError> {
    let path = state_dir.join(DESIRED_FILE);
    let bytes = serde_json::to_vec_pretty(ds).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    write_atomic(path, bytes).await
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Command, RebootHost, command::Action};

    use super::*;

    #[tokio::test]
    async fn desired_state_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_desired(dir.path()).await.unwrap(), None);
        let mut ds = DesiredState {
            version: 7,
            node: "n1".into(),
            commands: vec![Command {
                id: "c1".into(),
                dpu: "d1".into(),
                rshim: "rshim0".into(),
                action: Some(Action::RebootHost(RebootHost::default())),
            }],
            lease_seconds: 15,
            networks: Vec::new(),
            power: None,
        };
        store_desired(dir.path(), &ds).await.unwrap();
        assert_eq!(load_desired(dir.path()).await.unwrap().as_ref(), Some(&ds));
        ds.version = 8;
        ds.commands.clear();
        store_desired(dir.path(), &ds).await.unwrap();
        assert_eq!(load_desired(dir.path()).await.unwrap(), Some(ds));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DESIRED_FILE], "no temp file is left behind");
    }

    #[tokio::test]
    async fn corrupt_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DESIRED_FILE), "{not json").unwrap();
        let err = load_desired(dir.path()).await.unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains(DESIRED_FILE), "{err}");
    }

    #[tokio::test]
    async fn write_into_missing_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/x.json");
        let err = write_atomic(path.clone(), b"{}".to_vec()).await.unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
