//! Raw results as JSON: every run of every system, as measured.

use std::path::{Path, PathBuf};

use crate::model::SuiteResult;

/// Errors writing the JSON file.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("encoding results: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// Writes `r` to `path` (pretty-printed).
pub fn write(path: &Path, r: &SuiteResult) -> Result<(), JsonError> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text).map_err(|e| JsonError::Write(path.into(), e))
}
