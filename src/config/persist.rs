//! Writes admin changes back into the config file with toml_edit: comments and layout kept,
//! write to a temp file + fsync + rename.
//!
//! Only what the admin API changes is written: `weights` (canary, ab), `active` (blue-green)
//! and each pool's `drained`. Every other byte of the file stays as the operator wrote it, and a
//! file that already holds the live state comes back byte-identical, so the reload watcher can
//! recognise switchyard's own writes.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use toml_edit::{Decor, DocumentMut, InlineTable, Item, Key, Table, TableLike, Value};

use super::diagnostic::KeyPath;
use super::model::{Config, Service, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        source: toml_edit::TomlError,
    },
    /// The file no longer has the place a live value belongs (e.g. the service's table is gone,
    /// or its strategy was edited): writing would guess at the operator's intent.
    #[error("config file {path} changed shape: {key_path}: {problem}")]
    Shape {
        path: PathBuf,
        key_path: String,
        problem: String,
    },
    /// `step` says how far the atomic replace got; the original file is untouched.
    #[error("cannot write config file {path} ({step}): {source}")]
    Write {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
}

/// The part of one service that admin calls change at run time, borrowed from the live model:
/// exactly what [`render`] writes. Comparing the splits of the live config and of the config
/// re-read from the file tells whether the live state is persisted.
#[derive(Debug, Clone)]
pub struct LiveSplit<'a> {
    pub service: &'a str,
    pub strategy: Strategy,
    /// Canary and ab, in bucket order; empty for blue-green.
    pub weights: &'a IndexMap<String, u32>,
    /// Blue-green only.
    pub active: Option<&'a str>,
    /// Every pool, in file order, with its drained endpoints (often none).
    pub drained: Vec<(&'a str, &'a [String])>,
}

// === impl LiveSplit ===

impl<'a> LiveSplit<'a> {
    pub fn of(service: &'a Service) -> Self {
        LiveSplit {
            service: &service.name,
            strategy: service.strategy,
            weights: &service.weights,
            active: service.active.as_deref(),
            drained: service
                .pools
                .iter()
                .map(|(name, pool)| (name.as_str(), pool.drained.as_slice()))
                .collect(),
        }
    }

    /// One split per service, in file order.
    pub fn all(config: &'a Config) -> Vec<Self> {
        config.services.values().map(LiveSplit::of).collect()
    }
}

/// Weights are compared in order: the order decides which pool owns which buckets, and
/// `IndexMap`'s own `==` ignores it.
impl PartialEq for LiveSplit<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service
            && self.strategy == other.strategy
            && self.weights.iter().eq(other.weights.iter())
            && self.active == other.active
            && self.drained == other.drained
    }
}

impl Eq for LiveSplit<'_> {}

// === render ===

/// The text of `original` with `config`'s live weights, active pools and drains written in.
/// Returns `original` itself (byte-identical) when it already holds them. Pure: no I/O;
/// `config.path` only names the file in errors.
pub fn render(original: &str, config: &Config) -> Result<String, PersistError> {
    let mut doc: DocumentMut = original.parse().map_err(|source| PersistError::Parse {
        path: config.path.clone(),
        source,
    })?;
    let mut changed = false;
    for split in LiveSplit::all(config) {
        changed |=
            write_service(doc.as_table_mut(), &split).map_err(|shape| PersistError::Shape {
                path: config.path.clone(),
                key_path: shape.key_path.to_string(),
                problem: shape.problem,
            })?;
    }
    // Re-encoding an untouched document is faithful in practice but not promised; the watcher
    // needs a promise.
    if !changed {
        return Ok(original.to_owned());
    }
    let text = doc.to_string();
    // toml_edit writes every line ending as "\n"; a CRLF file (edited on Windows) must not
    // turn into a whole-file diff.
    Ok(if original.contains("\r\n") {
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    } else {
        text
    })
}

/// A place in the document that is missing or of the wrong kind.
struct Shape {
    key_path: KeyPath,
    problem: String,
}

impl Shape {
    fn new(key_path: KeyPath, problem: impl Into<String>) -> Self {
        Shape {
            key_path,
            problem: problem.into(),
        }
    }
}

/// Writes one service; `Ok(true)` when anything changed.
fn write_service(root: &mut Table, split: &LiveSplit<'_>) -> Result<bool, Shape> {
    let services = child_table(root, "services", &KeyPath::root().key("services"))?;
    let p = KeyPath::root().key("services").key(split.service);
    let service = child_table(services, split.service, &p)?;

    let live = split.strategy.as_str();
    match service.get("strategy").and_then(Item::as_str) {
        Some(written) if written == live => {}
        Some(written) => {
            return Err(Shape::new(
                p.key("strategy"),
                format!("the file says {written:?}, the live service is {live:?}"),
            ));
        }
        None => return Err(Shape::new(p.key("strategy"), "missing or not a string")),
    }

    let mut changed = false;
    match split.strategy {
        Strategy::Canary | Strategy::Ab => {
            changed |= write_weights(service, split.weights, &p.key("weights"))?;
        }
        Strategy::BlueGreen => {
            if let Some(active) = split.active {
                changed |= set_value(service, "active", Value::from(active));
            }
        }
    }

    let pools_path = p.key("pools");
    let pools = child_table(service, "pools", &pools_path)?;
    for (pool, drained) in &split.drained {
        let table = child_table(pools, pool, &pools_path.key(pool))?;
        changed |= write_drained(table, drained);
    }
    Ok(changed)
}

