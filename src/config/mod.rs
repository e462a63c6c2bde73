//! Config: TOML file -> raw (serde mirror) -> validated model. Its I/O is reading the file and,
//! in `persist`, writing admin changes back into it.

mod diagnostic;
mod duration;
mod locate;
pub mod model;
pub mod persist;
mod raw;
mod validate;

#[cfg(test)]
mod persist_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use diagnostic::{ConfigErrors, Diagnostic};
pub use duration::{format_duration, parse_duration};
pub use model::*;

use diagnostic::{KeyPath, one_line};
use locate::Source;

/// Reads and validates the config file at `path`; `token_env` is read from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors(vec![Diagnostic {
            file: path.to_path_buf(),
            line: None,
            col: None,
            key_path: String::new(),
            message: format!("cannot read config file: {e}"),
        }])),
    }
}

/// Validates config `text`; `path` names the file in diagnostics and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    parse_with_env(text, path, &|name| std::env::var(name).ok())
}

/// [`parse`] with the environment passed in, so tests need not set process variables.
pub fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let source = Source::new(text);
    match toml::from_str::<raw::RawConfig>(text) {
        Ok(raw) => validate::validate(raw, path, &source, env),
        // serde stops at its first problem (syntax, unknown key, wrong type): one diagnostic.
        Err(e) => Err(ConfigErrors(vec![serde_diagnostic(&e, path, &source)])),
    }
}

fn serde_diagnostic(e: &toml::de::Error, path: &Path, source: &Source<'_>) -> Diagnostic {
    let (location, key_path) = match e.span() {
        Some(span) => (Some(source.line_col(span.start)), source.path_at(&span)),
        None => (None, KeyPath::root()),
    };
    Diagnostic {
        file: path.to_path_buf(),
        line: location.map(|(line, _)| line),
        col: location.map(|(_, col)| col),
        key_path: key_path.to_string(),
        // serde names Rust types; the config speaks TOML.
        message: one_line(e.message())
            .replace("expected i64", "expected an integer")
            .replace("expected f64", "expected a number"),
    }
}
