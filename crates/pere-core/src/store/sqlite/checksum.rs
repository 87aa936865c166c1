//! Each event row's checksum (schema v7): what it covers, byte for byte ([`RowFields`]), and
//! the SQL function through which the migration gives one to the rows stored before it.
//!
//! The checksum is the 64-bit xxh3 (default secret, no seed) of this concatenation, in this
//! order, integers little-endian:
//!
//! | part | bytes |
//! | --- | --- |
//! | `channel` | a text field (below) |
//! | `id` | 8, unsigned |
//! | `time` (milliseconds since the epoch) | 8, signed |
//! | `event_type` | a text field |
//! | `publisher` | a text field |
//! | `idempotency_key` | a text field |
//! | `body` | a text field |
//!
//! A text field is one byte 0 when the column is NULL, else one byte 1, its length in bytes (8)
//! and its bytes as stored: one field can never run into the next, and an empty text is not a
//! NULL. It is stored in the `checksum` column as the signed 64-bit integer with the same bits.
//!
//! The bytes hashed are the row's own, read before any decoding, so a row that no longer
//! decodes (invalid UTF-8, a name that is not valid) is told apart from one whose bytes changed
//! while staying valid (a flipped letter in a body), and both are refused.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

/// The SQL function `pere_event_checksum(channel, id, time, event_type, publisher,
/// idempotency_key, body)` that the v7 migration fills the column with.
pub(super) const SQL_FUNCTION: &str = "pere_event_checksum";

/// What an event row's checksum covers, as stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowFields<'a> {
    pub(super) channel: &'a [u8],
    pub(super) id: u64,
    pub(super) time: i64,
    pub(super) event_type: Option<&'a [u8]>,
    pub(super) publisher: Option<&'a [u8]>,
    pub(super) idempotency_key: Option<&'a [u8]>,
    pub(super) body: &'a [u8],
}

/// Bytes of the hashed concatenation assembled on the stack and hashed in one call: the small
/// events most channels carry. A larger row is hashed part by part, which gives the same hash.
/// (Hashing the dozen small parts of a small row one at a time through xxh3's streaming state
/// cost a fifth of replay throughput.)
const ON_STACK: usize = 256;

impl RowFields<'_> {
    /// The checksum, as the `checksum` column holds it.
    pub(super) fn checksum(&self) -> i64 {
        let text_len = |field: Option<&[u8]>| field.map_or(1, |bytes| 9 + bytes.len());
        let len = text_len(Some(self.channel))
            + 16
            + text_len(self.event_type)
            + text_len(self.publisher)
            + text_len(self.idempotency_key)
            + text_len(Some(self.body));
        let sum = if len <= ON_STACK {
            let mut buffer = [0u8; ON_STACK];
            let mut at = 0;
            self.parts(|bytes| {
                buffer[at..at + bytes.len()].copy_from_slice(bytes);
                at += bytes.len();
            });
            xxh3_64(&buffer[..at])
        } else {
            let mut hash = Xxh3Default::new();
            self.parts(|bytes| hash.update(bytes));
            hash.digest()
        };
        // The column is a signed integer: the same 64 bits.
        sum as i64
    }

    /// The concatenation hashed, part by part.
    #[inline]
    fn parts(&self, mut put: impl FnMut(&[u8])) {
        text(&mut put, Some(self.channel));
        put(&self.id.to_le_bytes());
        put(&self.time.to_le_bytes());
        text(&mut put, self.event_type);
        text(&mut put, self.publisher);
        text(&mut put, self.idempotency_key);
        text(&mut put, Some(self.body));
    }
}

/// A text field: 0 for NULL, else 1, its length and its bytes.
#[inline]
fn text(put: &mut impl FnMut(&[u8]), field: Option<&[u8]>) {
    match field {
        None => put(&[0]),
        Some(bytes) => {
            put(&[1]);
            put(&(bytes.len() as u64).to_le_bytes());
            put(bytes);
        }
    }
}

