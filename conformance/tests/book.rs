//! The book (`docs/`) against the code it shows and the commands it tells students to type.
//!
//! The book never holds a copy of the code: it includes marked regions of the crates with
//! `{{#include ../../select/src/main.rs:wait}}`. A renamed anchor or a moved file would make
//! mdBook print a warning and render a hole where the code should be, so these tests fail first.
//! And every `cargo run -p NAME` in the book must name a crate of this workspace that is more
//! than a placeholder, so that no chapter sends a class to a server that does not exist yet,
//! and the options it passes (`cargo run -p epoll -- --edge --read-once`) must be ones that the
//! binary accepts, in the book, the README and the crates' own headers alike.
//!
//! The book's conventions for readers are checked here too, and every failure says what to add
//! (docs/CONTRIBUTING.md describes them):
//! - a caption line, `<div class="code-caption">` with the file (linked, relative to the page)
//!   and the region, then a blank line, above every code block that includes a region;
//! - each page's first mention of a call in backticks links to its man page,
//!   `https://man7.org/linux/man-pages/manN/NAME.N.html`, NAME(N) listed in `MAN_PAGES`;
//! - a `<div class="figure-caption">` sentence after every plot of measurements/ (the sentence a
//!   markdown paragraph of its own inside the div, so that gettext can translate it);
//! - for exercise N under `## Exercises` in STEM.md, a heading `### STEM N: title` in answers.md.
//!
//! The Chinese edition is the same pages through `docs/po/zh-CN.po` (gettext, applied before the
//! includes are expanded): every translated message must keep its English original's includes,
//! inline code and link targets, so that the code it shows and the commands it gives are the
//! ones checked above, and its links and pictures must exist in the Chinese edition too.
//!
//! Run with `cargo test -p conformance --test book`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use conformance::{binary, workspace};

/// Every `.md` file under `dir`, recursively, in a stable order.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            found.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            found.push(path);
        }
    }
    found
}

fn book_pages() -> Vec<(PathBuf, String)> {
    let src = workspace().join("docs/src");
    let pages: Vec<(PathBuf, String)> = markdown_files(&src)
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path, text)
        })
        .collect();
    assert!(
        pages.iter().any(|(p, _)| p.ends_with("SUMMARY.md")),
        "no docs/src/SUMMARY.md: is the book missing?"
    );
    pages
}

/// One `{{#include ...}}` or `{{#rustdoc_include ...}}`: the page it is on, its line, and the
/// text between the directive's name and the closing braces (`PATH[:ANCHOR|:LINES]`).
struct Include {
    page: PathBuf,
    line: usize,
    spec: String,
}

/// Finds the include directives of a page, as mdBook does: `\{{#include ...}}` is an escaped
/// directive and is skipped. Directives inside HTML comments still count (mdBook expands them).
fn includes(page: &Path, text: &str) -> Vec<Include> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(start) = rest.find("{{#") {
            let escaped = start > 0 && rest.as_bytes()[start - 1] == b'\\';
            let after = &rest[start + 3..];
            let Some(end) = after.find("}}") else {
                break;
            };
            let directive = after[..end].trim();
            let mut words = directive.splitn(2, char::is_whitespace);
            let name = words.next().unwrap_or("");
            let spec = words.next().unwrap_or("").trim();
            if !escaped && (name == "include" || name == "rustdoc_include") {
                found.push(Include {
                    page: page.to_path_buf(),
                    line: index + 1,
                    spec: spec.to_owned(),
                });
            }
            offset += start + 3 + end + 2;
            rest = &line[offset..];
        }
    }
    found
}

/// Does `source` mark `anchor` the way mdBook reads markers (`ANCHOR: name`, any comment
/// syntax around it, the name matched whole)? Returns (has start, has end).
fn has_anchor(source: &str, anchor: &str) -> (bool, bool) {
    let marks = |keyword: &str| {
        source.lines().any(|line| {
            line.match_indices(keyword).any(|(at, _)| {
                // ANCHOR_END: must not count as ANCHOR:, so look at what precedes the keyword.
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    return false;
                }
                let name: String = line[at + keyword.len()..]
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                name == anchor
            })
        })
    };
    (marks("ANCHOR:"), marks("ANCHOR_END:"))
}

