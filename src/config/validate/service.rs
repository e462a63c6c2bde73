//! One `[services.NAME]`: strategy rules, weights, keys, overrides and the blue-green settings.

use std::path::Path;
use std::time::Duration;

use indexmap::IndexMap;
use regex::Regex;

use super::{Checker, pool, sections};
use crate::config::diagnostic::{KeyPath, one_line};
use crate::config::model::{
    HeaderEquals, KeySource, Mirror, Override, Pool, Service, Strategy, ValueMatch,
};
use crate::config::raw::{RawKeySource, RawOverride, RawPreviewHeader, RawService, RawStrategy};

/// Keeps bucket arithmetic far from overflow (a u64 total of u32s) and catches typos like 1e9.
const MAX_WEIGHT: i64 = 1_000_000;

/// Checks one `[services.NAME]`; `None` when it cannot be built (a diagnostic says why).
pub(super) fn service(
    ck: &mut Checker<'_>,
    name: &str,
    raw: RawService,
    dir: &Path,
) -> Option<Service> {
    let p = KeyPath::root().key("services").key(name);
    check_name(ck, &p, "service", name);
    let strategy = ck
        .required(&p.key("strategy"), raw.strategy)
        .map(|s| match s {
            RawStrategy::Canary => Strategy::Canary,
            RawStrategy::Ab => Strategy::Ab,
            RawStrategy::BlueGreen => Strategy::BlueGreen,
        });

    let pools_path = p.key("pools");
    if raw.pools.is_empty() {
        ck.error(&pools_path, "at least one pool is required");
    }
    let mut pools = IndexMap::with_capacity(raw.pools.len());
    for (pool_name, raw_pool) in raw.pools {
        let built = pool::pool(ck, &pools_path.key(&pool_name), &pool_name, raw_pool, dir);
        pools.insert(pool_name, built);
    }
    let names = Names(pools.keys().map(String::as_str).collect());

    let blue_green = strategy == Some(Strategy::BlueGreen);
    let not_blue_green = |ck: &mut Checker<'_>, key: &str, present: bool| {
        if blue_green && present {
            ck.error(&p.key(key), "not used by blue-green");
        }
    };
    not_blue_green(ck, "weights", raw.weights.is_some());
    not_blue_green(ck, "hash_key", raw.hash_key.is_some());
    not_blue_green(ck, "affinity_cookie", raw.affinity_cookie.is_some());
    not_blue_green(ck, "rollout", raw.rollout.is_some());
    let only_blue_green = |ck: &mut Checker<'_>, key: &str, present: bool| {
        if !blue_green && strategy.is_some() && present {
            ck.error(&p.key(key), "only used by strategy \"blue-green\"");
        }
    };
    only_blue_green(ck, "active", raw.active.is_some());
    only_blue_green(ck, "preview_header", raw.preview_header.is_some());
    only_blue_green(ck, "prepromotion_checks", raw.prepromotion_checks.is_some());

    let weights = match strategy {
        Some(Strategy::Canary | Strategy::Ab) => weights(ck, &p, raw.weights, &names),
        _ => IndexMap::new(),
    };
    let hash_key = if blue_green {
        None
    } else {
        match raw.hash_key {
            Some(key) => key_source(ck, &p.key("hash_key"), key),
            None => {
                if strategy == Some(Strategy::Ab) {
                    ck.error(
                        &p.key("hash_key"),
                        "required for strategy \"ab\": users must keep their variant",
                    );
                }
                None
            }
        }
    };
    let affinity_cookie = match (&raw.affinity_cookie, blue_green) {
        (Some(cookie), false) => ck.cookie_name(&p.key("affinity_cookie"), cookie),
        _ => None,
    };
    let affinity_max_age = ck.duration(
        &p.key("affinity_max_age"),
        raw.affinity_max_age.as_deref(),
        Duration::from_secs(24 * 3600),
        false,
    );
    let hold_timeout = ck.duration(
        &p.key("hold_timeout"),
        raw.hold_timeout.as_deref(),
        Duration::ZERO,
        false,
    );

    let overrides: Vec<Override> = raw
        .overrides
        .into_iter()
        .enumerate()
        .filter_map(|(i, o)| override_(ck, &p.key("overrides").index(i), o, &names))
        .collect();

    let mut active = None;
    let mut preview_header = None;
    let mut prepromotion_checks = Vec::new();
    if blue_green {
        if pools.len() != 2 && !pools.is_empty() {
            ck.error(
                &pools_path,
                format!(
                    "blue-green needs exactly two pools, found {} ({})",
                    pools.len(),
                    names.list()
                ),
            );
        }
        active = ck
            .required(&p.key("active"), raw.active)
            .and_then(|a| names.check(ck, &p.key("active"), a));
        preview_header = raw
            .preview_header
            .and_then(|h| header_equals(ck, &p.key("preview_header"), h));
        for (i, check) in raw
            .prepromotion_checks
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            prepromotion_checks.push(ck.url_path(&p.key("prepromotion_checks").index(i), check));
        }
    }

    let health = raw
        .health
        .map(|h| sections::health(ck, &p.key("health"), h));
    let outlier = raw
        .outlier
        .map(|o| sections::outlier(ck, &p.key("outlier"), o));
    let rollout = match (raw.rollout, strategy) {
        (Some(r), Some(Strategy::Canary)) => sections::rollout(ck, &p, r, &names, &weights),
        (Some(_), Some(Strategy::Ab)) => {
            ck.error(&p.key("rollout"), "only for strategy \"canary\"");
            None
        }
        _ => None,
    };
    let mirror = raw
        .mirror
        .and_then(|m| sections::mirror(ck, &p.key("mirror"), m, &names));

    if matches!(strategy, Some(Strategy::Canary | Strategy::Ab)) && !weights.is_empty() {
        warn_unweighted(ck, &p, &pools, &weights, &overrides, mirror.as_ref());
    }

    Some(Service {
        name: name.to_owned(),
        strategy: strategy?,
        pools,
        weights,
        hash_key,
        hash_salt: raw.hash_salt.unwrap_or_default(),
        affinity_cookie,
        affinity_max_age,
        failover: raw.failover.unwrap_or(true),
        hold_timeout,
        overrides,
        active,
        preview_header,
        prepromotion_checks,
        health,
        outlier,
        rollout,
        mirror,
    })
}

