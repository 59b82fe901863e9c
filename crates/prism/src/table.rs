//! The table flags of list commands (`--columns`, `-x`, `--filter`, `--sort`, `--no-header`,
//! `--no-truncate`, `--csv`, `--output csv|json|yaml`) and the output they produce.

use std::io::{IsTerminal, Write};

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Csv,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Default, Args)]
pub struct TableFlags {
    /// Only show these columns (comma-separated keys)
    #[arg(long, value_name = "a,b")]
    pub columns: Option<String>,
    /// Show extra columns
    #[arg(short = 'x', long)]
    pub extended: bool,
    /// Keep rows whose column matches a regular expression, e.g. --filter 'name=^Ada'
    #[arg(long, value_name = "key=regex")]
    pub filter: Option<String>,
    /// Sort by a column (prefix with '-' for descending)
    #[arg(long, value_name = "key", allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// Hide the table header
    #[arg(long)]
    pub no_header: bool,
    /// Do not truncate rows to the terminal width
    #[arg(long)]
    pub no_truncate: bool,
    /// Output CSV (same as --output csv)
    #[arg(long, conflicts_with = "output")]
    pub csv: bool,
    /// Output format instead of a table
    #[arg(long, value_enum)]
    pub output: Option<Format>,
}

/// A column: its key (used by the flags and in JSON) and header.
pub struct Column {
    pub key: &'static str,
    pub header: &'static str,
    pub extended: bool,
}

