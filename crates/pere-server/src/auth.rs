//! Who may do what: the security mode (protected, open, tokens), the token's claims and channel
//! patterns, verifying a token (JWT: HS256 with a secret, RS256/ES256 with a public key) and
//! minting one. It decides nothing about routes: [`crate::door`] asks it, never the reverse.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock difference tolerated between the minting host and this server on `exp` and `nbf`:
/// enough for hosts kept in time by NTP, short next to any sensible token lifetime.
pub const CLOCK_LEEWAY_SECS: u64 = 30;

/// An HS256 secret shorter than this can be guessed offline from any token it signed.
pub const MIN_SECRET_LEN: usize = 32;

/// What a device may do, the `pere` claim of its token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Channels it may publish to: exact names, or patterns ending in `*` (a prefix).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Channels whose feed, receipt stream and presence it may read, and post receipts to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// The admin views and recipient management.
    #[serde(default)]
    pub admin: bool,
}

impl Grants {
    /// Whether `channel` may be published to.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, channel))
    }

    /// Whether `channel` may be subscribed to.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.iter().any(|p| pattern_matches(p, channel))
    }
}

/// Whether `pattern` (an exact name, or a prefix followed by `*`) covers `channel`.
/// `orders.*` covers `orders.eu` but not `orders`; `*` covers every channel.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// The claims of a PERE token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device id: the token's device is the device.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience: one, or several (RFC 7519 allows either; the token is for this server when the
    /// configured audience is among them, which `jsonwebtoken` checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// What the device may do.
    #[serde(default)]
    pub pere: Grants,
}

/// A token's `aud` claim: a string, or an array of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "pere"`.
    One(String),
    /// `"aud": ["pere", "other"]`.
    Many(Vec<String>),
}

/// Why a token was not accepted. Deliberately coarse: a client learns that a token is bad or
/// expired, never which check failed or anything about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, the wrong algorithm, audience or issuer, not yet valid, or
    /// missing a required claim.
    Invalid,
    /// Past its `exp`.
    Expired,
}

/// How the server decides who may use it.
#[derive(Debug)]
pub enum Mode {
    /// No key: loopback clients only (as Redis's protected mode).
    Protected,
    /// No key, `--open`: anyone who can reach the server, as the original PERE.
    Open,
    /// A key: every endpoint but `/`, the page and `/health` needs a token.
    Tokens {
        /// Verifies tokens.
        verifier: Box<Verifier>,
        /// `--anonymous-subscribe`: feeds may be read without a token, as anonymous listeners.
        anonymous_subscribe: bool,
    },
}

impl Mode {
    /// The start-up line that says which mode the server is in.
    pub fn describe(&self) -> String {
        match self {
            Mode::Protected => "security: protected mode (no token key): answering loopback clients only; \
                                start with --jwt-secret or --jwt-public-key to require tokens, or --open to \
                                answer every client"
                .to_owned(),
            Mode::Open => "security: open mode (--open, no token key): anyone who can reach the server may \
                           publish, subscribe, acknowledge and administer"
                .to_owned(),
            Mode::Tokens { verifier, anonymous_subscribe } => format!(
                "security: tokens required ({:?}){}",
                verifier.algorithm,
                if *anonymous_subscribe { "; feeds may also be read anonymously (--anonymous-subscribe)" } else { "" }
            ),
        }
    }
}

/// Whether a peer counts as this machine: 127.0.0.0/8 and ::1 (also as IPv4-mapped IPv6).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether the protected mode answers a request addressed to `authority` (a `Host` header or
/// HTTP/2's `:authority`, with or without a port): a name of this machine (`localhost`, any
/// 127.0.0.0/8 address, `[::1]`) or one of `allowed` (`--allowed-host`, lower case).
///
/// Why: a page of another site can make its own name resolve to 127.0.0.1 (DNS rebinding) and
/// then use the server as if it were on this machine, with the browser as its client. The
/// browser still names the site in `Host`, which is what this checks.
pub fn answers_host(authority: &str, allowed: &[String]) -> bool {
    let Some(host) = host_of(authority) else {
        return false;
    };
    // Compared without case rather than lowered: this runs for every request.
    let loopback = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| is_loopback(ip.into())),
        None => {
            // The usual loopback names first: most requests carry one, and parsing is dearer.
            host.eq_ignore_ascii_case("localhost")
                || host == "127.0.0.1"
                || host
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    // The allowed names are kept in lower case.
    loopback || allowed.iter().any(|name| name.eq_ignore_ascii_case(host))
}

