//! Config: TOML file -> raw (serde mirror) -> validated model. Its I/O is reading the file and
//! the CA and key files it names (so nothing built from the model opens a file) and, in
//! `persist`, writing admin changes back into it. It owns the schema and the checks; it
//! may not touch runtime state (tables, endpoints, the control task).

mod diagnostic;
mod duration;
mod locate;
pub mod model;
pub mod persist;
mod raw;
mod validate;

#[cfg(test)]
pub(crate) mod fixture;
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
    let first = match toml::from_str::<raw::RawConfig>(text) {
        Ok(raw) => return validate::validate(raw, path, &source, env),
        Err(e) => e,
    };
    // serde stops at its first problem. To report every unknown key and wrong type at once,
    // the offending key is cut from a copy of the document and the copy read again, until it
    // reads or a problem cannot be cut (a syntax error, a missing table).
    let mut diagnostics = vec![serde_diagnostic(&first, path, &source, None)];
    let Some(mut doc) = first
        .span()
        .and(text.parse::<toml_edit::DocumentMut>().ok())
    else {
        return Err(ConfigErrors(diagnostics));
    };
    let mut error = first;
    let mut cut_text = text.to_owned();
    let mut only_unknown_keys = true;
    for _ in 0..MAX_SERDE_PROBLEMS {
        only_unknown_keys &= error.message().starts_with("unknown field");
        let Some(span) = error.span() else { break };
        if !locate::cut(&mut doc, &Source::new(&cut_text).path_at(&span)) {
            break;
        }
        cut_text = doc.to_string();
        error = match toml::from_str::<raw::RawConfig>(&cut_text) {
            // Unknown keys hide nothing: with them cut, the rest is checked as usual.
            Ok(raw) if only_unknown_keys => {
                if let Err(ConfigErrors(more)) = validate::validate(raw, path, &source, env) {
                    diagnostics.extend(more);
                }
                break;
            }
            // A value of the wrong type was cut; checking the rest would report it missing.
            Ok(_) => break,
            Err(e) => e,
        };
        diagnostics.push(serde_diagnostic(&error, path, &source, Some(&cut_text)));
    }
    Err(ConfigErrors(diagnostics))
}

/// A file with more unknown keys and wrong types than this reports the first ones only.
const MAX_SERDE_PROBLEMS: usize = 50;

/// `e` came from reading `cut_text`, the document with earlier problems cut (`None`: the file
/// itself); positions are given in the file as written.
fn serde_diagnostic(
    e: &toml::de::Error,
    path: &Path,
    source: &Source<'_>,
    cut_text: Option<&str>,
) -> Diagnostic {
    let (location, key_path) = match (e.span(), cut_text) {
        (Some(span), None) => (Some(source.line_col(span.start)), source.path_at(&span)),
        (Some(span), Some(cut)) => {
            let key_path = Source::new(cut).path_at(&span);
            // serde points at the key of an unknown field and at the value of a wrong type.
            let location = if e.message().starts_with("unknown field") {
                source.locate_key(&key_path)
            } else {
                source.locate(&key_path)
            };
            (location, key_path)
        }
        (None, _) => (None, KeyPath::root()),
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