/// Service and pool names end up in admin URLs, metric labels and the pool header value.
pub(super) fn check_name(ck: &mut Checker<'_>, p: &KeyPath, kind: &str, name: &str) {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        ck.error(
            p,
            format!("invalid {kind} name {name:?}: use letters, digits, '_', '-' and '.'"),
        );
    }
}

/// A service's pool names, for reference checks and messages.
pub(super) struct Names<'a>(Vec<&'a str>);

impl Names<'_> {
    pub(super) fn list(&self) -> String {
        self.0.join(", ")
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.contains(&name)
    }

    pub(super) fn unknown(&self, name: &str) -> String {
        format!("unknown pool {name:?} (pools: {})", self.list())
    }

    /// `name` if it is one of the pools, else a diagnostic at `p`.
    pub(super) fn check(&self, ck: &mut Checker<'_>, p: &KeyPath, name: String) -> Option<String> {
        if self.contains(&name) {
            Some(name)
        } else {
            ck.error(p, self.unknown(&name));
            None
        }
    }
}

// === weights and keys ===

fn weights(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    raw: Option<IndexMap<String, toml::Value>>,
    names: &Names<'_>,
) -> IndexMap<String, u32> {
    let wp = p.key("weights");
    let Some(raw) = ck.required(&wp, raw) else {
        return IndexMap::new();
    };
    if raw.is_empty() {
        ck.error(&wp, "at least one pool weight is required");
        return IndexMap::new();
    }
    let mut weights = IndexMap::with_capacity(raw.len());
    let mut total: u64 = 0;
    let mut all_valid = true;
    for (pool, value) in raw {
        if !names.contains(&pool) {
            // A misspelt pool is reported at the weights table as a whole (where the fix goes).
            ck.error(&wp, names.unknown(&pool));
            all_valid = false;
            continue;
        }
        let weight = match value {
            toml::Value::Integer(n) if (0..=MAX_WEIGHT).contains(&n) => u32::try_from(n).ok(),
            toml::Value::Integer(n) => {
                ck.error(
                    &wp.key(&pool),
                    format!("weight must be between 0 and {MAX_WEIGHT}, not {n}"),
                );
                None
            }
            other => {
                ck.error(
                    &wp.key(&pool),
                    format!(
                        "weight must be an integer, not {} {other}",
                        article(other.type_str())
                    ),
                );
                None
            }
        };
        match weight {
            Some(w) => {
                total += u64::from(w);
                weights.insert(pool, w);
            }
            None => all_valid = false,
        }
    }
    // A zero sum is only meaningful to report when every entry was readable.
    if all_valid && total == 0 {
        ck.error(&wp, "weights must sum to more than 0");
    }
    weights
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// Exactly one of `header` / `cookie`.
fn source(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    header: Option<String>,
    cookie: Option<String>,
) -> Option<KeySource> {
    match (header, cookie) {
        (Some(h), None) => ck.header_name(&p.key("header"), &h).map(KeySource::Header),
        (None, Some(c)) => ck.cookie_name(&p.key("cookie"), &c).map(KeySource::Cookie),
        (Some(_), Some(_)) => {
            ck.error(p, "set exactly one of header or cookie, not both");
            None
        }
        (None, None) => {
            ck.error(p, "set exactly one of header or cookie");
            None
        }
    }
}

fn key_source(ck: &mut Checker<'_>, p: &KeyPath, raw: RawKeySource) -> Option<KeySource> {
    source(ck, p, raw.header, raw.cookie)
}

fn override_(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    raw: RawOverride,
    names: &Names<'_>,
) -> Option<Override> {
    let source = source(ck, p, raw.header, raw.cookie);
    let given = [
        raw.equals.is_some(),
        raw.matches.is_some(),
        raw.present.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    let matcher = if given != 1 {
        ck.error(
            p,
            "set exactly one of equals, matches or present (present = true)",
        );
        None
    } else if let Some(equals) = raw.equals {
        Some(ValueMatch::Equals(equals))
    } else if let Some(pattern) = raw.matches {
        match Regex::new(&pattern) {
            Ok(regex) => Some(ValueMatch::Matches(regex)),
            Err(e) => {
                ck.error(
                    &p.key("matches"),
                    format!("invalid regex: {}", regex_error(&e)),
                );
                None
            }
        }
    } else if raw.present == Some(true) {
        Some(ValueMatch::Present)
    } else {
        ck.error(
            &p.key("present"),
            "must be true (an override cannot match on absence)",
        );
        None
    };
    let pool = ck
        .required(&p.key("pool"), raw.pool)
        .and_then(|pool| names.check(ck, &p.key("pool"), pool));
    Some(Override {
        source: source?,
        matcher: matcher?,
        pool: pool?,
    })
}

/// regex's syntax errors are a multi-line drawing; its last line says what is wrong.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    match text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
    {
        Some(reason) => reason.to_owned(),
        None => one_line(&text),
    }
}

fn header_equals(ck: &mut Checker<'_>, p: &KeyPath, raw: RawPreviewHeader) -> Option<HeaderEquals> {
    let name = ck
        .required(&p.key("name"), raw.name)
        .and_then(|n| ck.header_name(&p.key("name"), &n));
    let equals = ck.required(&p.key("equals"), raw.equals);
    Some(HeaderEquals {
        name: name?,
        equals: equals?,
    })
}

fn warn_unweighted(
    ck: &mut Checker<'_>,
    p: &KeyPath,
    pools: &IndexMap<String, Pool>,
    weights: &IndexMap<String, u32>,
    overrides: &[Override],
    mirror: Option<&Mirror>,
) {
    for name in pools.keys() {
        // Pools reached only by an override or used as a mirror target are unweighted on purpose.
        let used_otherwise =
            overrides.iter().any(|o| &o.pool == name) || mirror.is_some_and(|m| &m.pool == name);
        if !weights.contains_key(name) && !used_otherwise {
            ck.warnings.push(format!(
                "{}: pool {name:?} has no weight entry, so it gets weight 0",
                p.key("weights")
            ));
        }
    }
}
