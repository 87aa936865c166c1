//! Tokens on the client side: the `Authorization: Bearer` header every request carries, and the
//! device a token speaks for (its `sub`), read without verifying: the server verifies.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use crate::fatal::Fatal;

/// The default headers of a client that shows `token` on every request.
///
/// # Errors
/// [`Fatal`] for a token that cannot travel in a header.
pub fn bearer_headers(token: &str) -> Result<HeaderMap, Fatal> {
    let value =
        bearer(token).ok_or_else(|| Fatal("the token cannot be sent in a header".to_owned()))?;
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    Ok(headers)
}

/// The `Authorization` header value for `token`; `None` for a token that cannot travel in a
/// header.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
    // Kept out of reqwest's debug output.
    value.set_sensitive(true);
    Some(value)
}

/// The `sub` of a JWT (the device it speaks for), read without checking the signature; `None`
/// for anything that is not a JWT with a string `sub`.
pub fn subject(token: &str) -> Option<String> {
    let payload = token.trim().split('.').nth(1)?;
    let json: serde_json::Value = serde_json::from_slice(&base64url(payload)?).ok()?;
    json.get("sub")?.as_str().map(str::to_owned)
}

/// Decodes unpadded base64url.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in text.trim_end_matches('=').bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_the_payload() {
        // {"sub":"D1","exp":1}, unpadded base64url.
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJEMSIsImV4cCI6MX0.sig";
        assert_eq!(subject(token).as_deref(), Some("D1"));
        assert_eq!(subject("nonsense"), None);
        assert_eq!(subject("a.%%%.c"), None);
        assert_eq!(base64url("aGk").unwrap(), b"hi");
        assert!(bearer_headers("abc").unwrap()[AUTHORIZATION].is_sensitive());
    }
}