/// The table (`[a.b]` header, dotted keys or inline) at `key` of `parent`.
fn child_table<'t>(
    parent: &'t mut dyn TableLike,
    key: &str,
    p: &KeyPath,
) -> Result<&'t mut dyn TableLike, Shape> {
    match parent.get_mut(key) {
        None => Err(Shape::new(p.clone(), "not found in the file")),
        Some(item) => item
            .as_table_like_mut()
            .ok_or_else(|| Shape::new(p.clone(), "is not a table")),
    }
}

// === weights ===

/// Makes the file's weights equal `live`, in `live`'s order: numbers change in place (keeping
/// each value's spacing and comments), pools new to the split are appended, pools gone from
/// it are removed, and the inline-or-table form stays as written.
fn write_weights(
    service: &mut dyn TableLike,
    live: &IndexMap<String, u32>,
    p: &KeyPath,
) -> Result<bool, Shape> {
    match service.get_mut("weights") {
        Some(Item::Value(Value::InlineTable(table))) => Ok(write_inline_weights(table, live)),
        Some(Item::Table(table)) => Ok(write_table_weights(table, live)),
        Some(_) => Err(Shape::new(p.clone(), "is not a table")),
        // Required for this strategy, so the file is mid-edit; the live split is still valid.
        None => {
            let table: InlineTable = live
                .iter()
                .map(|(pool, weight)| (pool.as_str(), i64::from(*weight)))
                .collect();
            service.insert("weights", Item::Value(Value::InlineTable(table)));
            Ok(true)
        }
    }
}

fn write_table_weights(table: &mut Table, live: &IndexMap<String, u32>) -> bool {
    let mut changed = sync_entries(table, live);
    if !in_live_order(table, live) {
        table.sort_values_by(|a, _, b, _| live_order(live, a, b));
        changed = true;
    }
    changed
}

fn write_inline_weights(table: &mut InlineTable, live: &IndexMap<String, u32>) -> bool {
    let old_keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    let spacing = Spacing::of(table);
    let mut changed = sync_entries(table, live);
    if !in_live_order(table, live) {
        table.sort_values_by(|a, _, b, _| live_order(live, a, b));
        changed = true;
    }
    if changed
        && !table
            .iter()
            .map(|(k, _)| k)
            .eq(old_keys.iter().map(String::as_str))
    {
        spacing.apply(table);
    }
    changed
}

/// An inline table's spacing by position. `{ a = 1, b = 2 }` spaces its first key, the other
/// keys and its last value differently, so when entries move or are added each takes the
/// spacing of its new place: no `{b = 2 ,  a = 1 }`, no `2 , c = 3}`.
struct Spacing {
    keys: Vec<Decor>,
    values: Vec<Decor>,
}

impl Spacing {
    fn of(table: &InlineTable) -> Self {
        let (keys, values) = table
            .iter()
            .map(|(k, v)| {
                let key = table.key(k).map(|k| k.leaf_decor().clone());
                (key.unwrap_or_default(), v.decor().clone())
            })
            .unzip();
        Spacing { keys, values }
    }

    fn apply(&self, table: &mut InlineTable) {
        let (Some(last_key), Some(last_value)) = (self.keys.last(), self.values.last()) else {
            return; // it was empty: toml_edit's defaults are all there is
        };
        let n = self.values.len();
        let last = table.len().saturating_sub(1);
        for (i, (mut key, value)) in table.iter_mut().enumerate() {
            *key.leaf_decor_mut() = self.keys.get(i).unwrap_or(last_key).clone();
            *value.decor_mut() = if i == last {
                last_value.clone()
            } else if i + 1 < n {
                self.values[i].clone()
            } else if n >= 2 {
                self.values[n - 2].clone()
            } else {
                // Only a last value was seen: keep the space after `=`, drop the one before `}`.
                let prefix = last_value.prefix().cloned().unwrap_or_default();
                Decor::new(prefix, "")
            };
        }
    }
}

/// Whether `table`'s keys are `live`'s, in `live`'s order.
fn in_live_order(table: &dyn TableLike, live: &IndexMap<String, u32>) -> bool {
    table
        .iter()
        .map(|(k, _)| k)
        .eq(live.keys().map(String::as_str))
}

fn live_order(live: &IndexMap<String, u32>, a: &Key, b: &Key) -> Ordering {
    live.get_index_of(a.get()).cmp(&live.get_index_of(b.get()))
}

