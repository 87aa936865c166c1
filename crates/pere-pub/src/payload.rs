//! What gets published: the original publisher's random JSON events, a fixed text, or stdin lines.

pub use pere_client::Body;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use pere_proto::event::{format_time, now};

/// The characters of the original's random data: base 36, lower case.
const BASE36: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// The original's random data is 15 to 32 characters long.
pub const DATA_LEN: std::ops::RangeInclusive<usize> = 15..=32;

/// The original publisher's event, fields in its order:
/// `{"channel","device","pub_id","time","data"}`.
///
/// The counter is `pub_id`, the name the original `publisher.rb` gave it once the server's ids
/// became the events' ids (its v0.0.4 log shows `{"channel":"CHANNEL_1","pub_id":179,…}`; its
/// first one sent `"id"`). An `"id"` in the body would read as the event's id and disagree with
/// the server's as soon as anyone else publishes on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomEvent {
    /// The channel published to.
    pub channel: String,
    /// The publishing device.
    pub device: String,
    /// This publisher's own counter, from 1: how many events it made, not the server's id.
    pub pub_id: u64,
    /// When the event was made: ISO-8601 UTC with milliseconds.
    pub time: String,
    /// 15 to 32 random base-36 characters.
    pub data: String,
}

/// Random base-36 text of a random length in [`DATA_LEN`].
pub fn random_data(rng: &mut impl Rng) -> String {
    let len = rng.gen_range(DATA_LEN);
    (0..len)
        .map(|_| BASE36[rng.gen_range(0..BASE36.len())] as char)
        .collect()
}

/// Where the events come from.
#[derive(Debug)]
pub enum Source {
    /// The original publisher's random JSON events.
    Random {
        /// The channel, repeated in each event.
        channel: String,
        /// The device, repeated in each event.
        device: String,
        /// The last counter used (`pub_id`).
        last_id: u64,
    },
    /// The same text every time (`--data TEXT`).
    Fixed(Body),
    /// One event per line of stdin (`--data -`), read by [`Source::stdin`]'s thread.
    Stdin(mpsc::Receiver<std::io::Result<String>>),
}

impl Source {
    /// The next event body; `None` when there are no more (end of stdin).
    ///
    /// # Errors
    /// Reading stdin failed (e.g. it is not UTF-8).
    pub async fn next(&mut self) -> anyhow::Result<Option<Body>> {
        match self {
            Source::Random {
                channel,
                device,
                last_id,
            } => {
                *last_id += 1;
                let event = RandomEvent {
                    channel: channel.clone(),
                    device: device.clone(),
                    pub_id: *last_id,
                    time: format_time(now()),
                    data: random_data(&mut rand::thread_rng()),
                };
                Ok(Some(Body::json(&event)?))
            }
            Source::Fixed(body) => Ok(Some(body.clone())),
            Source::Stdin(lines) => match lines.recv().await {
                Some(line) => Ok(Some(Body::detect(line?))),
                None => Ok(None),
            },
        }
    }

    /// Up to `max` bodies for one batch: the first when it comes, then those ready at once (a
    /// batch of stdin lines does not wait for lines that have not been written yet); empty at
    /// the end of stdin.
    ///
    /// # Errors
    /// Reading stdin failed.
    pub async fn next_batch(&mut self, max: u64) -> anyhow::Result<Vec<Body>> {
        let mut batch = Vec::new();
        let Some(first) = self.next().await? else {
            return Ok(batch);
        };
        batch.push(first);
        while (batch.len() as u64) < max {
            let next = match self {
                Source::Stdin(lines) => match lines.try_recv() {
                    Ok(line) => Body::detect(line?),
                    Err(_) => break,
                },
                _ => match self.next().await? {
                    Some(body) => body,
                    None => break,
                },
            };
            batch.push(next);
        }
        Ok(batch)
    }

    /// Reads stdin, one event per line (without its line break).
    ///
    /// A plain thread does the reading: stdin blocks, and tokio's async stdin (feature `io-std`)
    /// is itself a blocking thread underneath. The channel is small, so reading keeps pace
    /// with publishing (holding up to `ahead` lines, a batch's worth); the thread ends at end of
    /// input, at the first error, or with the process.
    pub fn stdin(ahead: usize) -> Self {
        let (tx, rx) = mpsc::channel(ahead.max(1));
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::stdin().lock().lines() {
                let failed = line.is_err();
                if tx.blocking_send(line).is_err() || failed {
                    break;
                }
            }
        });
        Source::Stdin(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_data_is_base36_of_the_original_length() {
        let mut rng = rand::thread_rng();
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            let data = random_data(&mut rng);
            assert!(DATA_LEN.contains(&data.len()), "{data}");
            assert!(
                data.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{data}"
            );
            lengths.insert(data.len());
        }
        assert_eq!(lengths.len(), DATA_LEN.count(), "every length occurs");
    }

    #[tokio::test]
    async fn random_events_have_the_original_shape() {
        let mut source = Source::Random {
            channel: "CHANNEL_1".into(),
            device: "P0039123456789".into(),
            last_id: 0,
        };
        for expected_id in 1..=3 {
            let body = source.next().await.unwrap().unwrap();
            assert!(body.is_json());
            // Exactly these fields...
            let value: serde_json::Value = serde_json::from_str(body.as_str()).unwrap();
            let keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let mut sorted = vec!["channel", "data", "device", "pub_id", "time"];
            sorted.sort();
            assert_eq!(keys, sorted);
            // ...in the original's order: channel, device, pub_id, time, data.
            assert!(body
                .as_str()
                .starts_with(r#"{"channel":"CHANNEL_1","device":"P0039123456789","pub_id":"#));
            let event: RandomEvent = serde_json::from_str(body.as_str()).unwrap();
            assert_eq!(event.pub_id, expected_id);
            assert!(DATA_LEN.contains(&event.data.len()));
            // 2014-11-25T08:12:09.123Z
            let t = event.time.as_bytes();
            assert_eq!(t.len(), 24, "{}", event.time);
            assert_eq!(
                (t[4], t[10], t[19], t[23]),
                (b'-', b'T', b'.', b'Z'),
                "{}",
                event.time
            );
            assert!(chrono::DateTime::parse_from_rfc3339(&event.time).is_ok());
        }
    }
}
