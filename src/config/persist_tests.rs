//! Config write-back: exact text after each kind of admin change, round trips, atomic replace.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::persist::{LiveSplit, PersistError, render, write_back};
use super::*;

const FILE: &str = "/etc/switchyard/switchyard.toml";

fn parsed(text: &str) -> Config {
    parse_with_env(text, Path::new(FILE), &|_| None)
        .unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}\nin:\n{text}"))
}

/// `text`'s config after `change`, as the control task would hold it.
fn live(text: &str, change: impl FnOnce(&mut Config)) -> Config {
    let mut config = parsed(text);
    change(&mut config);
    config
}

fn rendered(text: &str, config: &Config) -> String {
    render(text, config).unwrap_or_else(|e| panic!("{e}"))
}

fn service<'c>(config: &'c mut Config, name: &str) -> &'c mut Service {
    config
        .services
        .get_mut(name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn set_weights(config: &mut Config, service_name: &str, weights: &[(&str, u32)]) {
    service(config, service_name).weights = weights
        .iter()
        .map(|(pool, w)| ((*pool).to_owned(), *w))
        .collect();
}

fn set_drained(config: &mut Config, service_name: &str, pool: &str, drained: &[&str]) {
    let pool = service(config, service_name)
        .pools
        .get_mut(pool)
        .unwrap_or_else(|| panic!("no pool {pool}"));
    pool.drained = drained.iter().map(|e| (*e).to_owned()).collect();
}

/// The file re-read holds exactly the live split, and writing it again changes nothing.
fn assert_round_trip(text: &str, config: &Config) {
    let out = rendered(text, config);
    let reread = parsed(&out);
    assert_eq!(
        LiveSplit::all(&reread),
        LiveSplit::all(config),
        "re-read split differs; file:\n{out}"
    );
    assert_eq!(
        rendered(&out, config),
        out,
        "second render changed the text"
    );
    assert_eq!(rendered(&out, &reread), out, "render of the re-read config");
}

/// Comments, odd spacing and an inline weights table, as an operator might write them.
const SHOP: &str = r#"# switchyard: shop (hand-written; keep the comments)
[[routes]]
service = "shop"   # the only route

# the shop service, canary
[services.shop]
strategy = "canary"
# keep the total at 100
weights = {  stable = 95 ,canary = 5 }   # changed by the admin API
hash_key = { header = "x-user-id" }

[services.shop.pools.stable]
endpoints = ["10.0.0.1:8080", "10.0.0.2:8080"]  # two instances

# the new version
[services.shop.pools.canary]
endpoints = ["10.0.0.3:8080"]
# trailing comment
"#;

/// SHOP with weights as a `[services.shop.weights]` table.
fn shop_table_weights() -> String {
    SHOP.replace(
        "weights = {  stable = 95 ,canary = 5 }   # changed by the admin API\n",
        "",
    )
    .replace(
        "\n[services.shop.pools.stable]",
        "\n[services.shop.weights]  # table form\nstable = 95   # most users\n# the canary\ncanary = 5\n\n[services.shop.pools.stable]",
    )
}

const WEB: &str = r#"[[routes]]
service = "web"

[services.web]
strategy = "blue-green"
active =   "blue"   # swapped by the admin API

[services.web.pools.blue]   # v1
endpoints = ["10.0.1.1:8080"]

[services.web.pools.green]  # v2
endpoints = ["10.0.1.2:8080"]
"#;

// === weights ===

#[test]
fn inline_weights_change_only_the_numbers() {
    let config = live(SHOP, |c| {
        set_weights(c, "shop", &[("stable", 90), ("canary", 10)]);
    });
    assert_eq!(
        rendered(SHOP, &config),
        SHOP.replace("stable = 95 ,canary = 5", "stable = 90 ,canary = 10")
    );
    assert_round_trip(SHOP, &config);
}

#[test]
fn inline_weights_append_a_new_pool_and_follow_the_live_order() {
    let text = SHOP.replace(
        "# trailing comment\n",
        "\n[services.shop.pools.dark]\nendpoints = [\"10.0.0.9:8080\"]\n",
    );
    let config = live(&text, |c| {
        set_weights(c, "shop", &[("stable", 90), ("canary", 5), ("dark", 5)]);
    });
    // New entries are spaced like the ones written, however odd.
    assert_eq!(
        rendered(&text, &config),
        text.replace(
            "{  stable = 95 ,canary = 5 }",
            "{  stable = 90 ,canary = 5 ,dark = 5 }"
        )
    );
    assert_round_trip(&text, &config);
    let plain = text.replace(
        "{  stable = 95 ,canary = 5 }",
        "{ stable = 95, canary = 5 }",
    );
    assert_eq!(
        rendered(&plain, &config),
        plain.replace(
            "{ stable = 95, canary = 5 }",
            "{ stable = 90, canary = 5, dark = 5 }"
        )
    );
    let one = plain.replace("{ stable = 95, canary = 5 }", "{ stable = 100 }");
    assert_eq!(
        rendered(&one, &config),
        plain.replace(
            "{ stable = 95, canary = 5 }",
            "{ stable = 90, canary = 5, dark = 5 }"
        )
    );

    // Bucket ranges follow the weights order, so the file must follow the live order.
    let config = live(&text, |c| {
        set_weights(c, "shop", &[("canary", 5), ("stable", 95)]);
    });
    let out = rendered(&text, &config);
    assert!(
        out.contains("weights = {  canary = 5 ,stable = 95 }   # changed by the admin API\n"),
        "{out}"
    );
    assert_round_trip(&text, &config);
}

#[test]
fn table_weights_are_edited_in_their_table() {
    let text = shop_table_weights();
    let config = live(&text, |c| {
        set_weights(c, "shop", &[("stable", 50), ("canary", 50)]);
    });
    assert_eq!(
        rendered(&text, &config),
        text.replace("stable = 95   #", "stable = 50   #")
            .replace("canary = 5\n", "canary = 50\n")
    );
    assert_round_trip(&text, &config);

    // Dotted keys are a table too.
    let dotted = SHOP.replace(
        "weights = {  stable = 95 ,canary = 5 }",
        "weights.stable = 95\nweights.canary = 5",
    );
    let config = live(&dotted, |c| {
        set_weights(c, "shop", &[("stable", 0), ("canary", 100)]);
    });
    assert_eq!(
        rendered(&dotted, &config),
        dotted
            .replace("weights.stable = 95", "weights.stable = 0")
            .replace("weights.canary = 5", "weights.canary = 100")
    );
    assert_round_trip(&dotted, &config);
}

// === active, drained ===

#[test]
fn blue_green_swap_rewrites_active_only() {
    let config = live(WEB, |c| {
        service(c, "web").active = Some("green".into());
    });
    assert_eq!(
        rendered(WEB, &config),
        WEB.replace("active =   \"blue\"", "active =   \"green\"")
    );
    assert_round_trip(WEB, &config);
}

#[test]
fn drained_is_added_then_removed() {
    let drained = live(SHOP, |c| {
        set_drained(c, "shop", "stable", &["10.0.0.2:8080"]);
    });
    let out = rendered(SHOP, &drained);
    assert_eq!(
        out,
        SHOP.replace(
            "  # two instances\n",
            "  # two instances\ndrained = [\"10.0.0.2:8080\"]\n"
        )
    );
    assert_round_trip(SHOP, &drained);

    // A second drain extends the list in live order.
    let both = live(&out, |c| {
        set_drained(c, "shop", "stable", &["10.0.0.2:8080", "10.0.0.1:8080"]);
    });
    let out2 = rendered(&out, &both);
    assert!(
        out2.contains("\ndrained = [\"10.0.0.2:8080\", \"10.0.0.1:8080\"]\n"),
        "{out2}"
    );
    assert_round_trip(&out, &both);

    // Undrained: the key disappears and the file is as it was.
    let none = live(&out2, |c| set_drained(c, "shop", "stable", &[]));
    assert_eq!(rendered(&out2, &none), SHOP);
    assert_round_trip(&out2, &none);
}

#[test]
fn crlf_line_endings_are_kept() {
    let crlf = SHOP.replace('\n', "\r\n");
    let config = live(&crlf, |c| {
        set_weights(c, "shop", &[("stable", 90), ("canary", 10)]);
        set_drained(c, "shop", "stable", &["10.0.0.1:8080"]);
    });
    let want = SHOP
        .replace("stable = 95 ,canary = 5", "stable = 90 ,canary = 10")
        .replace(
            "  # two instances\n",
            "  # two instances\ndrained = [\"10.0.0.1:8080\"]\n",
        )
        .replace('\n', "\r\n");
    assert_eq!(rendered(&crlf, &config), want);
    assert_round_trip(&crlf, &config);
}

#[test]
fn weights_the_live_service_no_longer_has_are_removed() {
    // The file weights a pool the live split does not (edited since the last load).
    let text = SHOP.replace(
        "# trailing comment\n",
        "\n[services.shop.pools.dark]\nendpoints = [\"10.0.0.9:8080\"]\n",
    );
    let config = live(&text, |c| {
        set_weights(c, "shop", &[("stable", 95), ("canary", 5)])
    });
    let inline = text.replace(
        "{  stable = 95 ,canary = 5 }",
        "{ dark = 1, stable = 94, canary = 5 }",
    );
    assert_eq!(
        rendered(&inline, &config),
        text.replace(
            "{  stable = 95 ,canary = 5 }",
            "{ stable = 95, canary = 5 }"
        )
    );
    assert_round_trip(&inline, &config);

    let table = shop_table_weights()
        .replace("canary = 5\n", "canary = 5\ndark = 0  # parked\n")
        .replace(
            "# trailing comment\n",
            "\n[services.shop.pools.dark]\nendpoints = [\"10.0.0.9:8080\"]\n",
        );
    assert_eq!(
        rendered(&table, &config),
        table.replace("dark = 0  # parked\n", "")
    );
    assert_round_trip(&table, &config);
}

// === no-op, idempotence, round trip ===

#[test]
fn nothing_changed_returns_the_identical_text() {
    // Spellings a re-encode could normalise: hex and literal strings, tabs, CRLF, no final newline.
    let odd = "[[routes]]\r\nservice = 'shop'\r\n[services.shop]\r\nstrategy\t=\t\"canary\"\r\n\
               weights = { stable = 0x5f, canary = 5 }\r\n\
               [services.shop.pools.stable]\r\nendpoints = [ '10.0.0.1:8080' ]\r\ndrained = [ '10.0.0.1:8080', ]\r\n\
               [services.shop.pools.canary]\r\nendpoints = [\"10.0.0.3:8080\"]";
    for text in [SHOP, WEB, &shop_table_weights(), odd] {
        assert_eq!(rendered(text, &parsed(text)), text);
    }
}

/// An admin change applied to the live config.
type Change = fn(&mut Config);

#[test]
fn every_change_round_trips() {
    let changes: [(&str, Change); 3] = [
        ("weights", |c| {
            set_weights(c, "shop", &[("stable", 1), ("canary", 99)])
        }),
        ("drain", |c| {
            set_drained(c, "shop", "canary", &["10.0.0.3:8080"])
        }),
        ("both", |c| {
            set_weights(c, "shop", &[("canary", 100), ("stable", 0)]);
            set_drained(c, "shop", "stable", &["10.0.0.1:8080", "10.0.0.2:8080"]);
        }),
    ];
    for text in [SHOP.to_owned(), shop_table_weights()] {
        for (name, change) in &changes {
            let config = live(&text, *change);
            assert_ne!(rendered(&text, &config), text, "{name}");
            assert_round_trip(&text, &config);
        }
    }
}

// === the file changed shape ===

#[test]
fn a_file_that_changed_shape_is_an_error() {
    let config = live(SHOP, |c| {
        set_weights(c, "shop", &[("stable", 1), ("canary", 1)])
    });
    let cases = [
        (
            SHOP.replace("services.shop", "services.store"),
            "services.shop",
            "not found",
        ),
        (
            SHOP.replace("[services.shop]\n", "[services.store]\n"),
            "services.shop.strategy",
            "missing",
        ),
        (
            SHOP.replace("strategy = \"canary\"", "strategy = \"ab\""),
            "services.shop.strategy",
            "the file says \"ab\"",
        ),
        (
            SHOP.replace("[services.shop.pools.canary]", "[services.shop.pools.next]"),
            "services.shop.pools.canary",
            "not found",
        ),
        (
            SHOP.replace("{  stable = 95 ,canary = 5 }", "\"95/5\""),
            "services.shop.weights",
            "is not a table",
        ),
        (
            "[[routes]]\nservice = \"shop\"\n".to_owned(),
            "services",
            "not found",
        ),
    ];
    for (text, key_path, problem) in cases {
        match render(&text, &config) {
            Err(PersistError::Shape {
                path,
                key_path: got,
                problem: message,
            }) => {
                assert_eq!(path, Path::new(FILE));
                assert_eq!(got, key_path);
                assert!(message.contains(problem), "{key_path}: {message}");
            }
            other => panic!("{key_path}: expected a shape error, got {other:?}"),
        }
    }
    match render("[[routes]\n", &config) {
        Err(e @ PersistError::Parse { .. }) => assert!(e.to_string().contains(FILE), "{e}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

// === write_back ===

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("switchyard-persist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    names.sort();
    names
}

fn ninety_ten() -> Config {
    live(SHOP, |c| {
        set_weights(c, "shop", &[("stable", 90), ("canary", 10)])
    })
}

#[test]
fn write_back_replaces_the_file_atomically_and_keeps_its_mode() {
    let dir = TempDir::new("replace");
    let path = dir.0.join("switchyard.toml");
    fs::write(&path, SHOP).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap_or_else(|e| panic!("{e}"));
    let before = fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));

    let config = ninety_ten();
    let text = write_back(&path, &config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, rendered(SHOP, &config));
    assert_eq!(read(&path), text);
    let after = fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        after.ino(),
        before.ino(),
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert_eq!(
        entries(&dir.0),
        vec!["switchyard.toml"],
        "no temp file left"
    );

    // Already persisted: not rewritten at all.
    assert_eq!(
        write_back(&path, &config).unwrap_or_else(|e| panic!("{e}")),
        text
    );
    assert_eq!(fs::metadata(&path).map(|m| m.ino()).ok(), Some(after.ino()));
}

#[test]
fn write_back_through_a_symlink_replaces_the_target() {
    // The Kubernetes ConfigMap layout: config.toml -> ..data/config.toml, ..data -> ..2024_v1.
    let dir = TempDir::new("symlink");
    let version = dir.0.join("..2024_v1");
    fs::create_dir(&version).unwrap_or_else(|e| panic!("{e}"));
    fs::write(version.join("config.toml"), SHOP).unwrap_or_else(|e| panic!("{e}"));
    let link = |to: &str, at: &str| {
        std::os::unix::fs::symlink(to, dir.0.join(at)).unwrap_or_else(|e| panic!("{e}"))
    };
    link("..2024_v1", "..data");
    link("..data/config.toml", "config.toml");
    let path = dir.0.join("config.toml");

    let text = write_back(&path, &ninety_ten()).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("stable = 90 ,canary = 10"));
    for at in ["config.toml", "..data"] {
        let meta = fs::symlink_metadata(dir.0.join(at)).unwrap_or_else(|e| panic!("{e}"));
        assert!(meta.file_type().is_symlink(), "{at} is still a link");
    }
    assert_eq!(read(&version.join("config.toml")), text);
    assert_eq!(entries(&version), vec!["config.toml"]);
}

#[test]
fn write_back_failures_leave_the_file_alone() {
    let config = ninety_ten();
    let dir = TempDir::new("fail");

    // Tests run as root, for whom chmod 0555 stops nothing; a directory squatting on the temp
    // file's name makes the write fail just the same, after the file was read.
    let path = dir.0.join("switchyard.toml");
    fs::write(&path, SHOP).unwrap_or_else(|e| panic!("{e}"));
    let squatter = dir
        .0
        .join(format!(".switchyard.toml.tmp-{}", std::process::id()));
    fs::create_dir(&squatter).unwrap_or_else(|e| panic!("{e}"));
    fs::write(squatter.join("keep"), "").unwrap_or_else(|e| panic!("{e}"));
    match write_back(&path, &config) {
        Err(e @ PersistError::Write { .. }) => {
            assert!(e.to_string().contains("create a temp file"), "{e}")
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(read(&path), SHOP);
    assert!(squatter.join("keep").exists(), "not ours to remove");

    // A path into a directory that does not exist, or through a file used as a directory.
    for path in [
        dir.0.join("missing/switchyard.toml"),
        path.join("switchyard.toml"),
    ] {
        match write_back(&path, &config) {
            Err(e @ PersistError::Read { .. }) => {
                assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}")
            }
            other => panic!("{}: expected a read error, got {other:?}", path.display()),
        }
    }
    assert_eq!(read(&path), SHOP);
    let mut want = vec![".switchyard.toml.tmp-".to_owned() + &std::process::id().to_string()];
    want.push("switchyard.toml".into());
    assert_eq!(entries(&dir.0), want);
}

#[test]
fn a_read_only_file_is_not_written() {
    let dir = TempDir::new("readonly");
    let path = dir.0.join("switchyard.toml");
    fs::write(&path, SHOP).unwrap_or_else(|e| panic!("{e}"));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o444)).unwrap_or_else(|e| panic!("{e}"));
    match write_back(&path, &ninety_ten()) {
        Err(e @ PersistError::Write { .. }) => assert!(e.to_string().contains("read-only"), "{e}"),
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(read(&path), SHOP);
    assert_eq!(entries(&dir.0), vec!["switchyard.toml"]);
}

#[test]
fn stale_temp_files_of_a_crashed_write_are_removed() {
    let dir = TempDir::new("stale");
    let path = dir.0.join("switchyard.toml");
    fs::write(&path, SHOP).unwrap_or_else(|e| panic!("{e}"));
    for name in [
        ".switchyard.toml.tmp-4242",
        ".switchyard.toml.tmp-7",
        ".other.toml.tmp-1",
    ] {
        fs::write(dir.0.join(name), "half").unwrap_or_else(|e| panic!("{e}"));
    }
    fs::write(dir.0.join(".switchyard.toml.tmp-notes"), "mine").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(super::persist::remove_stale_temps(&path), 2);
    assert_eq!(
        entries(&dir.0),
        vec![
            ".other.toml.tmp-1",
            ".switchyard.toml.tmp-notes",
            "switchyard.toml"
        ]
    );
}
