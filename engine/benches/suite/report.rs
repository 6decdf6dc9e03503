//! The suite's one table, and its JSON form for machines.

use std::time::Duration;

use serde_json::{Value, json};

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which part of the suite measured it (`export`, `plugin call`, ...).
    pub section: &'static str,
    /// What was measured.
    pub what: String,
    /// weft's figure, for a human.
    pub weft: String,
    /// The figure it is judged against (a native client, an allowance).
    pub reference: String,
    /// weft against the reference: a ratio or an overhead.
    pub result: String,
    /// The target, when the issue sets one.
    pub target: String,
    /// Whether the target was met; `None` when there is none.
    pub met: Option<bool>,
    /// The same figures as numbers.
    pub figures: Value,
}

impl Row {
    /// A row with no target.
    pub fn new(section: &'static str, what: impl Into<String>, weft: impl Into<String>) -> Row {
        Row {
            section,
            what: what.into(),
            weft: weft.into(),
            reference: String::new(),
            result: String::new(),
            target: String::new(),
            met: None,
            figures: Value::Null,
        }
    }

    /// Sets the reference figure.
    pub fn reference(mut self, reference: impl Into<String>) -> Row {
        self.reference = reference.into();
        self
    }

    /// Sets the comparison.
    pub fn result(mut self, result: impl Into<String>) -> Row {
        self.result = result.into();
        self
    }

    /// Sets the target and whether it was met.
    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = target.into();
        self.met = Some(met);
        self
    }

    /// Sets the machine-readable figures.
    pub fn figures(mut self, figures: Value) -> Row {
        self.figures = figures;
        self
    }
}

/// What the figures were measured on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    json!({ "cpu": model, "cores": cores, "memory_gib": (memory_gib * 10.0).round() / 10.0, "os": std::env::consts::OS })
}

/// Prints the rows as one table, grouped by section.
pub fn print_table(rows: &[Row], machine: &Value) {
    println!(
        "weft bench suite — {} cores, {}, {} GiB",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory_gib"]
    );
    let headers = ["section", "what", "weft", "reference", "weft vs reference", "target", "met"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            [
                r.section.to_owned(),
                r.what.clone(),
                r.weft.clone(),
                r.reference.clone(),
                r.result.clone(),
                r.target.clone(),
                met.to_owned(),
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> =
            cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&headers.map(str::to_owned));
    line(&widths.map(|w| "-".repeat(w)));
    let mut last = "";
    for (row, cells) in rows.iter().zip(&cells) {
        let mut cells = cells.clone();
        if row.section == last {
            cells[0] = String::new();
        }
        last = row.section;
        line(&cells);
    }
}

/// The rows as one JSON document.
pub fn to_json(rows: &[Row], machine: &Value, scale: f64) -> Value {
    json!({
        "machine": machine,
        "scale": scale,
        "rows": rows.iter().map(|r| json!({
            "section": r.section,
            "what": r.what,
            "weft": r.weft,
            "reference": r.reference,
            "result": r.result,
            "target": r.target,
            "met": r.met,
            "figures": r.figures,
        })).collect::<Vec<_>>(),
    })
}

/// The value at quantile `q` (0..=1) of `samples`, which it sorts.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

/// The median of `samples`.
pub fn median(samples: &[f64]) -> f64 {
    quantile(&mut samples.to_vec(), 0.5)
}

/// Microseconds in `d`.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A number with thousands separators, for counts and rates.
pub fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}