/// The host of an authority (`name`, `name:port`, `[v6]`, `[v6]:port`); `None` when it is none.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = match authority.rfind(']') {
        Some(end) => authority.split_at(end + 1),
        None => match authority.rsplit_once(':') {
            Some((host, _)) => (host, &authority[host.len()..]),
            None => (authority, ""),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (port_ok && !host.is_empty()).then_some(host)
}

/// A name for `--allowed-host`: a host name or an IP address as a browser puts it in `Host`
/// (an IPv6 address in brackets), without a scheme, port or path; kept in lower case.
///
/// # Errors
/// What is wrong with it, for the settings' error line.
pub fn parse_host_name(text: &str) -> Result<String, String> {
    let name = text.trim().to_ascii_lowercase();
    let valid = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "`{text}` is not a host name: give the name alone, as in pere.internal or [fd00::1] \
             (no scheme, port or path)"
        ))
    }
}

/// The key settings, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct KeySettings<'a> {
    /// `--jwt-secret` / `PERE_JWT_SECRET`.
    pub secret: Option<&'a str>,
    /// `--jwt-secret-file`.
    pub secret_file: Option<&'a Path>,
    /// `--jwt-public-key` (PEM, RSA or EC P-256).
    pub public_key: Option<&'a Path>,
    /// `--jwt-audience`.
    pub audience: Option<&'a str>,
    /// `--jwt-issuer`.
    pub issuer: Option<&'a str>,
}

impl KeySettings<'_> {
    /// The secret, from the flag or the file; `None` without either.
    ///
    /// # Errors
    /// Both given, an unreadable file, or a secret shorter than [`MIN_SECRET_LEN`].
    pub fn secret(&self) -> Result<Option<Vec<u8>>, String> {
        let secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => {
                return Err("give --jwt-secret or --jwt-secret-file, not both".to_owned())
            }
            (Some(secret), None) => secret.as_bytes().to_vec(),
            (None, Some(path)) => {
                let text = std::fs::read(path).map_err(|e| {
                    format!("cannot read the token secret file {}: {e}", path.display())
                })?;
                // A file written by `echo` ends with a newline that is not part of the secret.
                let end = text
                    .iter()
                    .rposition(|b| !b.is_ascii_whitespace())
                    .map_or(0, |i| i + 1);
                text[..end].to_vec()
            }
            (None, None) => return Ok(None),
        };
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the token secret must be at least {MIN_SECRET_LEN} bytes long"
            ));
        }
        Ok(Some(secret))
    }
}

/// Checks tokens against the configured key, audience and issuer.
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier the settings ask for; `None` when no key is configured.
    ///
    /// # Errors
    /// A one-line description of what is wrong with the key settings.
    pub fn from_settings(settings: &KeySettings<'_>) -> Result<Option<Verifier>, String> {
        let secret = settings.secret()?;
        let (key, algorithm) = match (secret, settings.public_key) {
            (Some(_), Some(_)) => {
                return Err("give a token secret or --jwt-public-key, not both".to_owned());
            }
            (Some(secret), None) => (
                DecodingKey::from_secret(&secret).map_err(|e| e.to_string())?,
                Algorithm::HS256,
            ),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read the token public key {}: {e}", path.display())
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(format!(
                        "{} is not an RSA or EC public key in PEM",
                        path.display()
                    ));
                }
            }
            (None, None) => {
                if settings.audience.is_some() || settings.issuer.is_some() {
                    return Err("--jwt-audience and --jwt-issuer need a token key".to_owned());
                }
                return Ok(None);
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = CLOCK_LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Verifier {
            key,
            algorithm,
            validation,
        }))
    }

    /// The claims of a valid token.
    ///
    /// # Errors
    /// [`TokenError::Expired`] past `exp`, [`TokenError::Invalid`] for anything else.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(err) if matches!(err.kind(), ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Signs tokens, for `pere-server token`.
