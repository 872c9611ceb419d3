//! Every link between the project's Markdown documents resolves: the README, BENCHMARKS and `docs/` link to each
//! other's files and headings, and a heading renamed or a page moved must not leave a reader at a dead end.
//!
//! Links are checked the way GitHub renders them: a relative path from the linking file's folder, and a `#anchor`
//! that is the slug of a heading of the target (lowercased, punctuation but `-` and `_` dropped, spaces to `-`,
//! a repeated slug numbered `-1`, `-2`, …). Links inside code are not links; web addresses are not followed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The Markdown files checked: the repository's top-level documents and everything under `docs/`.
pub fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "BENCHMARKS.md", "SECURITY.md", "CHANGELOG.md", "CONTRIBUTING.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    if let Ok(dir) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<PathBuf> =
            dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

/// The text outside fenced code blocks and inline code spans, line by line.
fn prose_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push(String::new());
            continue;
        }
        if fenced {
            out.push(String::new());
            continue;
        }
        // Drop inline code spans: the parts between backticks at odd positions.
        out.push(line.split('`').enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, p)| p).collect());
    }
    out
}

/// GitHub's anchor for a heading's text.
pub fn slug(heading: &str) -> String {
    // A link in a heading renders as its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| after[close..].find(')').map(|end| (close, close + end))) {
            Some((close, end)) => {
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown document's headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(h) = line.strip_prefix('#') else { continue };
        if fenced {
            continue;
        }
        let h = h.trim_start_matches('#');
        if !h.starts_with(' ') {
            continue;
        }
        let base = slug(h.trim());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the inline links (`[text](target)`) in prose.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("").trim_matches(['<', '>']);
        out.push(target.to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// Every broken link of the documents under `root` ("file:line: target: why"), and how many links were checked.
pub fn broken_links(root: &Path) -> (Vec<String>, usize) {
    let mut broken = Vec::new();
    let mut checked = 0;
    let mut cache: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for file in documents(root) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let name = file.strip_prefix(root).unwrap_or(&file).display().to_string();
        for (i, line) in prose_lines(&text).iter().enumerate() {
            for target in link_targets(line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let dest = if path.is_empty() { file.clone() } else { file.parent().unwrap_or(root).join(path) };
                let why = if !dest.exists() {
                    Some("no such file".to_owned())
                } else if !anchor.is_empty() && dest.extension().is_some_and(|x| x == "md") {
                    let known = cache
                        .entry(dest.clone())
                        .or_insert_with(|| anchors(&std::fs::read_to_string(&dest).unwrap_or_default()));
                    (!known.contains(anchor)).then(|| format!("no heading with the anchor #{anchor}"))
                } else {
                    None
                };
                if let Some(why) = why {
                    broken.push(format!("{name}:{}: {target}: {why}", i + 1));
                }
            }
        }
    }
    (broken, checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("Beyond one Redis: TLS, Redis Cluster, failovers"),
            "beyond-one-redis-tls-redis-cluster-failovers"
        );
        assert_eq!(
            slug("2026-12-08 (later): money and reputation guards (issue 33)"),
            "2026-12-08-later-money-and-reputation-guards-issue-33"
        );
        assert_eq!(slug("`loadtest` and [the guide](x.md)"), "loadtest-and-the-guide");
        assert_eq!(slug("Texts on the tenant's clock"), "texts-on-the-tenants-clock");
        let a = anchors("# A\n```\n# not a heading\n```\n## A\n#nospace\n");
        assert_eq!(a, HashSet::from(["a".to_owned(), "a-1".to_owned()]));
    }

    #[test]
    fn links_in_code_are_not_links_and_web_addresses_are_not_followed() {
        let lines = prose_lines("see [x](a.md#b) and `[y](nope.md)`\n```\n[z](nope.md)\n```\n[w](https://x.y/z)");
        let all: Vec<String> = lines.iter().flat_map(|l| link_targets(l)).collect();
        assert_eq!(all, ["a.md#b", "https://x.y/z"]);
    }

    /// The acceptance check: every internal link of the README, BENCHMARKS and docs/ resolves.
    #[test]
    fn every_internal_link_of_the_documents_resolves() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let (broken, checked) = broken_links(root);
        println!("{checked} internal links checked in {} documents", documents(root).len());
        assert!(checked > 0, "no links found: is the root right?");
        assert!(broken.is_empty(), "{} broken links:\n{}", broken.len(), broken.join("\n"));
    }

    /// The checker catches what it is for: a missing file and a missing heading.
    #[test]
    fn a_dead_link_is_reported_with_its_line_and_why() {
        let dir = std::env::temp_dir().join(format!("doclinks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::write(dir.join("README.md"), "# Top\n\n[ok](docs/A.md#part-one) [gone](docs/B.md)\n[bad](#nope)\n")
            .unwrap();
        std::fs::write(dir.join("docs/A.md"), "# A\n\n## Part one\n[back](../README.md#top)\n").unwrap();
        let (broken, checked) = broken_links(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(checked, 4);
        assert_eq!(
            broken,
            ["README.md:3: docs/B.md: no such file", "README.md:4: #nope: no heading with the anchor #nope"]
        );
    }
}
