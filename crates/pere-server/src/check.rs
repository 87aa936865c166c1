//! `pere-server check`: the offline check (and repair) of a data directory's SQLite store, its
//! findings as the lines `main` prints, and its exit status.

use pere_core::store::sqlite::{self, CheckReport, Damage, Repaired};
use pere_core::StoreError;

use crate::config::{CheckArgs, Config};

/// What a check found, ready to be printed.
#[derive(Debug)]
pub struct Checked {
    report: CheckReport,
}

/// Checks (and with `--repair`, mends) the store in `--data-dir`.
///
/// # Errors
/// The store's error when the check cannot run: a server (or another check) holds the
/// directory, there is no store there, or it cannot be opened at all.
pub fn run(config: &Config, args: &CheckArgs) -> Result<Checked, StoreError> {
    let dir = args.data_dir.as_ref().unwrap_or(&config.data_dir);
    let report = sqlite::check(dir, args.repair)?;
    Ok(Checked { report })
}

/// A check that could not run, in one line.
pub fn explain(err: &StoreError) -> String {
    match err {
        StoreError::Locked { dir } => format!(
            "{} is in use by a running PERE server (or another check): stop it first",
            dir.display()
        ),
        other => other.to_string(),
    }
}

impl Checked {
    /// The exit status: 0 when the store is sound (as found, or once repaired), 1 when damage
    /// was found and left.
    pub fn status(&self) -> u8 {
        if self.report.sound() || self.report.repair.is_some() {
            0
        } else {
            1
        }
    }

    /// What to print: a summary, then one line per channel with damaged events, one per
    /// integrity problem, and what a repair did.
    pub fn lines(&self) -> Vec<String> {
        let report = &self.report;
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let integrity = if report.integrity.is_empty() {
            "integrity ok".to_owned()
        } else {
            plural(
                report.integrity.len(),
                "integrity problem",
                "integrity problems",
            )
        };
        let mut lines = vec![format!(
            "{}: {} in {} read; {integrity}; {}",
            report.path.display(),
            plural(report.events_checked as usize, "event", "events"),
            plural(report.channels_checked, "channel", "channels"),
            plural(report.damaged_events(), "damaged event", "damaged events"),
        )];
        for (channel, ids) in &report.damaged {
            lines.push(format!(
                "channel {channel}: damaged events {}",
                runs(ids).join(", ")
            ));
        }
        for problem in &report.integrity {
            lines.push(format!("integrity: {problem}"));
        }
        if report.set_aside_before > 0 {
            lines.push(format!(
                "set aside by an earlier repair: {}",
                plural(report.set_aside_before, "event", "events")
            ));
        }
        match &report.repair {
            None if !report.sound() => {
                lines.push("run pere-server check --repair to mend it".to_owned())
            }
            None => {}
            Some(Repaired::SetAside { events }) => lines.push(format!(
                "repair: {} moved into the table damaged_events; the store is sound",
                plural(*events, "damaged event", "damaged events")
            )),
            Some(Repaired::Rebuilt {
                backup,
                events_copied,
                events_set_aside,
                tables,
            }) => {
                lines.push(format!(
                    "repair: rebuilt from what could be read: {} copied, {} recorded in damaged_events; the damaged file is kept as {}",
                    plural(*events_copied as usize, "event", "events"),
                    plural(*events_set_aside, "event", "events"),
                    backup.display()
                ));
                for (table, copied, stopped) in tables {
                    if let Some(why) = stopped {
                        lines.push(format!(
                            "repair: table {table}: {} copied, the rest could not be read ({why})",
                            plural(*copied as usize, "row", "rows")
                        ));
                    }
                }
            }
        }
        lines
    }
}

/// The ids as runs (`5-7`), each with why when it changes from the run before.
fn runs(ids: &[(u64, Damage)]) -> Vec<String> {
    let mut runs: Vec<(u64, u64, Damage)> = Vec::new();
    for &(id, damage) in ids {
        match runs.last_mut() {
            Some((_, last, why)) if *last + 1 == id && *why == damage => *last = id,
            _ => runs.push((id, id, damage)),
        }
    }
    let mut said: Option<Damage> = None;
    runs.into_iter()
        .map(|(first, last, damage)| {
            let ids = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            if said.replace(damage) == Some(damage) {
                ids
            } else {
                format!("{ids} ({damage})")
            }
        })
        .collect()
}