/// Removes keys not in `live`, sets the others' numbers, appends missing ones. Order is left
/// to the caller.
fn sync_entries(table: &mut dyn TableLike, live: &IndexMap<String, u32>) -> bool {
    let stale: Vec<String> = table
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| !live.contains_key(k))
        .collect();
    let mut changed = !stale.is_empty();
    for key in stale {
        table.remove(&key);
    }
    for (pool, weight) in live {
        changed |= set_value(table, pool, Value::from(i64::from(*weight)));
    }
    changed
}

// === values ===

/// Sets `key` to `new` unless it already holds an equal value (so `0x5f` stays `0x5f`).
/// An existing value keeps its decor: the spaces around it and a trailing comment.
fn set_value(table: &mut dyn TableLike, key: &str, new: Value) -> bool {
    match table.get_mut(key) {
        Some(Item::Value(old)) if same_value(old, &new) => false,
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
            true
        }
        Some(other) => {
            *other = Item::Value(new);
            true
        }
        None => {
            table.insert(key, Item::Value(new));
            true
        }
    }
}

/// Equal as TOML data, whatever the spelling (`95` and `0x5f`, `"a"` and `'a'`).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| same_value(a, b))
        }
        _ => false,
    }
}

// === drained ===

/// `drained = [...]` when the pool has drained endpoints; no key at all when it has none.
fn write_drained(pool: &mut dyn TableLike, drained: &[String]) -> bool {
    if drained.is_empty() {
        return pool.remove("drained").is_some();
    }
    let list: toml_edit::Array = drained.iter().map(String::as_str).collect();
    set_value(pool, "drained", Value::Array(list))
}

// === write_back ===

/// Reads the config file at `path`, [`render`]s `config` into it and atomically replaces it;
/// returns the file's new text. A file that already holds the live state is not rewritten.
///
/// Symlinks are resolved first, so with a Kubernetes ConfigMap (`config.toml -> ..data/...`)
/// the target is replaced and the link stays a link. On any error the original file is
/// untouched and no temp file is left behind.
pub fn write_back(path: &Path, config: &Config) -> Result<String, PersistError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PersistError::Read { path, source }
    };
    let target = fs::canonicalize(path).map_err(read_error(path))?;
    let original = fs::read_to_string(&target).map_err(read_error(&target))?;
    let text = render(&original, config)?;
    if text != original {
        replace(&target, &text)?;
    }
    Ok(text)
}

/// Replaces `target` with `text`: `.<name>.tmp-<pid>` in the same directory (a rename is
/// only atomic within one filesystem), fsync, rename, then fsync the directory.
fn replace(target: &Path, text: &str) -> Result<(), PersistError> {
    let fail = |step: &'static str| {
        move |source| PersistError::Write {
            path: target.to_path_buf(),
            step,
            source,
        }
    };
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(fail("find its directory")(io::Error::from(
            io::ErrorKind::InvalidInput,
        )));
    };
    // A read-only file is the operator saying "do not write": honoured even as root, who
    // could rename over it anyway.
    if fs::metadata(target).is_ok_and(|m| m.permissions().readonly()) {
        return Err(fail("write it: the file is read-only")(io::Error::from(
            io::ErrorKind::PermissionDenied,
        )));
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // In a container the pid is often the same after a restart, so a crash mid-write can
    // leave a temp file with our name; it is ours to remove.
    let _ = fs::remove_file(&tmp);
    let written = write_temp(target, &tmp, text)
        .map_err(|(step, source)| fail(step)(source))
        .and_then(|()| fs::rename(&tmp, target).map_err(fail("rename the temp file over it")));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable only once the directory is; some filesystems refuse to fsync a
    // directory, and the data is already safe, so this is best effort.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Writes `text` to `path` atomically (a temp file beside it, fsync, rename), creating it if
/// need be: for switchyard's own state files, which nobody edits.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Where a single instance keeps its rollouts' progress with `admin.persist = true`: beside
/// the config file, `<file>.rollouts.json` (the step weights themselves are in the file).
pub fn rollouts_path(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_os_string();
    name.push(".rollouts.json");
    PathBuf::from(name)
}

/// Removes temp files an earlier process left beside `target` when it stopped in the middle
/// of a write (`.<name>.tmp-<pid>`): they are never read, only clutter. Returns how many.
pub fn remove_stale_temps(target: &Path) -> usize {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Creates `tmp` with `target`'s permissions (and owner, where allowed) and `text`, synced.
fn write_temp(target: &Path, tmp: &Path, text: &str) -> Result<(), (&'static str, io::Error)> {
    let meta = fs::metadata(target).map_err(|e| ("read its permissions", e))?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| ("create a temp file next to it", e))?;
    file.set_permissions(meta.permissions())
        .map_err(|e| ("set the temp file's permissions", e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, fchown};
        // Only root may give a file away; anyone else writes a file they own anyway.
        let _ = fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
    file.write_all(text.as_bytes())
        .map_err(|e| ("write the temp file", e))?;
    file.sync_all().map_err(|e| ("fsync the temp file", e))
}
