//! Fuzz target: any text through `config::parse`, then `RoutingTable::build` when it is valid.
//! Errors are expected; a panic (in validation, diagnostics or the build) is a bug.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchyard::config;
use switchyard::router::RoutingTable;
use switchyard::upstream::Registry;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A path whose directory does not exist: relative `ca`/cert paths resolve into it and
    // fail to read, which is an error, not a panic.
    let path = Path::new("/nonexistent/switchyard-fuzz/switchyard.toml");
    match config::parse(&text, path) {
        Ok(cfg) => {
            if let Err(e) = RoutingTable::build(&cfg, &mut Registry::new(), 1) {
                let _ = e.to_string();
            }
        }
        // Rendering the diagnostics maps spans to line:col, which must not panic either.
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
