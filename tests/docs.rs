//! The documentation holds together: every relative link in README.md, CONTRIBUTING.md and
//! docs/*.md names a file or directory of the repository, every `#anchor` names a heading of
//! its target (by GitHub's slug rules), and the README stays a short front door that gives the
//! two first commands.
//!
//! std only, no network: links to `http:`, `https:` and `mailto:` are not followed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The README is the front door: past this, it is a manual again.
const README_MAX_LINES: usize = 250;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, CONTRIBUTING.md and every docs/*.md, in a stable order.
fn doc_files() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    let mut files = vec![root().join("README.md"), root().join("CONTRIBUTING.md")];
    files.extend(docs);
    files
}

/// A line's opening or closing code fence: its character and length.
fn fence(line: &str) -> Option<(char, usize)> {
    let t = line.trim_start();
    let c = t.chars().next()?;
    if c != '`' && c != '~' {
        return None;
    }
    let n = t.chars().take_while(|&x| x == c).count();
    (n >= 3).then_some((c, n))
}

/// The lines of `text` outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut open: Option<(char, usize)> = None;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match (open, fence(line)) {
            (None, Some(f)) => open = Some(f),
            // A fence closes on the same character, at least as long, with nothing after it.
            (Some((c, n)), Some((c2, n2)))
                if c == c2 && n2 >= n && line.trim().chars().all(|x| x == c) =>
            {
                open = None;
            }
            (None, None) => lines.push((i + 1, line)),
            _ => {}
        }
    }
    lines
}

/// `line` with the contents of its inline code spans blanked, so `](` inside code is no link.
fn blank_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        // The span ends at the next run of exactly as many backticks.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let r = chars[j..].iter().take_while(|&&c| c == '`').count();
                if r == run {
                    close = Some(j);
                    break;
                }
                j += r;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.extend(std::iter::repeat_n(' ', j + run - i));
                i = j + run;
            }
            None => {
                // An unmatched run is literal text.
                out.extend(std::iter::repeat_n('`', run));
                i += run;
            }
        }
    }
    out
}

/// Link and image targets on one line of prose: inline `[text](target)` and reference
/// definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let line = blank_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find([')', ' ', '\t']).unwrap_or(after.len());
        let target = after[..end].trim_start_matches('<').trim_end_matches('>');
        if !target.is_empty() {
            targets.push(target.to_string());
        }
        rest = &after[end..];
    }
    let t = line.trim_start();
    if t.starts_with('[')
        && let Some(close) = t.find("]:")
        && !t[..close].contains("](")
        && let Some(target) = t[close + 2..].split_whitespace().next()
    {
        targets.push(
            target
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string(),
        );
    }
    targets
}

/// GitHub's anchor for a heading's text: inline code and link markup reduced to their text,
/// lowercase, punctuation other than `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    // `[text](target)` → `text`.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(at) = rest.find("](") {
        text.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        rest = after.find(')').map_or("", |end| &after[end + 1..]);
    }
    text.push_str(rest);
    text.chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .flat_map(|c| if c == ' ' { '-' } else { c }.to_lowercase())
        .collect()
}

/// The anchors of a markdown file's ATX headings; a repeated slug gets `-1`, `-2`, ...
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let t = line.trim_start_matches(' ');
        let level = t.chars().take_while(|&c| c == '#').count();
        if indent > 3 || level == 0 || level > 6 {
            continue;
        }
        let after = &t[level..];
        if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
            continue;
        }
        // An optional closing sequence of `#`s is not part of the text.
        let text = after.trim().trim_end_matches('#').trim_end();
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

fn is_external(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    ["http:", "https:", "mailto:"]
        .iter()
        .any(|scheme| lower.starts_with(scheme))
}

/// Every broken link of `files`, as `file:line → target (why)`, paths shown relative to `base`.
fn broken_links(files: &[PathBuf], base: &Path) -> Vec<String> {
    let show = |p: &Path| p.strip_prefix(base).unwrap_or(p).display().to_string();
    let mut texts: HashMap<PathBuf, Option<String>> = HashMap::new();
    let mut read = |p: &Path| {
        texts
            .entry(p.to_path_buf())
            .or_insert_with(|| fs::read_to_string(p).ok())
            .clone()
    };
    let mut broken = Vec::new();
    for file in files {
        let Some(text) = read(file) else {
            broken.push(format!("{}: cannot read the file", show(file)));
            continue;
        };
        let dir = file.parent().unwrap_or(base);
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if is_external(&target) {
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let mut why = None;
                if !resolved.exists() {
                    why = Some("no such file or directory".to_string());
                } else if let Some(anchor) = anchor
                    && resolved.extension().is_some_and(|e| e == "md")
                {
                    let target_text = read(&resolved).unwrap_or_default();
                    if !anchors(&target_text).iter().any(|a| a == anchor) {
                        why = Some(format!("no heading #{anchor} in {}", show(&resolved)));
                    }
                }
                if let Some(why) = why {
                    broken.push(format!("{}:{n} → {target} ({why})", show(file)));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let files = doc_files();
    let broken = broken_links(&files, root());
    assert!(
        broken.is_empty(),
        "{} broken link(s) in the documentation:\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

#[test]
fn readme_is_a_short_front_door_with_the_first_commands() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move detail to docs/"
    );
    for command in ["cargo run --release -- demo", "cargo test --workspace"] {
        assert!(
            readme.contains(command),
            "README.md does not give `{command}`"
        );
    }
}

/// The checker itself: on files made for it, it reports exactly the broken links.
#[test]
fn the_checker_reports_broken_links_and_anchors() {
    let dir = std::env::temp_dir().join(format!("switchyard-docs-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("sub")).expect("temp dir");
    let a = dir.join("a.md");
    fs::write(
        &a,
        "# Title\n\
         ## `hold_timeout`\n\
         ## Automated canary (rollout)\n\
         ## Dup\n\
         ## Dup\n\
         [ok](sub/b.md) [ok](sub/) [ok](#hold_timeout) [ok](#automated-canary-rollout)\n\
         [ok](#dup-1) ![img](sub/b.md) [web](https://example.com/x) [m](mailto:x@example.com)\n\
         `[not a link](missing-in-code.md)`\n\
         ```\n\
         [not a link](missing-in-fence.md)\n\
         ```\n\
         [bad](missing.md)\n\
         [bad anchor](sub/b.md#nowhere) [good anchor](sub/b.md#b-heading)\n\
         [bad self](#dup-2)\n\
         [ref]: sub/nothing.txt\n",
    )
    .expect("write a.md");
    fs::write(dir.join("sub/b.md"), "# B heading\n[up](../a.md#title)\n").expect("write b.md");
    let found = broken_links(&[a, dir.join("sub/b.md")], &dir);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        found,
        [
            "a.md:12 → missing.md (no such file or directory)",
            "a.md:13 → sub/b.md#nowhere (no heading #nowhere in sub/b.md)",
            "a.md:14 → #dup-2 (no heading #dup-2 in a.md)",
            "a.md:15 → sub/nothing.txt (no such file or directory)",
        ]
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("`hold_timeout`"), "hold_timeout");
    assert_eq!(
        slug("Automated canary (rollout)"),
        "automated-canary-rollout"
    );
    assert_eq!(slug("`[services.NAME]`"), "servicesname");
    assert_eq!(slug("TLS and HTTP/2"), "tls-and-http2");
    assert_eq!(
        slug("Health checks & outlier ejection"),
        "health-checks--outlier-ejection"
    );
}