#[test]
fn every_include_names_an_existing_file_and_anchor() {
    let pages = book_pages();
    let all: Vec<Include> = pages
        .iter()
        .flat_map(|(path, text)| includes(path, text))
        .collect();
    // A book about code that includes no code means this test's parser is broken.
    assert!(
        all.len() >= 10,
        "only {} include directives found in docs/src",
        all.len()
    );
    let mut problems = Vec::new();
    for include in &all {
        let at = format!("{}:{}", include.page.display(), include.line);
        let mut parts = include.spec.splitn(2, ':');
        let path = parts.next().unwrap_or("").trim();
        let selector = parts.next().map(str::trim);
        let file = include
            .page
            .parent()
            .expect("a page's directory")
            .join(path);
        let Ok(source) = fs::read_to_string(&file) else {
            problems.push(format!("{at}: {} does not exist", file.display()));
            continue;
        };
        match selector {
            // Whole file, or a line range (`:10`, `:10:20`, `:10:`, `::20`): the file is enough.
            None | Some("") => {}
            Some(s) if s.starts_with(|c: char| c.is_ascii_digit() || c == ':') => {}
            Some(anchor) => {
                let (start, end) = has_anchor(&source, anchor);
                if !start {
                    problems.push(format!("{at}: no `ANCHOR: {anchor}` in {path}"));
                }
                if !end {
                    problems.push(format!("{at}: no `ANCHOR_END: {anchor}` in {path}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The workspace's members, from the root Cargo.toml's `members = [...]`.
fn members() -> Vec<String> {
    let manifest = fs::read_to_string(workspace().join("Cargo.toml")).expect("root Cargo.toml");
    let start = manifest.find("members").expect("a members list");
    let open = start + manifest[start..].find('[').expect("members = [");
    let close = open + manifest[open..].find(']').expect("members = [...]");
    manifest[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// A crate is real once its main.rs is more than the placeholder `fn main() {}`.
fn is_real(member: &str) -> bool {
    let Ok(main) = fs::read_to_string(workspace().join(member).join("src/main.rs")) else {
        return false;
    };
    let code: String = main.chars().filter(|c| !c.is_whitespace()).collect();
    code != "fnmain(){}" && main.lines().filter(|l| !l.trim().is_empty()).count() > 3
}

/// Removes `<!-- ... -->` comments: text a reader never sees (drafts waiting for a crate).
fn without_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start..].find("-->") {
            Some(end) => rest = &rest[start + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// One `cargo run ... -p NAME [-- ARGS]` found in a text.
#[derive(Debug)]
struct CargoRun {
    line: usize,
    /// The package after `-p` / `--package` (options before it, `--release` or `-q`, skipped).
    name: String,
    /// The words after `--`, up to the end of the code span or the first shell operator or
    /// comment.
    args: Vec<String>,
}

impl CargoRun {
    /// The arguments to try on the binary: none when there are none, or when one is a
    /// placeholder (`[OPTIONS]`, `ADDR`, `N`) or an ellipsis.
    fn checkable_args(&self) -> Option<&[String]> {
        let placeholder = |w: &String| {
            let bare = w.trim_matches(['[', ']', '.', ',']);
            w.contains("...")
                || w.contains('…')
                || (!bare.is_empty() && bare.chars().all(|c| c.is_ascii_uppercase()))
        };
        let none = self.args.is_empty() || self.args.iter().any(placeholder);
        (!none).then_some(self.args.as_slice())
    }
}

/// Every `cargo run ... -p NAME` (or `--package NAME`, `--package=NAME`) in `text`, with the
/// arguments it passes after `--`. A `--` before any `-p` ends the search: that is cargo's own
/// package, not one named. After ` -- `, a quoted argument (`--spawn 'python3 s.py {port}'`)
/// is one word, as a shell would pass it.
fn cargo_runs(text: &str) -> Vec<CargoRun> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("cargo run") {
            let rest = &line[at + "cargo run".len()..];
            let end = command_end(rest);
            let words = conformance::harness::split_words(&rest[..end]).unwrap_or_default();
            let mut words = words.iter().map(String::as_str);
            let mut name = None;
            let mut args = Vec::new();
            while let Some(word) = words.next() {
                if word == "-p" || word == "--package" {
                    name = words.next();
                } else if let Some(package) = word.strip_prefix("--package=") {
                    name = Some(package);
                } else if word == "--" || !word.starts_with('-') {
                    if word == "--" && name.is_some() {
                        args = words.by_ref().map(str::to_owned).collect();
                    }
                    break;
                }
            }
            if let Some(name) = name {
                let (line, name) = (index + 1, name.to_owned());
                found.push(CargoRun { line, name, args });
            }
        }
    }
    found
}

/// Where the command starting `rest` ends: at a shell operator, a comment, the end of a code
/// span, or a quote, unless the quote opens a whole argument after ` -- ` and closes later.
fn command_end(rest: &str) -> usize {
    let args = rest.find(" -- ");
    let mut quote = None;
    for (i, c) in rest.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                let opens_argument = args.is_some_and(|a| i > a)
                    && rest[..i].ends_with(' ')
                    && rest[i + 1..].contains(c);
                if !opens_argument {
                    return i;
                }
                quote = Some(c);
            }
            None if "`|;)#><&".contains(c) => return i,
            None => {}
        }
    }
    rest.len()
}

#[test]
fn every_cargo_run_names_a_real_workspace_crate() {
    let members = members();
    let mut seen = 0;
    let mut problems = Vec::new();
    for (page, text) in book_pages() {
        for CargoRun { line, name, .. } in cargo_runs(&without_comments(&text)) {
            seen += 1;
            // `cargo run -p NAME`: a placeholder in capitals, as in the contract's synopsis.
            if name.chars().all(|c| c.is_ascii_uppercase()) {
                continue;
            }
            let at = format!("{}:{line}", page.display());
            if !members.contains(&name) {
                problems.push(format!(
                    "{at}: `cargo run -p {name}`: not a workspace member"
                ));
            } else if !is_real(&name) {
                problems.push(format!(
                    "{at}: `cargo run -p {name}`: {name}/src/main.rs is still a placeholder"
                ));
            }
        }
    }
    assert!(
        seen >= 10,
        "only {seen} `cargo run -p` commands found in the book"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The README, the book, and the `//!` headers of every crate: all the text that tells a
/// student what to type.
fn instructions() -> Vec<(PathBuf, String)> {
    let mut texts = book_pages();
    let readme = workspace().join("README.md");
    texts.push((
        readme.clone(),
        fs::read_to_string(&readme).expect("README.md"),
    ));
    for member in members() {
        let src = workspace().join(&member).join("src");
        let Ok(entries) = fs::read_dir(&src) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|ext| ext == "rs") {
                // Comments only: commands in string literals are built at run time.
                let text = fs::read_to_string(&path).expect("read a source file");
                let comments: Vec<&str> = text
                    .lines()
                    .map(|line| {
                        if line.trim_start().starts_with("//") {
                            line
                        } else {
                            ""
                        }
                    })
                    .collect();
                texts.push((path, comments.join("\n")));
            }
        }
    }
    texts
}

#[test]
fn every_cargo_run_passes_options_the_binary_accepts() {
    let members = members();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (page, text) in instructions() {
        for run in cargo_runs(&without_comments(&text)) {
            let (line, name) = (run.line, &run.name);
            let Some(args) = run.checkable_args() else {
                continue;
            };
            if !members.contains(name) || !is_real(name) {
                continue; // the test above reports it
            }
            // clap parses everything before `--help`, then prints the help: an unknown option
            // or a value that does not parse fails instead.
            let output = Command::new(binary(name))
                .args(args)
                .arg("--help")
                .stdin(Stdio::null())
                .output()
                .expect("run the binary");
            checked += 1;
            if !output.status.success() {
                problems.push(format!(
                    "{}:{line}: `cargo run -p {name} -- {}`: {}",
                    page.display(),
                    args.join(" "),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
        }
    }
    assert!(checked >= 20, "only {checked} commands with options found");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The ids mdBook gives a page's headings, for `page.md#id` links: the heading's text, lower
/// case, spaces as `-`, punctuation other than `-` and `_` left out. (Code blocks skipped.)
fn heading_ids(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !in_code) else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        ids.push(
            title
                .chars()
                .filter_map(|c| match c {
                    c if c.is_alphanumeric() || c == '_' || c == '-' => {
                        Some(c.to_ascii_lowercase())
                    }
                    c if c.is_whitespace() => Some('-'),
                    _ => None,
                })
                .collect(),
        );
    }
    ids
}

#[test]
fn every_chapter_and_picture_exists() {
    let src = workspace().join("docs/src");
    let mut problems = Vec::new();
    for (page, text) in book_pages() {
        // `](target)` in markdown: chapters in SUMMARY.md, pictures and links in chapters.
        for (index, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("](") {
                let rest = &line[at + 2..];
                let Some(end) = rest.find(')') else { continue };
                let (target, fragment) = match rest[..end].split_once('#') {
                    Some((target, fragment)) => (target, Some(fragment)),
                    None => (&rest[..end], None),
                };
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let file = match target {
                    "" => page.clone(),
                    _ => page.parent().unwrap_or(&src).join(target),
                };
                if !file.exists() {
                    problems.push(format!(
                        "{}:{}: links to {target}, which does not exist",
                        page.display(),
                        index + 1
                    ));
                } else if let Some(fragment) = fragment
                    && file.extension().is_some_and(|ext| ext == "md")
                {
                    let text = fs::read_to_string(&file).expect("read a chapter");
                    if !heading_ids(&text).iter().any(|id| id == fragment) {
                        problems.push(format!(
                            "{}:{}: links to {target}#{fragment}, a heading that does not exist",
                            page.display(),
                            index + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The two files of a `diff A B` line in the book.
type DiffFiles = Option<(String, String)>;

/// One count the book quotes for a diff between neighbours, "N changed lines (X out, Y in)",
/// with the files of the last two-file `diff A B` line shown before it on the same page.
#[derive(Debug, PartialEq)]
struct QuotedDiff {
    line: usize,
    files: DiffFiles,
    counts: [usize; 3],
}

/// Finds the quoted diff counts of a page. The phrase may wrap across lines.
fn quoted_diffs(text: &str) -> Vec<QuotedDiff> {
    // Every word, with its line and the diff shown last before that line.
    let mut words: Vec<(&str, usize, DiffFiles)> = Vec::new();
    let mut files = None;
    for (index, line) in text.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("diff ") {
            files = match rest.split_whitespace().collect::<Vec<_>>()[..] {
                [a, b] if !a.starts_with(['-', '<']) => Some((a.to_owned(), b.to_owned())),
                _ => None,
            };
        }
        words.extend(
            line.split_whitespace()
                .map(|w| (w, index + 1, files.clone())),
        );
    }
    let number = |word: &str| word.trim_matches(['(', ')', ',']).parse::<usize>().ok();
    let mut found = Vec::new();
    for window in words.windows(7) {
        let text: Vec<&str> = window.iter().map(|(word, _, _)| *word).collect();
        if text[1..3] == ["changed", "lines"]
            && text[3].starts_with('(')
            && text[4] == "out,"
            && text[6].starts_with("in)")
            && let (Some(n), Some(out), Some(into)) =
                (number(text[0]), number(text[3]), number(text[5]))
        {
            let (_, line, files) = &window[0];
            found.push(QuotedDiff {
                line: *line,
                files: files.clone(),
                counts: [n, out, into],
            });
        }
    }
    found
}

/// `diff -I '^//!' A B` as a student runs it (the `//!` header left out): lines changed in
/// all, out (`<`) and in (`>`).
fn diff_counts(a: &str, b: &str) -> [usize; 3] {
    let output = Command::new("diff")
        .args(["-I", "^//!", a, b])
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("run diff (diffutils)");
    assert!(
        output.status.code().is_some_and(|code| code <= 1),
        "diff {a} {b} failed"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let out = text.lines().filter(|l| l.starts_with('<')).count();
    let into = text.lines().filter(|l| l.starts_with('>')).count();
    [out + into, out, into]
}

/// The book quotes the size of each chapter's diff against its neighbour; a change to either
/// crate that moves the count must update the book, or this fails.
#[test]
fn every_quoted_diff_count_is_the_diff() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for (page, text) in book_pages() {
        for quoted in quoted_diffs(&text) {
            let Some((a, b)) = &quoted.files else {
                problems.push(format!(
                    "{}:{}: a diff count with no `diff A B` line before it",
                    page.display(),
                    quoted.line
                ));
                continue;
            };
            let actual = diff_counts(a, b);
            checked += 1;
            if actual != quoted.counts {
                let [n, out, into] = actual;
                problems.push(format!(
                    "{}:{}: quotes {:?} for diff {a} {b}; it is {n} changed lines ({out} out, \
                     {into} in)",
                    page.display(),
                    quoted.line,
                    quoted.counts
                ));
            }
        }
    }
    assert!(checked >= 5, "only {checked} quoted diff counts found");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The targets of the markdown links and pictures in `text`, `](target)`, in order.
fn link_targets(text: &str) -> Vec<&str> {
    let mut targets = Vec::new();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(&rest[..end]);
        }
    }
    targets
}

/// The inline code of a message (`` `like this` ``), backticks included, in order; fenced
/// blocks count whole. (`code_spans` below reads a page, for the man-page links.)
fn inline_code(text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
        let fence = &rest[start..start + ticks];
        let body = &rest[start + ticks..];
        let Some(end) = body.find(fence) else { break };
        spans.push(&rest[start..start + 2 * ticks + end]);
        rest = &body[end + ticks..];
    }
    spans
}

/// One message of a .po file: where it comes from (`#:`), its flags (`#,`), msgid and msgstr.
#[derive(Debug, Default)]
struct Message {
    pages: Vec<String>,
    fuzzy: bool,
    msgid: String,
    msgstr: String,
}

/// The messages of a .po file, header and obsolete (`#~`) entries left out.
fn po_messages(text: &str) -> Vec<Message> {
    fn unquote(line: &str) -> String {
        let inner = line.trim().trim_start_matches('"').trim_end_matches('"');
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        out
    }
    let mut messages = Vec::new();
    let mut current = Message::default();
    let mut field: Option<bool> = None; // Some(false): in msgid, Some(true): in msgstr
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(pages) = line.strip_prefix("#:") {
            current
                .pages
                .extend(pages.split_whitespace().map(str::to_owned));
        } else if let Some(flags) = line.strip_prefix("#,") {
            current.fuzzy |= flags.split(',').any(|flag| flag.trim() == "fuzzy");
        } else if let Some(rest) = line.strip_prefix("msgid ") {
            current.msgid = unquote(rest);
            field = Some(false);
        } else if let Some(rest) = line.strip_prefix("msgstr ") {
            current.msgstr = unquote(rest);
            field = Some(true);
        } else if line.starts_with('"') {
            match field {
                Some(false) => current.msgid.push_str(&unquote(line)),
                Some(true) => current.msgstr.push_str(&unquote(line)),
                None => {}
            }
        } else if line.trim().is_empty() {
            let done = std::mem::take(&mut current);
            if field.is_some() && !done.msgid.is_empty() {
                messages.push(done);
            }
            field = None;
        }
    }
    messages
}

fn zh_cn_messages() -> Vec<Message> {
    let path = workspace().join("docs/po/zh-CN.po");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let messages = po_messages(&text);
    assert!(
        messages.len() > 100,
        "only {} messages in docs/po/zh-CN.po",
        messages.len()
    );
    messages
}

/// A Chinese picture or included table may replace an English one by its translated copy:
/// `img/x.svg` may become `img/zh-CN/x.svg` (docs/diagrams.py draws both), and
/// `measurements/x.md` `measurements/zh-CN/x.md` (docs/measurements-zh.py writes it). Any other
/// target must stay as it is, up to the `#fragment`, which names a translated heading.
fn same_target(english: &str, chinese: &str) -> bool {
    let page = |target: &str| target.split('#').next().unwrap_or("").to_owned();
    let (english, chinese) = (page(english), page(chinese));
    if english == chinese {
        return true;
    }
    match english.rsplit_once('/') {
        Some((dir, file)) => chinese == format!("{dir}/zh-CN/{file}"),
        None => chinese == format!("zh-CN/{english}"),
    }
}

#[test]
fn zh_cn_translation_keeps_code_includes_and_links() {
    let mut problems = Vec::new();
    let mut translated = 0;
    for message in zh_cn_messages() {
        let (english, chinese) = (&message.msgid, &message.msgstr);
        if chinese.is_empty() || message.fuzzy {
            // Untranslated, or its English changed: the Chinese edition shows the English until
            // someone translates it again (docs/build says so).
            continue;
        }
        translated += 1;
        let page = message
            .pages
            .first()
            .map_or("docs/po/zh-CN.po", String::as_str);
        let specs = |text: &str| -> Vec<String> {
            includes(Path::new(page), text)
                .into_iter()
                .map(|i| i.spec)
                .collect()
        };
        let (want, have) = (specs(english), specs(chinese));
        if want.len() != have.len() || want.iter().zip(&have).any(|(e, c)| !same_target(e, c)) {
            problems.push(format!("{page}: the includes differ in {chinese:?}"));
        }
        // The same code, each piece at least once (a translation may name a call twice).
        let (mut want, mut have) = (inline_code(english), inline_code(chinese));
        for spans in [&mut want, &mut have] {
            spans.sort_unstable();
            spans.dedup();
        }
        if want != have {
            problems.push(format!(
                "{page}: the code differs: {english:?} has {want:?}, the translation {have:?}"
            ));
        }
        let (want, have) = (link_targets(english), link_targets(chinese));
        let unmatched: Vec<&&str> = have
            .iter()
            .filter(|c| !want.iter().any(|e| same_target(e, c)))
            .collect();
        if want.len() != have.len() || !unmatched.is_empty() {
            problems.push(format!(
                "{page}: the links differ: {english:?} has {want:?}, the translation {have:?}"
            ));
        }
    }
    assert!(translated > 0, "nothing translated in docs/po/zh-CN.po");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn zh_cn_links_pictures_and_includes_exist() {
    let src = workspace().join("docs/src");
    let messages = zh_cn_messages();
    let translate = |english: &str| -> String {
        messages
            .iter()
            .find(|m| m.msgid == english && !m.msgstr.is_empty() && !m.fuzzy)
            .map_or_else(|| english.to_owned(), |m| m.msgstr.clone())
    };
    // The ids of a page's headings in the Chinese edition: its headings, translated.
    let zh_heading_ids = |file: &Path| -> Vec<String> {
        let text = fs::read_to_string(file).expect("read a chapter");
        let mut ids = Vec::new();
        let mut in_code = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
            }
            if let Some(title) = line.strip_prefix('#').filter(|_| !in_code) {
                let title = title.trim_start_matches('#').trim();
                ids.extend(heading_ids(&format!("# {}", translate(title))));
            }
        }
        ids
    };
    let mut problems = Vec::new();
    let mut checked = 0;
    for message in messages.iter().filter(|m| !m.fuzzy) {
        // The files a translation includes: the English ones, or their translated copies.
        for include in includes(Path::new("docs/po/zh-CN.po"), &message.msgstr) {
            let file = include.spec.split(':').next().unwrap_or("");
            for page in &message.pages {
                let page = workspace().join("docs").join(page);
                checked += 1;
                if !page.parent().unwrap_or(&src).join(file).exists() {
                    problems.push(format!(
                        "{}: the translation includes {file}, which does not exist",
                        page.display()
                    ));
                }
            }
        }
        for target in link_targets(&message.msgstr) {
            let (target, fragment) = match target.split_once('#') {
                Some((target, fragment)) => (target, Some(fragment)),
                None => (target, None),
            };
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            for page in &message.pages {
                let page = workspace().join("docs").join(page);
                let file = match target {
                    "" => page.clone(),
                    _ => page.parent().unwrap_or(&src).join(target),
                };
                checked += 1;
                if !file.exists() {
                    problems.push(format!(
                        "{}: the translation links to {target}, which does not exist",
                        page.display()
                    ));
                } else if let Some(fragment) = fragment
                    && file.extension().is_some_and(|ext| ext == "md")
                    && !zh_heading_ids(&file).iter().any(|id| id == fragment)
                {
                    problems.push(format!(
                        "{}: the translation links to {target}#{fragment}, not a heading of the \
                         Chinese {target} (its ids: {:?})",
                        page.display(),
                        zh_heading_ids(&file)
                    ));
                }
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} links checked in docs/po/zh-CN.po"
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_parsers_find_what_they_should() {
    // The helpers above decide what the other tests check; a parser that finds nothing would
    // let a broken book pass. Check them on known input.
    let page = Path::new("docs/src/x.md");
    let text = "{{#include ../../a.rs:wait}}\n\\{{#include skip.rs}}\n\
                x {{#rustdoc_include b.rs:10:20}} {{#include c.rs}}\n{{#title T}}";
    let specs: Vec<String> = includes(page, text).into_iter().map(|i| i.spec).collect();
    assert_eq!(specs, ["../../a.rs:wait", "b.rs:10:20", "c.rs"]);

    let source = "// ANCHOR: wait_more\n// ANCHOR: wait\nx\n// ANCHOR_END: wait\n";
    assert_eq!(has_anchor(source, "wait"), (true, true));
    assert_eq!(has_anchor(source, "wait_more"), (true, false));
    assert_eq!(has_anchor(source, "wai"), (false, false));

    let runs = cargo_runs(
        "`cargo run -p select -- -v` and cargo run --release -p bench -- report\n\
         (cargo run -q --package client); cargo run -- -p nothing; cargo run -p NAME",
    );
    let names: Vec<&str> = runs.iter().map(|run| run.name.as_str()).collect();
    assert_eq!(names, ["select", "bench", "client", "NAME"]);

    let runs = cargo_runs(
        "`cargo run -p epoll -- --edge -v` | cargo run -q -p client -- 127.0.0.1:1 # c\n\
         cargo run -p NAME -- [OPTIONS] [ADDR]; cargo run -p select -- --workers N\n\
         cargo run -p select; printf x | cargo run -p poll -- -v > out\n\
         `cargo run -p conformance -- --spawn 'python3 s.py {port}' --plain` \"cargo run -p x\"",
    );
    let runs: Vec<(usize, &str, &[String])> = runs
        .iter()
        .filter_map(|run| Some((run.line, run.name.as_str(), run.checkable_args()?)))
        .collect();
    let expected = [
        (1, "epoll", vec!["--edge", "-v"]),
        (1, "client", vec!["127.0.0.1:1"]),
        (3, "poll", vec!["-v"]),
        (
            4,
            "conformance",
            vec!["--spawn", "python3 s.py {port}", "--plain"],
        ),
    ];
    assert_eq!(runs.len(), expected.len(), "{runs:?}");
    for ((line, name, args), (want_line, want_name, want_args)) in runs.iter().zip(expected) {
        assert_eq!((*line, *name), (want_line, want_name));
        assert_eq!(*args, want_args);
    }

    let ids = heading_ids("# I/O with `select`\n```sh\n# not a heading\n```\n### Phase 1: wait\n");
    assert_eq!(ids, ["io-with-select", "phase-1-wait"]);

    let quoted = quoted_diffs(
        "```text\ndiff a.rs b.rs\n```\nIt is 12 changed lines (5\nout, 7 in), then\n\
         diff -u x y\nand 3 changed lines (1 out, 2 in).",
    );
    let files = Some(("a.rs".to_owned(), "b.rs".to_owned()));
    assert_eq!(
        quoted,
        [
            QuotedDiff {
                line: 4,
                files,
                counts: [12, 5, 7]
            },
            QuotedDiff {
                line: 7,
                files: None,
                counts: [3, 1, 2]
            },
        ]
    );

    assert_eq!(
        link_targets("[a](x.md#y), ![b](img/c.svg) and [d]()"),
        ["x.md#y", "img/c.svg", ""]
    );
    assert_eq!(
        inline_code("`a` and ``b ` c`` then `unclosed"),
        ["`a`", "``b ` c``"]
    );
    assert!(same_target("img/a.svg", "img/zh-CN/a.svg") && same_target("x.md#a", "x.md#b"));
    assert!(!same_target("x.md", "y.md") && !same_target("img/a.svg", "img/b.svg"));
    let po = "msgid \"\"\nmsgstr \"header\"\n\n#: src/a.md src/b.md\n#, fuzzy\nmsgid \"\"\n\
              \"two \\\"lines\\\"\\n\"\n\"joined\"\nmsgstr \"两行\"\n\n#~ msgid \"old\"\n#~ msgstr \"旧\"\n";
    let messages = po_messages(po);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].pages, ["src/a.md", "src/b.md"]);
    assert!(messages[0].fuzzy);
    assert_eq!(messages[0].msgid, "two \"lines\"\njoined");
    assert_eq!(messages[0].msgstr, "两行");

    assert_eq!(without_comments("a<!-- cargo run -p x -->b"), "ab");
    assert!(is_real("select") && !is_real("no-such-crate"));
}

// ---------------------------------------------------------------------------------------------
// The book's conventions for readers: captions on included code, man-page links, plot captions,
// an answer for every exercise. (Summarised at the top of this file and in docs/CONTRIBUTING.md.)

/// The line that goes above a code block including `spec` (`../../select/src/main.rs:wait`):
/// the file, linked relative to the page (so that it opens the file in a clone, from the built
/// book in docs/book/ as from docs/src/), and the region.
fn caption_for(spec: &str) -> String {
    let (path, region) = match spec.split_once(':') {
        Some((path, region)) => (path.trim(), region.trim()),
        None => (spec.trim(), ""),
    };
    let shown = path.trim_start_matches("../");
    let region = if region.is_empty() {
        String::new()
    } else if region.starts_with(|c: char| c.is_ascii_digit() || c == ':') {
        format!(" — lines {region}")
    } else {
        format!(" — <code>{region}</code>")
    };
    format!("<div class=\"code-caption\"><a href=\"{path}\">{shown}</a>{region}</div>")
}

#[test]
fn every_included_region_has_its_caption() {
    let mut problems = Vec::new();
    let mut captioned = 0;
    for (page, text) in book_pages() {
        let lines: Vec<&str> = text.lines().collect();
        for include in includes(&page, &text) {
            // Only code: `{{#include measurements/x.md}}` outside a fence is text.
            let fence = include.line.checked_sub(2).map(|i| lines[i].trim_start());
            if !fence.is_some_and(|l| l.starts_with("```")) {
                continue;
            }
            let want = caption_for(&include.spec);
            let above = |back: usize| include.line.checked_sub(back).map(|i| lines[i].trim());
            if above(3) == Some("") && above(4) == Some(want.as_str()) {
                captioned += 1;
                continue;
            }
            problems.push(format!(
                "{}:{}: the code block including {} needs its caption: put this line, then a \
                 blank line, right above its ```:\n    {want}",
                page.display(),
                include.line - 1,
                include.spec
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(captioned >= 10, "only {captioned} captioned includes found");
}

/// System calls and library functions the book names, and their manual sections. The first
/// mention of each in a page, written `name` (in backticks), is a link to its page on man7.org:
/// [`select`](https://man7.org/linux/man-pages/man2/select.2.html). Add a name here when a
/// chapter starts naming a new call.
const MAN_PAGES: &[(&str, u8)] = &[
    ("accept", 2),
    ("accept4", 2),
    ("aio", 7),
    ("aio_cancel", 3),
    ("aio_error", 3),
    ("aio_read", 3),
    ("aio_return", 3),
    ("aio_suspend", 3),
    ("aio_write", 3),
    ("bind", 2),
    ("close", 2),
    ("connect", 2),
    ("epoll", 7),
    ("epoll_create1", 2),
    ("epoll_ctl", 2),
    ("epoll_pwait", 2),
    ("epoll_wait", 2),
    ("eventfd", 2),
    ("fcntl", 2),
    ("fork", 2),
    ("io_submit", 2),
    ("io_uring", 7),
    ("io_uring_enter", 2),
    ("io_uring_setup", 2),
    ("listen", 2),
    ("mmap", 2),
    ("pipe", 2),
    ("poll", 2),
    ("ppoll", 2),
    ("pselect", 2),
    ("read", 2),
    ("recv", 2),
    ("recvfrom", 2),
    ("select", 2),
    ("send", 2),
    ("sendto", 2),
    ("shutdown", 2),
    ("sigaction", 2),
    ("signalfd", 2),
    ("sigpending", 2),
    ("sigprocmask", 2),
    ("sigtimedwait", 2),
    ("sigwait", 3),
    ("sigwaitinfo", 2),
    ("socket", 2),
    ("waitpid", 2),
    ("write", 2),
];

fn man_url(name: &str, section: u8) -> String {
    format!("https://man7.org/linux/man-pages/man{section}/{name}.{section}.html")
}

/// `text` with every `<!-- ... -->` comment blanked out, newlines kept (so line numbers hold).
fn blank_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("-->")
            .map_or(rest.len(), |e| start + e + 3);
        out.extend(
            rest[start..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One `code span` of a page's prose (fenced blocks and headings skipped): its line, its text,
/// and the target of the link it is the text of, if it is one (`[`x`](target)`).
struct Span {
    line: usize,
    text: String,
    link: Option<String>,
    /// In a table row (`| ... |`), where a column may list crates rather than calls.
    in_table: bool,
    /// The text right after the span (` crate`, ` server`: a crate's name, not a call's).
    after: String,
}

fn code_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut in_code = false;
    for (index, line) in blank_comments(text).lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        let mut offset = 0;
        while let Some(open) = rest.find('`') {
            let Some(len) = rest[open + 1..].find('`') else {
                break;
            };
            let close = open + 1 + len;
            let before = line[..offset + open].chars().next_back();
            let after = &line[offset + close + 1..];
            let link = (before == Some('['))
                .then(|| after.strip_prefix("]("))
                .flatten()
                .and_then(|t| t.split_once(')'))
                .map(|(target, _)| target.to_owned());
            spans.push(Span {
                line: index + 1,
                text: rest[open + 1..close].to_owned(),
                link,
                in_table: line.trim_start().starts_with('|'),
                after: after.chars().take(8).collect(),
            });
            offset += close + 1;
            rest = &line[offset..];
        }
    }
    spans
}

/// The listed call a code span names: `select` or `select(2)`.
fn man_page_of(span: &str) -> Option<(&'static str, u8)> {
    MAN_PAGES
        .iter()
        .copied()
        .find(|&(name, section)| span == name || span == format!("{name}({section})"))
}

#[test]
fn every_page_links_its_first_mention_of_each_call_to_its_man_page() {
    let mut problems = Vec::new();
    let mut linked = 0;
    let crates = members();
    // `select` is a call and a crate: in a table (a column of crates) or before "crate" or
    // "server", a crate's name is not a mention of the call.
    let names_a_crate = |span: &Span| {
        crates.contains(&span.text)
            && (span.in_table
                || span.after.starts_with(" crate")
                || span.after.starts_with(" server"))
    };
    for (page, text) in book_pages() {
        // measurements/*.md are written by `bench report` (and measurements/zh-CN/*.md
        // translated from them); they are checked where included.
        let generated = |d: &Path| d.ends_with("measurements") || d.ends_with("measurements/zh-CN");
        if page.parent().is_some_and(generated) || page.ends_with("SUMMARY.md") {
            continue;
        }
        let mut seen: Vec<&str> = Vec::new();
        for span in code_spans(&text) {
            let Some((name, section)) = man_page_of(&span.text) else {
                continue;
            };
            let url = man_url(name, section);
            match &span.link {
                // A link elsewhere (`[`select`](select.md)`, the chapter) is not a mention.
                Some(target) if !target.starts_with("https://man7.org/") => continue,
                None if names_a_crate(&span) => continue,
                Some(target) if *target != url => problems.push(format!(
                    "{}:{}: `{name}` links to {target}; its man page is {url}",
                    page.display(),
                    span.line
                )),
                Some(_) => linked += 1,
                None if !seen.contains(&name) => problems.push(format!(
                    "{}:{}: first mention of `{name}` in this page: write it as a link to its \
                     man page, [`{}`]({url}) (or add the call to MAN_PAGES in \
                     conformance/tests/book.rs if it is not a call)",
                    page.display(),
                    span.line,
                    span.text
                )),
                None => {}
            }
            seen.push(name);
        }
        // Any other man7.org link: the URL pattern, and a page in the list.
        for (index, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("](https://man7.org/") {
                let target = &line[at + 2..];
                let target = &target[..target.find(')').unwrap_or(target.len())];
                let known = MAN_PAGES
                    .iter()
                    .any(|&(name, section)| man_url(name, section) == target);
                if !known {
                    problems.push(format!(
                        "{}:{}: {target} is not https://man7.org/linux/man-pages/manN/NAME.N.html \
                         for a NAME(N) in MAN_PAGES (conformance/tests/book.rs)",
                        page.display(),
                        index + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(linked >= 20, "only {linked} man-page links found");
}

/// The exercises of a page: the numbers of the top-level items (`1. `, at the start of a line)
/// of its `## Exercises` section.
fn exercises(text: &str) -> Vec<u32> {
    let mut numbers = Vec::new();
    let mut inside = false;
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        if line.starts_with("# ") || line.starts_with("## ") {
            inside = line.trim() == "## Exercises";
            continue;
        }
        if inside
            && let Some((number, _)) = line.split_once(". ")
            && let Ok(n) = number.parse()
        {
            numbers.push(n);
        }
    }
    numbers
}

/// The answers in answers.md: headings `### STEM N: title`, STEM the exercise's page without
/// `.md` (`### blocking 2: The pool's limit`).
fn answers(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("### ")?;
            let (key, _) = rest.split_once(':').unwrap_or((rest, ""));
            let (stem, n) = key.trim().rsplit_once(' ')?;
            Some((stem.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[test]
fn every_exercise_has_an_answer() {
    let src = workspace().join("docs/src");
    let answers_page = src.join("answers.md");
    let given = answers(&fs::read_to_string(&answers_page).expect("docs/src/answers.md"));
    let mut problems = Vec::new();
    let mut asked = Vec::new();
    for (page, text) in book_pages() {
        let stem = page
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let numbers = exercises(&text);
        for (k, &n) in numbers.iter().enumerate() {
            if n as usize != k + 1 {
                problems.push(format!(
                    "{}: exercise {n} is item {} of `## Exercises`: number them 1, 2, 3…",
                    page.display(),
                    k + 1
                ));
            }
            if !given.iter().any(|(s, m)| *s == stem && *m == n) {
                problems.push(format!(
                    "{}: exercise {n} has no answer: add `### {stem} {n}: <its title>` and the \
                     answer (expected result, why, and the output if it asks to run something) \
                     to docs/src/answers.md",
                    page.display()
                ));
            }
            asked.push((stem.clone(), n));
        }
    }
    for (stem, n) in &given {
        if !asked.contains(&(stem.clone(), *n)) {
            problems.push(format!(
                "docs/src/answers.md: `### {stem} {n}` answers no exercise (is there an item {n} \
                 under `## Exercises` in docs/src/{stem}.md?)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(asked.len() >= 20, "only {} exercises found", asked.len());
}

#[test]
fn every_plot_has_a_caption() {
    let mut problems = Vec::new();
    for (page, text) in book_pages() {
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            // `![alt](measurements/x.svg)`, or linked to itself for a tap to open it whole:
            // `[![alt](measurements/x.svg)](measurements/x.svg)`.
            if !(line.contains("![") && line.contains("](measurements/")) {
                continue;
            }
            let next = lines[index + 1..].iter().find(|l| !l.trim().is_empty());
            if next.is_none_or(|l| l.trim() != "<div class=\"figure-caption\">") {
                problems.push(format!(
                    "{}:{}: a plot needs its caption, one sentence saying what to see, after a \
                     blank line: <div class=\"figure-caption\">, a blank line, What to see: …, \
                     a blank line, </div> (the sentence as markdown, for the Chinese edition's \
                     gettext, which does not translate HTML)",
                    page.display(),
                    index + 1
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_convention_parsers_find_what_they_should() {
    assert_eq!(
        caption_for("../../select/src/main.rs:handle_client_data"),
        "<div class=\"code-caption\"><a href=\"../../select/src/main.rs\">select/src/main.rs</a> \
         — <code>handle_client_data</code></div>"
    );
    assert!(caption_for("../../a.rs:10:20").ends_with("a.rs</a> — lines 10:20</div>"));
    let spans = code_spans(
        "a `read` and [`select`](select.md)\n```\n`poll`\n```\n# `epoll`\n\
         <!-- `write` -->[`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html)",
    );
    let seen: Vec<(usize, &str, Option<&str>)> = spans
        .iter()
        .map(|s| (s.line, s.text.as_str(), s.link.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, "read", None),
            (1, "select", Some("select.md")),
            (
                6,
                "poll(2)",
                Some("https://man7.org/linux/man-pages/man2/poll.2.html")
            ),
        ]
    );
    assert_eq!(man_page_of("poll(2)"), Some(("poll", 2)));
    assert_eq!(man_page_of("poll(7)"), None);
    assert_eq!(
        exercises("## Exercises\n\n1. a\n   2. no\n2. b\n```\n3. no\n```\n## Next\n4. no"),
        [1, 2]
    );
    assert_eq!(
        answers("### blocking 2: The pool\n### x\n## blocking 3\n### select 10"),
        [("blocking".to_owned(), 2), ("select".to_owned(), 10)]
    );
}