fn find<'a>(columns: &'a [Column], key: &str) -> Result<(usize, &'a Column)> {
    columns
        .iter()
        .enumerate()
        .find(|(_, c)| c.key.eq_ignore_ascii_case(key) || c.header.eq_ignore_ascii_case(key))
        .ok_or_else(|| {
            let known: Vec<&str> = columns.iter().map(|c| c.key).collect();
            Error::new(format!(
                "Unknown column '{key}'; the columns are: {}.",
                known.join(", ")
            ))
        })
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Renders `rows` (each with one value per column of `columns`) as the flags ask.
pub fn render(
    columns: &[Column],
    mut rows: Vec<Vec<String>>,
    flags: &TableFlags,
) -> Result<String> {
    let shown: Vec<usize> = match &flags.columns {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| find(columns, k).map(|(i, _)| i))
            .collect::<Result<_>>()?,
        None => (0..columns.len())
            .filter(|&i| flags.extended || !columns[i].extended)
            .collect(),
    };
    if let Some(filter) = &flags.filter {
        let (key, pattern) = filter
            .split_once('=')
            .ok_or_else(|| Error::new(format!("--filter takes 'key=regex', not '{filter}'.")))?;
        let (index, _) = find(columns, key.trim())?;
        let regex = regex_lite::Regex::new(pattern)
            .map_err(|e| Error::new(format!("--filter: invalid regular expression: {e}")))?;
        rows.retain(|row| row.get(index).is_some_and(|v| regex.is_match(v)));
    }
    if let Some(sort) = &flags.sort {
        let (descending, key) = match sort.strip_prefix('-') {
            Some(key) => (true, key),
            None => (false, sort.as_str()),
        };
        let (index, _) = find(columns, key)?;
        rows.sort_by(|a, b| {
            let order = a[index].to_lowercase().cmp(&b[index].to_lowercase());
            if descending { order.reverse() } else { order }
        });
    }
    let format = if flags.csv {
        Some(Format::Csv)
    } else {
        flags.output
    };
    let mut out = String::new();
    match format {
        Some(Format::Json) | Some(Format::Yaml) => {
            let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
                .iter()
                .map(|row| {
                    shown
                        .iter()
                        .map(|&i| (columns[i].key.to_owned(), row[i].clone().into()))
                        .collect()
                })
                .collect();
            out = if format == Some(Format::Json) {
                serde_json::to_string_pretty(&objects)
                    .map_err(|e| Error::new(format!("cannot encode JSON: {e}")))?
                    + "\n"
            } else {
                serde_norway::to_string(&objects)
                    .map_err(|e| Error::new(format!("cannot encode YAML: {e}")))?
            };
        }
        Some(Format::Csv) => {
            let mut lines = Vec::new();
            if !flags.no_header {
                lines.push(
                    shown
                        .iter()
                        .map(|&i| csv_field(columns[i].header))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            for row in &rows {
                lines.push(
                    shown
                        .iter()
                        .map(|&i| csv_field(&row[i]))
                        .collect::<Vec<_>>()
                        .join(","),
                );
            }
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        None => {
            let widths: Vec<usize> = shown
                .iter()
                .map(|&i| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain(std::iter::once(if flags.no_header {
                            0
                        } else {
                            columns[i].header.chars().count()
                        }))
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<&str>| -> String {
                let padded: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(cell, width)| {
                        let pad = width.saturating_sub(cell.chars().count());
                        format!("{cell}{}", " ".repeat(pad))
                    })
                    .collect();
                format!(" {}", padded.join(" ")).trim_end().to_owned()
            };
            let mut lines = Vec::new();
            if !flags.no_header {
                lines.push(line(shown.iter().map(|&i| columns[i].header).collect()));
                let rules: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
                lines.push(line(rules.iter().map(String::as_str).collect()));
            }
            for row in &rows {
                lines.push(line(shown.iter().map(|&i| row[i].as_str()).collect()));
            }
            let limit = (!flags.no_truncate && std::io::stdout().is_terminal()).then(|| {
                crate::env::var("COLUMNS")
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(120)
            });
            for line in lines {
                match limit {
                    Some(limit) if line.chars().count() > limit => {
                        let cut: String = line.chars().take(limit.saturating_sub(1)).collect();
                        out.push_str(&cut);
                        out.push('…');
                    }
                    _ => out.push_str(&line),
                }
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// Renders and prints.
pub fn print(columns: &[Column], rows: Vec<Vec<String>>, flags: &TableFlags) -> Result<()> {
    let text = render(columns, rows, flags)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::new(format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: &[Column] = &[
        Column {
            key: "id",
            header: "Id",
            extended: true,
        },
        Column {
            key: "name",
            header: "Name",
            extended: false,
        },
    ];

    fn rows() -> Vec<Vec<String>> {
        vec![
            vec!["2".into(), "Bob".into()],
            vec!["1".into(), "Ada, Countess".into()],
        ]
    }

    #[test]
    fn table_hides_extended_columns_and_sorts() -> Result<()> {
        let flags = TableFlags {
            sort: Some("name".into()),
            ..TableFlags::default()
        };
        let out = render(COLUMNS, rows(), &flags)?;
        assert_eq!(out, " Name\n ─────────────\n Ada, Countess\n Bob\n");
        Ok(())
    }

    #[test]
    fn csv_quotes_and_filters() -> Result<()> {
        let flags = TableFlags {
            csv: true,
            extended: true,
            filter: Some("name=^Ada".into()),
            ..TableFlags::default()
        };
        assert_eq!(
            render(COLUMNS, rows(), &flags)?,
            "Id,Name\n1,\"Ada, Countess\"\n"
        );
        Ok(())
    }

    #[test]
    fn json_has_string_values_of_chosen_columns() -> Result<()> {
        let flags = TableFlags {
            output: Some(Format::Json),
            columns: Some("id".into()),
            sort: Some("-id".into()),
            ..TableFlags::default()
        };
        let out: serde_json::Value = serde_json::from_str(&render(COLUMNS, rows(), &flags)?)
            .map_err(|e| Error::new(e.to_string()))?;
        assert_eq!(out, serde_json::json!([{"id": "2"}, {"id": "1"}]));
        Ok(())
    }

    #[test]
    fn unknown_column_is_an_error() {
        let flags = TableFlags {
            columns: Some("nope".into()),
            ..TableFlags::default()
        };
        assert!(render(COLUMNS, rows(), &flags).is_err());
    }
}
