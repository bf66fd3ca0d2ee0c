//! docs/cli.md's command table and the CLI's own command tree (clap's, what `--help` prints)
//! say the same, both ways: every subcommand has a row, every row names a subcommand that
//! exists, and each row's flags and positional arguments are the subcommand's. The flags every
//! command shares (`--nats`, `-o`, …) and the signing flags of the promoter's commands are
//! described in the page's prose, so the test asks that the page names each of them.

use std::collections::{BTreeMap, BTreeSet};

use baton::cli::Cli;
use clap::CommandFactory as _;

/// Flags the signing section documents for every promoter command rather than each row.
const SIGNING: [&str; 3] = ["actor", "key", "key-fingerprint"];

/// What a command takes: its long flags, its short flags (with the long flag each stands for)
/// and how many positional arguments.
#[derive(Debug, Default, PartialEq, Eq)]
struct Takes {
    long: BTreeSet<String>,
    short: BTreeMap<char, String>,
    positionals: usize,
}

/// Every leaf subcommand of clap's tree (`events`, `policy show`, …) and what it takes, leaving
/// out global flags, hidden ones, help and the signing flags.
fn clap_commands() -> BTreeMap<String, Takes> {
    fn walk(command: &clap::Command, path: &str, out: &mut BTreeMap<String, Takes>) {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = if path.is_empty() {
                sub.get_name().to_owned()
            } else {
                format!("{path} {}", sub.get_name())
            };
            if sub.has_subcommands() {
                walk(sub, &name, out);
                continue;
            }
            let mut takes = Takes::default();
            for arg in sub.get_arguments() {
                if arg.is_global_set() || arg.is_hide_set() || arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                if arg.is_positional() {
                    takes.positionals += 1;
                    continue;
                }
                let long = arg.get_long().unwrap_or_default();
                if SIGNING.contains(&long) {
                    continue;
                }
                takes.long.insert(long.to_owned());
                takes.short.extend(arg.get_short().map(|c| (c, long.to_owned())));
            }
            out.insert(name, takes);
        }
    }
    let mut out = BTreeMap::new();
    walk(&Cli::command(), "", &mut out);
    out
}

/// The `baton …` code spans of the first cell of each row of the page's command table.
fn documented_spans(page: &str) -> Vec<String> {
    let table = page
        .split("| command | what it shows or does |")
        .nth(1)
        .expect("docs/cli.md has the command table");
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .flat_map(|row| {
            let cell = row.trim_start_matches('|').split(" | ").next().unwrap_or_default();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .filter(|span| span.starts_with("baton "))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A span's command path (its leading words) and what it takes.
fn parse_span(span: &str, known: &BTreeMap<String, Takes>) -> (String, Takes) {
    let words: Vec<&str> = span.split_whitespace().skip(1).collect();
    let mut path = String::new();
    let mut rest = words.as_slice();
    while let Some((word, tail)) = rest.split_first() {
        let candidate = if path.is_empty() {
            (*word).to_owned()
        } else {
            format!("{path} {word}")
        };
        let leads = known
            .keys()
            .any(|k| *k == candidate || k.starts_with(&format!("{candidate} ")));
        if !word.chars().all(|c| c.is_ascii_lowercase() || c == '-') || (!path.is_empty() && !leads) {
            break;
        }
        path = candidate;
        rest = tail;
    }
    let mut takes = Takes::default();
    let mut in_flag = false;
    for word in rest {
        let bare = word.trim_start_matches('[').trim_end_matches(']');
        if let Some(long) = bare.strip_prefix("--") {
            takes.long.insert(long.to_owned());
            in_flag = word.starts_with('[') && !word.ends_with(']');
        } else if let Some(short) = bare.strip_prefix('-') {
            takes.short.extend(short.chars().map(|c| (c, String::new())));
            in_flag = word.starts_with('[') && !word.ends_with(']');
        } else if in_flag {
            // The flag's value, as in `[--since 1h]`.
            in_flag = !word.ends_with(']');
        } else if word.starts_with('<') || word.starts_with('[') {
            takes.positionals += 1;
        }
    }
    (path, takes)
}

#[test]
fn the_command_table_of_docs_cli_md_and_the_clis_commands_agree() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md")).expect("docs/cli.md reads");
    let commands = clap_commands();
    let mut documented = BTreeSet::new();
    let mut wrong = Vec::new();
    for span in documented_spans(&page) {
        let (path, takes) = parse_span(&span, &commands);
        let Some(actual) = commands.get(&path) else {
            wrong.push(format!("`{span}`: the CLI has no command `{path}`"));
            continue;
        };
        documented.insert(path.clone());
        // `-f` documents the flag it is short for.
        let mut long = takes.long.clone();
        long.extend(takes.short.keys().filter_map(|c| actual.short.get(c)).cloned());
        if long != actual.long {
            wrong.push(format!(
                "`{span}`: documents the flags {:?}, `baton {path} --help` has {:?}",
                long, actual.long
            ));
        }
        if let Some(c) = takes.short.keys().find(|c| !actual.short.contains_key(c)) {
            wrong.push(format!(
                "`{span}`: documents `-{c}`, which `baton {path} --help` does not have"
            ));
        }
        if takes.positionals != actual.positionals {
            wrong.push(format!(
                "`{span}`: documents {} positional arguments, `baton {path} --help` has {}",
                takes.positionals, actual.positionals
            ));
        }
    }
    for path in commands.keys().filter(|p| !documented.contains(*p)) {
        wrong.push(format!("`baton {path}` has no row in the command table"));
    }
    // The flags every command takes, and the signing flags: the page's prose names them.
    let global = Cli::command()
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
        .filter_map(|a| a.get_long())
        .map(str::to_owned)
        .collect::<Vec<_>>();
    for long in global.iter().map(String::as_str).chain(SIGNING) {
        if !page.contains(&format!("--{long}")) {
            wrong.push(format!("`--{long}` is not documented"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/cli.md and the CLI disagree:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_row_is_read_as_its_command_flags_and_arguments() {
    let commands = clap_commands();
    let (path, takes) = parse_span(
        "baton admin provision [--config-dir DIR] [--consumer-history skip\\|replay]",
        &commands,
    );
    assert_eq!(path, "admin provision");
    assert_eq!(
        takes.long,
        BTreeSet::from(["config-dir".to_owned(), "consumer-history".to_owned()])
    );
    assert_eq!(takes.positionals, 0);
    let (path, takes) = parse_span("baton logs <run> [--step S] [-f]", &commands);
    assert_eq!((path.as_str(), takes.positionals), ("logs", 1));
    assert_eq!(takes.short.keys().collect::<Vec<_>>(), [&'f']);
    let (path, takes) = parse_span("baton status [app]", &commands);
    assert_eq!((path.as_str(), takes.positionals), ("status", 1));
    assert!(takes.long.is_empty());
}
