//! The client side of PERE's protocol, shared by `pere-pub` and `pere-sub`: the server address
//! and endpoints, device ids in the original clients' style, how the tools talk to the user
//! (one flushed line at a time, failures described in one line), and how they send a request
//! until it gets through.
//!
//! Layout:
//! - [`device`]: the default device id kept per user in a small file;
//! - [`fatal`]: [`Fatal`], the failure retrying cannot fix;
//! - [`output`]: line-at-a-time printing and one-line failure descriptions;
//! - [`retry`]: one request's outcome (accepted, retryable, refused), which statuses may pass,
//!   and the retry loop behind pushes and receipts;
//! - [`token`]: the bearer header a `--token` adds to every request, and the device it speaks for.
#![deny(missing_docs, missing_debug_implementations)]

pub mod device;
pub mod fatal;
pub mod output;
pub mod retry;
pub mod token;

pub use fatal::Fatal;

use rand::Rng;
pub use reqwest::Url;

/// A device id in the original clients' style: `prefix` followed by 9 random digits.
pub fn random_device(prefix: &str, rng: &mut impl Rng) -> String {
    format!("{prefix}{:09}", rng.gen_range(0..1_000_000_000u32))
}

/// A fresh idempotency key for one event: 128 random bits in hex. A publisher sends the same
/// key with every attempt at that event, so a retry whose first attempt did get through is
/// answered with the stored event instead of storing it twice.
pub fn idempotency_key(rng: &mut impl Rng) -> String {
    format!("{:032x}", rng.gen::<u128>())
}

/// Parses the server argument: `host:port`, or an `http://` URL (a path prefix is kept).
///
/// # Errors
/// A message for an address that is no URL, or that is not plain HTTP (the tools have no TLS).
pub fn base_url(server: &str) -> Result<Url, String> {
    let text = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let mut url =
        Url::parse(&text).map_err(|e| format!("invalid server address {server:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "invalid server address {server:?}: only http:// is supported"
        ));
    }
    if url.host_str().unwrap_or_default().is_empty() {
        return Err(format!("invalid server address {server:?}: no host"));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The URL of `/<kind>/<channel>` under `base`; the channel is percent-encoded as one path segment.
pub fn endpoint(base: &Url, kind: &str, channel: &str) -> Url {
    let mut url = base.clone();
    // An http URL always has path segments.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(kind).push(channel);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_the_prefix_and_nine_digits() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = random_device("P0039", &mut rng);
            assert_eq!(d.len(), 14, "{d}");
            assert!(
                d.starts_with("P0039") && d[5..].bytes().all(|b| b.is_ascii_digit()),
                "{d}"
            );
        }
    }

    #[test]
    fn idempotency_keys_are_fresh_and_header_safe() {
        let mut rng = rand::thread_rng();
        let (a, b) = (idempotency_key(&mut rng), idempotency_key(&mut rng));
        assert_ne!(a, b);
        assert!(
            a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
            "{a}"
        );
    }

    #[test]
    fn server_addresses() {
        let push = |s: &str| base_url(s).map(|u| endpoint(&u, "push", "CHANNEL_1").to_string());
        assert_eq!(
            push("localhost:4567").unwrap(),
            "http://localhost:4567/push/CHANNEL_1"
        );
        assert_eq!(
            push("http://127.0.0.1:4567").unwrap(),
            "http://127.0.0.1:4567/push/CHANNEL_1"
        );
        assert_eq!(
            push("http://h:1/pere/").unwrap(),
            "http://h:1/pere/push/CHANNEL_1"
        );
        assert!(push("https://h:1").is_err());
        assert!(push("h:notaport").is_err());
    }
}
