//! The configuration reference, docs/configuration.md: rendered as Markdown from the clap
//! definition of `prismd` (every flag of every command, its variable, default and help) and the
//! list of variables that are read from the environment only.
//!
//! Written by hand over clap's `Command`/`Arg` accessors rather than with the clap-markdown
//! crate: clap-markdown (0.1.5) prints neither an argument's environment variable (only forks
//! of it do) nor anything that is not an argument, such as the environment-only variables, and
//! lays every command out as a page of prose where an operator wants one table per command.

use std::fmt::Write as _;

use clap::{Arg, ArgAction, Command};

/// The command that regenerates the file; named in the file itself and in the staleness test.
pub const REGENERATE: &str =
    "cargo run -p prismd -- reference configuration > docs/configuration.md";

/// A setting read from the environment only, never from a flag.
pub struct EnvOnly {
    /// The variable.
    pub name: &'static str,
    /// The commands that read it.
    pub read_by: &'static str,
    /// Its default, as Markdown; empty for none.
    pub default: &'static str,
    /// What it does, as Markdown.
    pub meaning: &'static str,
}

/// The whole of docs/configuration.md.
pub fn configuration(cli: &Command, env_only: &[EnvOnly]) -> String {
    let name = cli.get_name().to_owned();
    let mut sections: Vec<(String, String)> = Vec::new();

    let globals: Vec<&Arg> = documented_args(cli).filter(|a| a.is_global_set()).collect();
    let mut body = String::from(
        "Flags that every command takes, before or after the command's name \
         (`prismd --data-dir /srv/prism users list` or `prismd users list --data-dir /srv/prism`).\n\n",
    );
    flag_table(&mut body, &globals);
    sections.push(("Every command".to_owned(), body));

    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        command_sections(&mut sections, &name, sub);
    }

    let mut body = String::from(
        "Read from the environment only, never from a flag: a command line is visible to every \
         local user.\n\n",
    );
    body.push_str("| variable | read by | default | meaning |\n|---|---|---|---|\n");
    for var in env_only {
        let _ = writeln!(
            body,
            "| `{}` | {} | {} | {} |",
            var.name,
            cell(var.read_by),
            cell(var.default),
            cell(var.meaning)
        );
    }
    sections.push(("Environment only".to_owned(), body));

    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the command-line definition of `{name}` (crates/prismd/src/main.rs \
         and admin.rs) by `{REGENERATE}`. Do not edit: change the help texts there and run it \
         again; a test fails while this file is stale. -->\n"
    );
    out.push_str(
        "Every setting of `prismd` is a flag with an environment variable beside it; a flag on \
         the command line wins over its variable. A few settings are read from the environment \
         only (see [Environment only](#environment-only)). Durations take `30s`, `15m`, `12h`, \
         `7d`. A switch (a flag without a value, such as `--dev-tls`) is on when given, or when \
         its variable is `true` (`false` leaves it off; other values are refused).\n\n",
    );
    out.push_str(
        "The settings are explained with their topics: \
         [signing keys and rotation](operating.md#signing-keys-and-rotation), \
         [encryption of signing keys at rest](operating.md#encryption-of-signing-keys-at-rest), \
         [background cleanup](operating.md#background-cleanup), [metrics](operating.md#metrics), \
         [when the database is unavailable](operating.md#when-the-database-is-unavailable), \
         [the abuse limits](security.md#limits) and [the audit actions](security.md#audit-trail). \
         Running the server is described in [operating.md](operating.md), several replicas in \
         [deployment.md](deployment.md).\n\n",
    );
    for (title, _) in &sections {
        let _ = writeln!(out, "- [{title}](#{})", anchor(title));
    }
    for (title, body) in &sections {
        let _ = write!(out, "\n## {title}\n\n{body}");
    }
    out
}

/// One section per command that has flags of its own or no subcommands, depth first.
fn command_sections(sections: &mut Vec<(String, String)>, parent: &str, command: &Command) {
    let path = format!("{parent} {}", command.get_name());
    let args: Vec<&Arg> = documented_args(command).collect();
    let subcommands: Vec<&Command> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .collect();
    if !args.is_empty() || subcommands.is_empty() {
        let mut body = String::new();
        if let Some(about) = command.get_long_about().or(command.get_about()) {
            let _ = writeln!(body, "{}\n", sentence(&about.to_string()));
        }
        if args.is_empty() {
            body.push_str("No flags of its own.\n");
        } else {
            flag_table(&mut body, &args);
        }
        sections.push((format!("`{path}`"), body));
    }
    for sub in subcommands {
        command_sections(sections, &path, sub);
    }
}

/// The arguments a reader can set: not hidden, not clap's own help and version.
fn documented_args(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
}

fn flag_table(out: &mut String, args: &[&Arg]) {
    out.push_str("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in args {
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | {env} | {} | {} |",
            flag(arg),
            default(arg),
            cell(&meaning(arg))
        );
    }
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// `--listen <LISTEN>`, `-x, --extended`, `<NAME>` for a positional argument.
fn flag(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    if names.is_empty() {
        return value;
    }
    let names = names.join(", ");
    if is_switch(arg) {
        names
    } else {
        format!("{names} {value}")
    }
}

fn default(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !values.is_empty() {
        return format!("`{}`", values.join(","));
    }
    if is_switch(arg) {
        "off".to_owned()
    } else if arg.is_required_set() {
        "required".to_owned()
    } else {
        String::new()
    }
}

/// The long help (or the help), with the choices of an enumerated value.
fn meaning(arg: &Arg) -> String {
    let mut text = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| sentence(&h.to_string()))
        .unwrap_or_default();
    if !is_switch(arg) {
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !choices.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            let _ = write!(text, "One of {}.", choices.join(", "));
        }
    }
    text
}

/// clap's derive drops the final period of a one-sentence doc comment; the reference prints
/// full sentences.
fn sentence(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() || text.ends_with(['.', '!', '?', ':']) {
        return text.to_owned();
    }
    format!("{text}.")
}

/// Text fit for one table cell: one line, `|` escaped, and `<`/`>` outside code spans written
/// as entities so that `<listen>` is not taken for an HTML tag.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    let mut last_space = false;
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' | ' ' => {
                if !last_space {
                    out.push(' ');
                }
                last_space = true;
                continue;
            }
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
        last_space = false;
    }
    out.trim().to_owned()
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn anchor(title: &str) -> String {
    title
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_line_and_escape_markup_outside_code() {
        assert_eq!(
            cell("a <b>\n\nc | `<d>` `x|y`"),
            "a &lt;b&gt; c \\| `<d>` `x\\|y`"
        );
    }

    #[test]
    fn sentences_end_with_a_period() {
        assert_eq!(sentence("Run the server"), "Run the server.");
        assert_eq!(sentence("Done."), "Done.");
        assert_eq!(sentence("A (see below)"), "A (see below).");
        assert_eq!(sentence(""), "");
    }

    #[test]
    fn anchors_follow_github() {
        assert_eq!(anchor("`prismd users add`"), "prismd-users-add");
        assert_eq!(anchor("Environment only"), "environment-only");
        assert_eq!(anchor("`prismd keys rewrap`"), "prismd-keys-rewrap");
    }
}
