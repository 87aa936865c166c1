//! Where the server is: the address a user gives, and the URL of each endpoint under it.

use reqwest::Url;

/// Parses the server argument: `host:port` (plain HTTP), or an `http://` or `https://` URL (a
/// path prefix is kept).
///
/// # Errors
/// A message for an address that is no URL, or whose scheme is neither.
pub fn base_url(server: &str) -> Result<Url, String> {
    let text = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let mut url =
        Url::parse(&text).map_err(|e| format!("invalid server address {server:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "invalid server address {server:?}: http:// or https:// (host:port is http://)"
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
        assert_eq!(push("https://h:1").unwrap(), "https://h:1/push/CHANNEL_1");
        assert!(push("ws://h:1").is_err());
        assert!(push("h:notaport").is_err());
    }
}