/// Registers [`SQL_FUNCTION`] on `conn`. It answers NULL for a row whose columns do not have
/// the types a PERE event row has (a row damaged before the upgrade): reads then refuse it as
/// having no checksum rather than bless what it holds.
///
/// # Errors
/// SQLite's, when the function cannot be registered.
pub(super) fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        SQL_FUNCTION,
        7,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let text = |i: usize| match ctx.get_raw(i) {
                ValueRef::Null => Ok(None),
                ValueRef::Text(bytes) => Ok(Some(bytes)),
                _ => Err(()),
            };
            let integer = |i: usize| match ctx.get_raw(i) {
                ValueRef::Integer(n) => Ok(n),
                _ => Err(()),
            };
            let fields = (|| {
                Ok::<_, ()>(RowFields {
                    channel: text(0)?.ok_or(())?,
                    id: u64::try_from(integer(1)?).map_err(|_| ())?,
                    time: integer(2)?,
                    event_type: text(3)?,
                    publisher: text(4)?,
                    idempotency_key: text(5)?,
                    body: text(6)?.ok_or(())?,
                })
            })();
            Ok(fields.ok().map(|fields| fields.checksum()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(body: &'a [u8], event_type: Option<&'a [u8]>) -> RowFields<'a> {
        RowFields {
            channel: b"C",
            id: 7,
            time: 1_700_000_000_000,
            event_type,
            publisher: None,
            idempotency_key: None,
            body,
        }
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        // The same bytes split differently between two fields, or a NULL against an empty text.
        let a = RowFields {
            event_type: Some(b"ab"),
            publisher: Some(b"c"),
            ..row(b"x", None)
        };
        let b = RowFields {
            event_type: Some(b"a"),
            publisher: Some(b"bc"),
            ..row(b"x", None)
        };
        assert_ne!(a.checksum(), b.checksum());
        assert_ne!(row(b"x", None).checksum(), row(b"x", Some(b"")).checksum());
    }

    #[test]
    fn one_flipped_bit_anywhere_changes_it() {
        let body = b"{\"n\":1,\"text\":\"hello\"}".to_vec();
        let sum = row(&body, None).checksum();
        for i in 0..body.len() {
            let mut flipped = body.clone();
            flipped[i] ^= 0x04;
            assert_ne!(row(&flipped, None).checksum(), sum, "byte {i}");
        }
        let other_id = RowFields {
            id: 8,
            ..row(&body, None)
        };
        assert_ne!(other_id.checksum(), sum);
    }

    #[test]
    fn a_body_too_long_for_the_stack_hashes_as_the_same_concatenation() {
        let body = vec![b'x'; 5000];
        let fields = row(&body, Some(b"order"));
        let mut whole = Vec::new();
        whole.extend_from_slice(&[1]);
        whole.extend_from_slice(&1u64.to_le_bytes());
        whole.extend_from_slice(b"C");
        whole.extend_from_slice(&7u64.to_le_bytes());
        whole.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
        whole.extend_from_slice(&[1]);
        whole.extend_from_slice(&5u64.to_le_bytes());
        whole.extend_from_slice(b"order");
        whole.extend_from_slice(&[0, 0, 1]);
        whole.extend_from_slice(&5000u64.to_le_bytes());
        whole.extend_from_slice(&body);
        assert_eq!(fields.checksum(), xxh3_64(&whole) as i64);
        let short = row(b"y", None);
        let mut whole = whole[..26].to_vec();
        whole.extend_from_slice(&[0, 0, 0, 1]);
        whole.extend_from_slice(&1u64.to_le_bytes());
        whole.push(b'y');
        assert_eq!(short.checksum(), xxh3_64(&whole) as i64);
    }

    #[test]
    fn the_sql_function_agrees_with_the_writer() {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn).unwrap();
        let from_sql: i64 = conn
            .query_row(
                "SELECT pere_event_checksum('C', 7, 1700000000000, NULL, NULL, NULL, 'x')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(from_sql, row(b"x", None).checksum());
        let damaged: Option<i64> = conn
            .query_row(
                "SELECT pere_event_checksum('C', 'seven', 0, NULL, NULL, NULL, 'x')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(damaged, None, "a row of the wrong shape gets no checksum");
    }
}