pub struct Minter {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter with the configured secret, or with `private_key` (PEM, RSA or EC P-256).
    ///
    /// # Errors
    /// No key, both kinds of key, or a key that cannot be read.
    pub fn from_settings(
        settings: &KeySettings<'_>,
        private_key: Option<&Path>,
    ) -> Result<Minter, String> {
        match (settings.secret()?, private_key) {
            (Some(_), Some(_)) => {
                Err("give a token secret or --jwt-private-key, not both".to_owned())
            }
            (Some(secret), None) => Ok(Minter {
                key: EncodingKey::from_secret(&secret).map_err(|e| e.to_string())?,
                algorithm: Algorithm::HS256,
            }),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("cannot read the token private key {}: {e}", path.display())
                })?;
                if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                    Ok(Minter {
                        key,
                        algorithm: Algorithm::RS256,
                    })
                } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
                    Ok(Minter {
                        key,
                        algorithm: Algorithm::ES256,
                    })
                } else {
                    Err(format!(
                        "{} is not an RSA or EC private key in PEM (PKCS#8 for EC)",
                        path.display()
                    ))
                }
            }
            (None, None) => Err(
                "no key to sign with: give --jwt-secret, PERE_JWT_SECRET, --jwt-secret-file or \
                                 --jwt-private-key"
                    .to_owned(),
            ),
        }
    }

    /// A token for `sub` with `grants`, valid for `ttl` from now.
    ///
    /// # Errors
    /// The signing failure, described.
    pub fn mint(
        &self,
        sub: &str,
        grants: Grants,
        ttl: Duration,
        settings: &KeySettings<'_>,
    ) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            nbf: None,
            aud: settings.audience.map(|a| Audience::One(a.to_owned())),
            iss: settings.issuer.map(str::to_owned),
            pere: grants,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> KeySettings<'static> {
        KeySettings {
            secret: Some(SECRET),
            ..KeySettings::default()
        }
    }

    #[test]
    fn patterns_are_exact_names_or_prefixes() {
        assert!(pattern_matches("orders.eu", "orders.eu"));
        assert!(!pattern_matches("orders.eu", "orders.eu2"));
        assert!(pattern_matches("orders.*", "orders.eu"));
        assert!(!pattern_matches("orders.*", "orders"));
        assert!(!pattern_matches("orders.*", "ordersX"));
        assert!(pattern_matches("*", "anything"));
        let grants = Grants {
            publish: vec!["a.*".into()],
            subscribe: vec!["b".into()],
            admin: false,
        };
        assert!(grants.may_publish("a.1") && !grants.may_publish("b"));
        assert!(grants.may_subscribe("b") && !grants.may_subscribe("a.1"));
    }

    #[test]
    fn only_loopback_peers_are_local() {
        assert!(is_loopback(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        assert!(is_loopback(IpAddr::V4(Ipv4Addr::new(127, 9, 8, 7))));
        assert!(is_loopback(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(is_loopback(IpAddr::V6(
            Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()
        )));
        assert!(!is_loopback(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert!(!is_loopback(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2))));
        assert!(!is_loopback(IpAddr::V6(
            Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()
        )));
        assert!(!is_loopback(IpAddr::V6("fe80::1".parse().unwrap())));
    }

    #[test]
    fn the_protected_mode_answers_this_machine_s_names_and_the_allowed_ones() {
        let allowed = vec!["pere.internal".to_owned(), "[fd00::1]".to_owned()];
        for host in [
            "localhost",
            "LocalHost:4567",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.9.8.7:4567",
            "[::1]",
            "[::1]:4567",
            "[::ffff:127.0.0.1]:1",
            "pere.internal",
            "PERE.internal:4567",
            "[fd00::1]:9",
        ] {
            assert!(answers_host(host, &allowed), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:4567",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "[fd00::2]",
            "::1",
            "",
            ":4567",
            "localhost:",
            "localhost:x",
            "[::1]x",
            "pere.internal.",
        ] {
            assert!(!answers_host(host, &allowed), "{host}");
        }
        assert_eq!(parse_host_name(" Pere.Internal ").unwrap(), "pere.internal");
        assert_eq!(parse_host_name("[FD00::1]").unwrap(), "[fd00::1]");
        for wrong in ["", "http://a", "a:80", "a/b", "[nope]", "a b"] {
            assert!(parse_host_name(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let verifier = Verifier::from_settings(&settings()).unwrap().unwrap();
        let minter = Minter::from_settings(&settings(), None).unwrap();
        let grants = Grants {
            publish: vec!["orders.*".into()],
            subscribe: vec![],
            admin: true,
        };
        let token = minter
            .mint("D1", grants.clone(), Duration::from_secs(60), &settings())
            .unwrap();
        let claims = verifier.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.pere), ("D1", grants));
        let other = KeySettings {
            secret: Some("another secret, just as long as the first"),
            ..KeySettings::default()
        };
        let forged = Minter::from_settings(&other, None).unwrap().mint(
            "D1",
            Grants::default(),
            Duration::from_secs(60),
            &other,
        );
        assert_eq!(verifier.verify(&forged.unwrap()), Err(TokenError::Invalid));
        assert_eq!(verifier.verify("not.a.token"), Err(TokenError::Invalid));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let strict = KeySettings {
            audience: Some("pere"),
            issuer: Some("ops"),
            ..settings()
        };
        let verifier = Verifier::from_settings(&strict).unwrap().unwrap();
        let minter = Minter::from_settings(&settings(), None).unwrap();
        let ttl = Duration::from_secs(60);
        let bare = minter
            .mint("D1", Grants::default(), ttl, &settings())
            .unwrap();
        assert_eq!(
            verifier.verify(&bare),
            Err(TokenError::Invalid),
            "aud and iss are required"
        );
        let good = minter.mint("D1", Grants::default(), ttl, &strict).unwrap();
        assert!(verifier.verify(&good).is_ok());
        let wrong = KeySettings {
            audience: Some("other"),
            ..strict.clone()
        };
        assert_eq!(
            verifier.verify(&minter.mint("D1", Grants::default(), ttl, &wrong).unwrap()),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn an_audience_array_holding_the_configured_one_is_accepted() {
        let strict = KeySettings {
            audience: Some("pere"),
            ..settings()
        };
        let verifier = Verifier::from_settings(&strict).unwrap().unwrap();
        let sign = |aud: serde_json::Value| {
            let claims = serde_json::json!({"sub": "D1", "exp": u64::MAX / 2, "aud": aud});
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let claims = verifier
            .verify(&sign(serde_json::json!(["other", "pere"])))
            .unwrap();
        assert_eq!(
            claims.aud,
            Some(Audience::Many(vec!["other".into(), "pere".into()]))
        );
        assert!(verifier.verify(&sign(serde_json::json!("pere"))).is_ok());
        assert_eq!(
            verifier.verify(&sign(serde_json::json!(["other", "more"]))),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verifier.verify(&sign(serde_json::json!([]))),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn short_secrets_and_two_keys_are_refused() {
        assert!(KeySettings {
            secret: Some("short"),
            ..KeySettings::default()
        }
        .secret()
        .is_err());
        let both = KeySettings {
            public_key: Some(Path::new("/nonexistent.pem")),
            ..settings()
        };
        assert!(Verifier::from_settings(&both).is_err());
        assert!(Verifier::from_settings(&KeySettings::default())
            .unwrap()
            .is_none());
    }
}
