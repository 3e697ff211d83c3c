//! Turning answers into text: tables for people, JSON / YAML (proto3 JSON
//! mapping, via pbjson serde) and `kind/name` for scripts.
use clap::ValueEnum;
use hostplane_proto::v1::{self, Resource};
use serde::Serialize;

use crate::error::Error;

mod table;

pub use table::{TableWriter, age, header, row, watts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// proto3 JSON (a list prints as an array; watch prints one event per line).
    Json,
    /// proto3 JSON mapping as YAML (a list prints as a sequence; watch prints one document per event).
    Yaml,
    /// `kind/name`, one per line.
    Name,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Name => "name",
        }
    }
}

/// `node/n1`.
pub fn kind_name(r: &Resource) -> String {
    format!("{}/{}", r.kind().noun(), r.name())
}

/// A message as pretty JSON or YAML (each ends with a newline).
pub fn serialized<T: Serialize>(value: &T, format: Format) -> Result<String, Error> {
    let fail = |reason: String| Error::Render {
        format: format.as_str(),
        reason,
    };
    match format {
        Format::Yaml => serde_norway::to_string(value).map_err(|e| fail(e.to_string())),
        Format::Json | Format::Table | Format::Name => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| fail(e.to_string())),
    }
}

/// One object, as `get` prints it.
pub fn one(r: &Resource, format: Format, now_ms: i64) -> Result<String, Error> {
    match format {
        // A single object prints as an object, not a one-element list.
        Format::Json | Format::Yaml => serialized(r, format),
        Format::Table | Format::Name => list(std::slice::from_ref(r), format, now_ms),
    }
}

/// Several objects, as `list` prints them. Mixed kinds print one table per kind.
pub fn list(items: &[Resource], format: Format, now_ms: i64) -> Result<String, Error> {
    match format {
        Format::Json | Format::Yaml => serialized(&items, format),
        Format::Name => Ok(items.iter().map(|r| kind_name(r) + "\n").collect()),
        Format::Table => {
            let mut out = String::new();
            for kind in v1::Kind::ALL
                .into_iter()
                .filter(|k| items.iter().any(|r| r.kind() == *k))
            {
                if !out.is_empty() {
                    out.push('\n');
                }
                let mut t = TableWriter::new(header(kind).iter().map(|s| s.to_string()).collect());
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .filter(|r| r.kind() == kind)
                    .map(|r| row(r, now_ms))
                    .collect();
                out.push_str(&t.render(&rows));
            }
            Ok(out)
        }
    }
}

/// The result of a call that changed an object: `node/n1 created` in a table,
/// the object itself in JSON / YAML, `node/n1` for `-o name`.
pub fn action(r: &Resource, what: &str, format: Format) -> Result<String, Error> {
    match format {
        Format::Table => Ok(format!("{} {what}\n", kind_name(r))),
        Format::Name => Ok(kind_name(r) + "\n"),
        Format::Json | Format::Yaml => serialized(r, format),
    }
}

/// A watch event: a table row with an EVENT column, one JSON line, one YAML document, or `kind/name`.
pub fn event(
    ev: &v1::WatchEvent,
    format: Format,
    table: &mut TableWriter,
    now_ms: i64,
) -> Result<String, Error> {
    let fail = |reason: String| Error::Render {
        format: format.as_str(),
        reason,
    };
    let Some(r) = ev.resource.as_ref() else {
        return Ok(String::new());
    };
    match format {
        Format::Json => serde_json::to_string(ev)
            .map(|s| s + "\n")
            .map_err(|e| fail(e.to_string())),
        Format::Yaml => serde_norway::to_string(ev)
            .map(|s| format!("---\n{s}"))
            .map_err(|e| fail(e.to_string())),
        Format::Name => Ok(kind_name(r) + "\n"),
        Format::Table => {
            let mut cells = vec![event_type_name(ev.r#type()).to_string()];
            cells.extend(row(r, now_ms));
            Ok(table.render(&[cells]))
        }
    }
}

/// The header of a watch table (EVENT + the kind's columns).
pub fn event_table(kind: v1::Kind) -> TableWriter {
    let mut cols = vec!["EVENT".to_string()];
    cols.extend(header(kind).iter().map(|s| s.to_string()));
    TableWriter::new(cols)
}

pub fn event_type_name(t: v1::EventType) -> &'static str {
    match t {
        v1::EventType::Unspecified => "UNKNOWN",
        v1::EventType::Added => "ADDED",
        v1::EventType::Modified => "MODIFIED",
        v1::EventType::Deleted => "DELETED",
    }
}

#[cfg(test)]
mod tests;
