//! Output of the client subcommands: aligned text tables for people,
//! JSON for scripts, written to stdout once a command has its answer.

use std::io::Write;

use clap::{Args, ValueEnum};
use serde_json::Value;

/// `--format` of the commands that print a report.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON document.
    Json,
}

/// The `--format` flag.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output: a table, or JSON.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub format: Format,
}

/// A report in both shapes; `emit` prints the one `--format` asks for.
pub struct Report {
    pub text: String,
    pub json: Value,
}

impl Report {
    pub fn emit(&self, format: Format) {
        match format {
            Format::Table => write_stdout(self.text.as_bytes()),
            Format::Json => {
                let mut text = serde_json::to_string_pretty(&self.json).unwrap_or_default();
                text.push('\n');
                write_stdout(text.as_bytes());
            }
        }
    }
}

/// Writes to stdout. A closed pipe (`| head`) is not an error: the reader
/// has what it wanted.
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Columns separated by two spaces, each as wide as its widest cell; the
/// last column is not padded.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.headers.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len() - 1;
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                out.push_str(cell);
                if i < last {
                    let pad = width - cell.chars().count() + 2;
                    out.extend(std::iter::repeat(' ').take(pad));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `1,2,3` of a list of ids.
pub fn id_list(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

/// An offset, or `-` when there is none (Kafka's negative sentinels).
pub fn offset_cell(offset: i64) -> String {
    if offset < 0 {
        "-".to_string()
    } else {
        offset.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_and_does_not_pad_the_last_column() {
        let mut t = Table::new(&["TOPIC", "PARTITIONS"]);
        t.row(vec!["orders".into(), "3".into()]);
        t.row(vec!["a".into(), "12".into()]);
        assert_eq!(t.render(), "TOPIC   PARTITIONS\norders  3\na       12\n");
    }
}
