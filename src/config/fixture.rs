//! A small config for unit tests of the control plane: a canary service `shop` (stable 90 on
//! two endpoints with `min_available = 1`, canary 10, a rollout in [`with_rollout`]) and a
//! blue-green service `bg`.

use std::path::Path;

use super::Config;

const TEXT: &str = r#"
[[routes]]
service = "shop"
[services.shop]
strategy = "canary"
weights = { stable = 90, canary = 10 }
[services.shop.pools.stable]
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
min_available = 1
[services.shop.pools.canary]
endpoints = ["127.0.0.1:3"]
[[routes]]
path_prefix = "/bg"
service = "bg"
[services.bg]
strategy = "blue-green"
active = "blue"
[services.bg.pools.blue]
endpoints = ["127.0.0.1:4"]
[services.bg.pools.green]
endpoints = ["127.0.0.1:5"]
"#;

pub(crate) fn shop_and_bg() -> Config {
    parse(TEXT)
}

/// [`shop_and_bg`] with a rollout of `shop` (steps 10 and 50).
pub(crate) fn with_rollout() -> Config {
    parse(&TEXT.replace(
        "[services.shop.pools.stable]",
        "[services.shop.rollout]\nbaseline = \"stable\"\ncanary = \"canary\"\nsteps = [10, 50]\n[services.shop.pools.stable]",
    ))
}

fn parse(text: &str) -> Config {
    match super::parse(text, Path::new("t.toml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}
