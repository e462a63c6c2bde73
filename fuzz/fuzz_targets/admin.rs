//! Fuzz target: sequences of admin changes (weights bodies from raw bytes or structured JSON,
//! swaps, rollbacks, drains, rollout actions, dry runs, If-Match) applied through
//! `ControlState::change` to a fixed config. Errors (400/404/409/412) are expected; a panic
//! is a bug. After each change the live table must still agree with the live config.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use switchyard::config::{Config, Strategy};
use switchyard::control::{Change, ControlState, Guard, IfMatch, RolloutAction};

/// `admin.persist = false`: nothing is written, and the path need not exist.
const CONFIG: &str = r#"
[admin]
persist = false

[[routes]]
path_prefix = "/ab"
service = "ab"

[[routes]]
path_prefix = "/bg"
service = "bg"

[[routes]]
path_prefix = "/"
service = "shop"

[services.shop]
strategy = "canary"
weights = { stable = 95, canary = 5, spare = 0 }
affinity_cookie = "sy_bucket"

[[services.shop.overrides]]
cookie = "account"
matches = "^staff-"
pool = "canary"

[services.shop.pools.stable]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
min_available = 1

[services.shop.pools.canary]
endpoints = ["127.0.0.1:9003"]
min_available = 0

[services.shop.pools.spare]
endpoints = ["127.0.0.1:9004"]

[services.shop.rollout]
baseline = "stable"
canary = "canary"
steps = [5, 25, 100]
interval = "60s"

[services.ab]
strategy = "ab"
weights = { A = 50, B = 50 }
hash_key = { header = "x-user-id" }
hash_salt = "exp-1:"

[services.ab.pools.A]
endpoints = ["127.0.0.1:9005"]

[services.ab.pools.B]
endpoints = ["127.0.0.1:9006", "127.0.0.1:9007"]
min_available = 2

[services.bg]
strategy = "blue-green"
active = "blue"
preview_header = { name = "x-preview", equals = "true" }

[services.bg.pools.blue]
endpoints = ["127.0.0.1:9008"]

[services.bg.pools.green]
endpoints = ["127.0.0.1:9009"]
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| {
        switchyard::config::parse(CONFIG, Path::new("/nonexistent/switchyard-fuzz/admin.toml"))
            .unwrap_or_else(|e| panic!("fixed fuzz config must be valid: {e}"))
    })
}

#[derive(Arbitrary, Debug)]
enum Service {
    Shop,
    Ab,
    Bg,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Pool {
    Stable,
    Canary,
    Spare,
    A,
    B,
    Blue,
    Green,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Address {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Weight {
    Int(u64),
    Neg(i64),
    Float(f64),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    /// Any bytes, as an admin client could send.
    Raw(Vec<u8>),
    /// A JSON object of pool weights: gets past the JSON parser to the checks behind it.
    Weights(Vec<(Pool, Weight)>),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Start,
    Pause,
    Resume,
    Promote,
    Abort,
}

#[derive(Arbitrary, Debug)]
enum Op {
    SetWeights(Service, Body),
    Swap(Service, Option<Pool>),
    Rollback(Service),
    Drain(Service, Pool, Address, bool),
    Rollout(Service, Action),
}

#[derive(Arbitrary, Debug)]
struct Step {
    op: Op,
    dry_run: bool,
    /// None: no If-Match; Some(None): malformed; Some(Some(g)): generation g.
    if_match: Option<Option<u8>>,
}

fn service(s: &Service) -> String {
    match s {
        Service::Shop => "shop".into(),
        Service::Ab => "ab".into(),
        Service::Bg => "bg".into(),
        Service::Other(s) => s.clone(),
    }
}

fn pool(p: &Pool) -> String {
    match p {
        Pool::Stable => "stable",
        Pool::Canary => "canary",
        Pool::Spare => "spare",
        Pool::A => "A",
        Pool::B => "B",
        Pool::Blue => "blue",
        Pool::Green => "green",
        Pool::Other(s) => s,
    }
    .to_string()
}

fn body(b: &Body) -> Bytes {
    match b {
        Body::Raw(bytes) => Bytes::copy_from_slice(bytes),
        Body::Weights(entries) => {
            let fields: Vec<String> = entries
                .iter()
                .map(|(p, w)| {
                    let w = match w {
                        Weight::Int(n) => n.to_string(),
                        Weight::Neg(n) => n.to_string(),
                        Weight::Float(f) if f.is_finite() => f.to_string(),
                        Weight::Float(_) => "1e999".to_string(),
                        Weight::Raw(s) => s.clone(),
                    };
                    format!("{:?}: {w}", pool(p))
                })
                .collect();
            Bytes::from(format!("{{{}}}", fields.join(", ")))
        }
    }
}

fn change(op: &Op) -> Change {
    match op {
        // Parsed as the admin API parses a PUT body.
        Op::SetWeights(s, b) => Change::set_weights(service(s), &body(b)),
        Op::Swap(s, checked) => Change::Swap {
            service: service(s),
            checked_standby: checked.as_ref().map(pool),
        },
        Op::Rollback(s) => Change::Rollback {
            service: service(s),
        },
        Op::Drain(s, p, a, drain) => Change::Drain {
            service: service(s),
            pool: pool(p),
            address: match a {
                Address::Known(n) => format!("127.0.0.1:{}", 9001 + u16::from(n % 10)),
                Address::Other(s) => s.clone(),
            },
            drain: *drain,
        },
        Op::Rollout(s, a) => Change::Rollout {
            service: service(s),
            action: match a {
                Action::Start => RolloutAction::Start,
                Action::Pause => RolloutAction::Pause,
                Action::Resume => RolloutAction::Resume,
                Action::Promote => RolloutAction::Promote,
                Action::Abort => RolloutAction::Abort,
            },
        },
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let Ok(mut state) = ControlState::new(config().clone(), String::new()) else {
        panic!("fixed fuzz config must build a table");
    };
    for step in steps.iter().take(16) {
        let guard = Guard {
            if_match: step.if_match.map(|g| match g {
                Some(g) => IfMatch::Generation(u64::from(g % 8)),
                None => IfMatch::Malformed,
            }),
            dry_run: step.dry_run,
            caller: None,
            by: None,
        };
        let before = state.generation();
        match state.change(change(&step.op), &guard) {
            Ok(view) => {
                let _ = view.warnings.len();
                if step.dry_run {
                    assert_eq!(
                        state.generation(),
                        before,
                        "a dry run changed the generation"
                    );
                }
            }
            Err(e) => {
                let _ = (e.status(), e.to_string());
                assert_eq!(
                    state.generation(),
                    before,
                    "a refused change bumped the generation"
                );
            }
        }
        check_live(&state);
    }
});

/// The published table is the live config: every weighted service keeps a positive total,
/// and the table's generation is the state's.
fn check_live(state: &ControlState) {
    let table = state.tables().load_full();
    assert_eq!(
        table.generation,
        state.generation(),
        "table and state generations differ"
    );
    for (name, svc) in &state.config().services {
        let (_, live) = table
            .service_by_name(name)
            .unwrap_or_else(|| panic!("service {name} missing from the live table"));
        if svc.strategy != Strategy::BlueGreen {
            assert!(svc.weight_total() > 0, "service {name} has weight total 0");
            let live_total: u64 = live.pools.iter().map(|p| u64::from(p.weight)).sum();
            assert_eq!(
                live_total,
                svc.weight_total(),
                "table weights differ from config"
            );
        }
    }
}
