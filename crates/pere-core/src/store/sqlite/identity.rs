//! The store's identity and its floor: the random id made with the database, and the file beside
//! it ([`IDS_FILE`]) that remembers, for that id, the greatest id the store ever handed out. At
//! open ([`settle`]), a database that is another store, or the same one gone back in time (put
//! back from a backup, its last writes lost), has its floor raised above what the file
//! remembers, so no id a client may have seen is handed out again.

use std::path::Path;

use rusqlite::Connection;

use super::schema::{load_identity, save_floor};

/// The file beside the database that remembers the greatest id handed out.
pub const IDS_FILE: &str = "pere.ids";

/// What the ids file says: the store it speaks of and the greatest id that store handed out.
#[derive(Debug, PartialEq, Eq)]
struct Remembered {
    store: String,
    high_water: u64,
}

fn read_ids(dir: &Path) -> Option<Remembered> {
    let text = std::fs::read_to_string(dir.join(IDS_FILE)).ok()?;
    let mut store = None;
    let mut high_water = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("store", id)) => store = Some(id.to_owned()),
            Some(("high", n)) => high_water = n.parse().ok(),
            _ => {}
        }
    }
    Some(Remembered {
        store: store?,
        high_water: high_water?,
    })
}

/// Writes the ids file for `store` (beside the database at `db`): written whole into a
/// temporary file, then renamed over the old one, so a crash leaves one or the other.
pub(super) fn write_ids(db: &Path, store: &str, high_water: u64) -> std::io::Result<()> {
    let dir = db.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!("{IDS_FILE}.new"));
    std::fs::write(
        &temporary,
        format!("# PERE: the greatest id this store handed out; keep it with the database.\nstore {store}\nhigh {high_water}\n"),
    )?;
    std::fs::rename(temporary, dir.join(IDS_FILE))
}

/// What [`settle`] found: the store's id and floor, and, when the floor had to rise, why.
#[derive(Debug)]
pub(super) struct Settled {
    pub(super) store_id: String,
    pub(super) floor: u64,
    pub(super) high_water: u64,
    pub(super) raised: Option<String>,
}

/// Reads the store's identity and compares it with the ids file in `dir`: when the file speaks
/// of another store, or of more ids than the database holds, the floor rises to the file's high
/// water (saved in the database). Writes the file when it is missing or behind.
/// `heads` is the greatest head of any channel.
pub(super) fn settle(
    conn: &Connection,
    dir: &Path,
    db: &Path,
    heads: u64,
) -> rusqlite::Result<Settled> {
    let (store_id, mut floor) = load_identity(conn)?;
    let mut raised = None;
    if let Some(remembered) = read_ids(dir) {
        let known = heads.max(floor);
        if remembered.high_water > known {
            raised = Some(if remembered.store == store_id {
                format!(
                    "the database went back in time (it holds ids up to {known}, {IDS_FILE} says {} were handed out)",
                    remembered.high_water
                )
            } else {
                format!(
                    "the database is another store than the one {IDS_FILE} speaks of, which handed out ids up to {}",
                    remembered.high_water
                )
            });
            save_floor(conn, remembered.high_water)?;
            floor = remembered.high_water;
        }
    }
    let high_water = heads.max(floor);
    let _ = write_ids(db, &store_id, high_water);
    Ok(Settled {
        store_id,
        floor,
        high_water,
        raised,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_file_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        write_ids(&dir.path().join("pere.db"), "abc", 42).unwrap();
        assert_eq!(
            read_ids(dir.path()),
            Some(Remembered {
                store: "abc".into(),
                high_water: 42
            })
        );
        std::fs::write(dir.path().join(IDS_FILE), "nonsense").unwrap();
        assert_eq!(read_ids(dir.path()), None);
    }
}
