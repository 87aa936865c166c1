//! The one door every request passes, whatever kind of connection carries it (a hyper connection
//! or a dedicated feed connection): the peer, method, path, query and headers become a [`Route`]
//! and a [`Caller`], and the request is let in or refused here: the protected mode's loopback
//! and host-name rules, the token and what it grants, the device a request may speak for. Every answer leaves
//! by the same door ([`exit`]): counted, a refusal logged, with its CORS headers. Whatever must
//! hold for every request (credentials, limits, counts, the access and refusal logs) belongs in
//! [`admit`] or [`exit`] and nowhere else.

use hyper::header::{self, HeaderMap};
use hyper::http::request::Parts;
use hyper::{Method, Response, Uri};
use pere_core::{DeviceId, Store};

use crate::activity;
use crate::auth::{self, Grants, Mode, TokenError};
use crate::config::Config;
use crate::error::ApiError;
use crate::limits::{Arrival, StreamSlot};
use crate::metrics::StreamKind;
use crate::request::{self, Query};
use crate::response::{self, Answer, ResponseBody};
use crate::route::{self, NoRoute, Route};
use crate::state::AppState;

/// The cookie a browser's `EventSource` can carry a token in.
pub const TOKEN_COOKIE: &str = "pere_token";

/// The query parameter a browser's `EventSource` can carry a token in.
pub const TOKEN_PARAM: &str = "access_token";

/// Who is asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The device the request speaks for: the token's `sub` when a token was verified, else the
    /// `device` header or `?device=`, if the request says.
    pub device: Option<DeviceId>,
    /// What a verified token grants; `None` without a token (no key is configured, or an
    /// anonymous listener).
    pub grants: Option<Grants>,
}

impl Caller {
    /// The device a request body names (a receipt's `device` field), checked against the caller:
    /// with a token, only its own device; without a name, the caller's device.
    ///
    /// # Errors
    /// 403 `device_mismatch` for another device than the token's.
    pub fn speaks_as(&self, named: Option<DeviceId>) -> Result<Option<DeviceId>, ApiError> {
        match (named, &self.device) {
            (Some(named), Some(own)) if self.grants.is_some() && named != *own => {
                Err(ApiError::device_mismatch(named.as_str()))
            }
            (Some(named), _) => Ok(Some(named)),
            (None, own) => Ok(own.clone()),
        }
    }
}

/// A request let in: where it goes, who asks, and its decoded query.
#[derive(Debug)]
pub struct Admitted<'a> {
    /// The endpoint.
    pub route: Route<'a>,
    /// Who asks.
    pub caller: Caller,
    /// The query string, decoded.
    pub query: Query,
    /// For a stream (a `GET` of a feed, receipt or presence stream): its place in the counts,
    /// held for as long as the stream is open.
    pub stream: Option<StreamSlot>,
}

/// Decides whether a request on the connection of `arrival` (its peer, its standing with the
/// limits) may go on, and where to; notes that the connection's request head arrived (see
/// [`crate::limits`]).
///
/// # Errors
/// The answer for a request that may not: 403 `forbidden` for a peer the protected mode does not
/// answer or a token that does not grant the route; 421 `unknown_host` for a request the
/// protected mode does not answer, addressed to a name that is not this machine's; 404 and 405
/// for paths and methods the server does not have; 400 for a device id that is not one; 403
/// `cross_origin` for a change a page of another site sent with the cookie or without a token
/// key; 401 `missing_token`, `invalid_token`, `expired_token`; 403 `device_mismatch` for a
/// device that is not the token's; 503 or 429 for a stream past the limits.
pub fn admit<'a, S: Store>(
    state: &AppState<S>,
    arrival: &Arrival,
    method: &Method,
    uri: &'a Uri,
    headers: &HeaderMap,
) -> Result<Admitted<'a>, ApiError> {
    // Its head is here: the connection is out of the header phase, whatever the answer.
    arrival.arrived();
    if matches!(state.mode, Mode::Protected) && !auth::is_loopback(arrival.peer().ip()) {
        return Err(ApiError::forbidden(
            "PERE is in protected mode: without a token key it answers only clients on its own machine; \
             start it with --jwt-secret (or --jwt-public-key) to let clients in with tokens, or with --open \
             on a trusted network",
        ));
    }
    if matches!(state.mode, Mode::Protected) && !addressed_here(uri, headers, &state.config) {
        return Err(ApiError::unknown_host());
    }
    let path = uri.path();
    let route = Route::parse(method, path).map_err(|no| match no {
        NoRoute::NotFound => ApiError::not_found(),
        NoRoute::MethodNotAllowed(allowed) => ApiError::method_not_allowed(path, allowed),
    })?;
    let query = Query::parse(uri.query());
    let named = request::device(headers, &query)?;
    if matches!(state.mode, Mode::Protected | Mode::Open) {
        // No credentials: being able to reach the server is the only one, and a page of any
        // site shown by a browser that can reach it has it too.
        same_site(&state.config, method, uri, headers, Ambient::Reach)?;
    }
    let caller = match &state.mode {
        Mode::Tokens {
            verifier,
            anonymous_subscribe,
        } if !route.is_public() => match token(headers, &query)? {
            Some((token, carrier)) => {
                if carrier == Carrier::Cookie {
                    // The browser adds the cookie to any page's requests, whatever the site.
                    same_site(&state.config, method, uri, headers, Ambient::Cookie)?;
                }
                let claims = verifier.verify(token).map_err(|err| match err {
                    TokenError::Expired => ApiError::expired_token(),
                    TokenError::Invalid => ApiError::invalid_token(),
                })?;
                // A `sub` that is no device id cannot speak for a device.
                let device = DeviceId::new(&claims.sub).map_err(|_| ApiError::invalid_token())?;
                if let Some(named) = named.filter(|named| *named != device) {
                    return Err(ApiError::device_mismatch(named.as_str()));
                }
                authorize(&route, &device, &claims.pere)?;
                Caller {
                    device: Some(device),
                    grants: Some(claims.pere),
                }
            }
            None if *anonymous_subscribe && matches!(route, Route::Feed(_)) => {
                if named.is_some() {
                    return Err(ApiError::missing_token(
                        "a device needs a token; without one, leave the device out to read the feed anonymously",
                    ));
                }
                Caller::default()
            }
            None => {
                return Err(ApiError::missing_token(
                    "this server needs a token (Authorization: Bearer)",
                ))
            }
        },
        _ => Caller {
            device: named,
            grants: None,
        },
    };
    // A HEAD of a stream opens nothing, so it takes no place.
    let kind = match route {
        Route::Feed(_) => Some(StreamKind::Feed),
        Route::Receipts(_) => Some(StreamKind::Receipts),
        Route::Presence(_) => Some(StreamKind::Presence),
        Route::AdminStream => Some(StreamKind::Admin),
        _ => None,
    };
    let stream = match kind {
        Some(kind) if method == Method::GET => Some(
            state
                .limits
                .stream(caller.device.as_ref())?
                .counted(state.metrics.open_stream(kind)),
        ),
        _ => None,
    };
    activity::admitted(
        method.as_str(),
        path,
        caller.device.as_ref().map(|d| d.as_str()),
    );
    Ok(Admitted {
        route,
        caller,
        query,
        stream,
    })
}

/// Whether a request is addressed to a name the protected mode answers: every `Host` header and
/// HTTP/2's `:authority` (the URI's authority) must be one (see [`auth::answers_host`]). A request
/// that names no host at all (HTTP/1.0) is let in: every browser names one, and the names are
/// checked against pages that make the browser their client.
fn addressed_here(uri: &Uri, headers: &HeaderMap, config: &Config) -> bool {
    let allowed = &config.allowed_hosts;
    uri.authority()
        .is_none_or(|authority| auth::answers_host(authority.as_str(), allowed))
        && headers.get_all(header::HOST).iter().all(|host| {
            host.to_str()
                .is_ok_and(|host| auth::answers_host(host, allowed))
        })
}

/// Where a request's token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// `Authorization: Bearer`.
    Header,
    /// `?access_token=`.
    Query,
    /// The `pere_token` cookie, which the browser adds by itself.
    Cookie,
}

/// The token a request carries: `Authorization: Bearer`, else `?access_token=`, else the
/// `pere_token` cookie (the last two for `EventSource`, which cannot set headers).
///
/// # Errors
/// 401 `invalid_token` for an `Authorization` header that is not a bearer token.
fn token<'r>(
    headers: &'r HeaderMap,
    query: &'r Query,
) -> Result<Option<(&'r str, Carrier)>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::invalid_token())?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or_else(ApiError::invalid_token)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(ApiError::invalid_token());
        }
        return Ok(Some((token.trim(), Carrier::Header)));
    }
    if let Some(token) = query.get(&[TOKEN_PARAM]) {
        return Ok(Some((token, Carrier::Query)));
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='));
    Ok(cookie.map(|token| (token, Carrier::Cookie)))
}

/// The credential a page of another site would borrow from the browser that shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ambient {
    /// The `pere_token` cookie.
    Cookie,
    /// Being able to reach the server at all (the protected mode's machine, `--open`'s
    /// network): the only credential when there is no token key.
    Reach,
}

/// The header by which browsers say which site a request comes from (set by the browser; no
/// page can).
const SEC_FETCH_SITE: header::HeaderName = header::HeaderName::from_static("sec-fetch-site");

/// Refuses a change (any method but `GET`, `HEAD` and `OPTIONS`) that a page of another site
/// sent with an `ambient` credential: cross-site request forgery.
///
/// A request passes when its `Origin` is the server's own (the request's host with the scheme
/// the server speaks) or listed by `--allow-origin` (`*` too, for [`Ambient::Reach`]: without
/// credentials it lets any page in; a cookie is a credential, which `*` never carries), or when
/// the browser says `Sec-Fetch-Site: same-origin` (or `none`, the user's own action); one that
/// names another origin or site is refused. A request with neither header is not a browser's
/// (browsers send one of them with every change): it passes without credentials (tools, the
/// original clients) and is refused with the cookie, which only a browser adds unasked, and
/// which a program can put in an `Authorization` header instead.
///
/// # Errors
/// 403 `cross_origin`, saying what to do.
fn same_site(
    config: &Config,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    ambient: Ambient,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""));
    if let Some(origin) = origin {
        if config.origin_listed(origin)
            || (ambient == Ambient::Reach && config.any_origin())
            || own_origin(config, uri, headers, origin)
        {
            return Ok(());
        }
    }
    let site = headers.get(SEC_FETCH_SITE).map(|s| s.as_bytes());
    if matches!(site, Some(b"same-origin" | b"none")) {
        return Ok(());
    }
    if origin.is_none() && site.is_none() && ambient == Ambient::Reach {
        return Ok(());
    }
    Err(ApiError::cross_origin(match ambient {
        Ambient::Cookie => {
            "a change that carries its token in the pere_token cookie must come from a page of \
             this server or of an origin listed with --allow-origin; other clients send the \
             token in an Authorization: Bearer header"
        }
        Ambient::Reach => {
            "this server takes changes from pages of its own origin and of those listed with \
             --allow-origin only; list the page's origin to let it in"
        }
    }))
}

/// Whether `origin` is the server's own: the scheme it speaks (`https` with `--tls-cert`, or
/// HTTP/2's `:scheme`) and the host the request is addressed to.
fn own_origin(config: &Config, uri: &Uri, headers: &HeaderMap, origin: &str) -> bool {
    let scheme = uri.scheme_str().unwrap_or(if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    });
    let host = match uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => headers.get(header::HOST).and_then(|h| h.to_str().ok()),
    };
    let Some(host) = host else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(s, h)| s.eq_ignore_ascii_case(scheme) && h.eq_ignore_ascii_case(host))
}

/// Whether a token for `device` with `grants` may use `route`.
///
/// # Errors
/// 403 `forbidden`, saying what the token lacks.
fn authorize(route: &Route<'_>, device: &DeviceId, grants: &Grants) -> Result<(), ApiError> {
    if route.is_public() {
        return Ok(());
    }
    let allowed = match route {
        Route::Push(channel) => grants.may_publish(channel),
        Route::Feed(channel)
        | Route::Feedback(channel)
        | Route::Receipts(channel)
        | Route::Presence(channel) => grants.may_subscribe(channel),
        // A device may read what it owes on a channel it may subscribe to.
        Route::DevicePending(channel, owner) => {
            grants.admin || (*owner == device.as_str() && grants.may_subscribe(channel))
        }
        Route::AdminConnections
        | Route::AdminChannels
        | Route::Metrics
        | Route::AdminStream
        | Route::AdminEvents(_)
        | Route::AdminDevices(_)
        | Route::AdminReceipts(..)
        | Route::RegisterDevice(..)
        | Route::RemoveDevice(..)
        | Route::Events(_)
        | Route::Event(..) => grants.admin,
        // The public routes, let in above; any other is refused.
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    Err(ApiError::forbidden(match route {
        Route::Push(channel) => format!("this token may not publish to {channel}"),
        Route::Feed(channel)
        | Route::Feedback(channel)
        | Route::Receipts(channel)
        | Route::Presence(channel) => {
            format!("this token may not subscribe to {channel}")
        }
        _ => "this needs an admin token".to_owned(),
    }))
}

/// The listener a request came in on, as far as its answer cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The server's own port, either kind of connection: pages of the listed origins may read
    /// the answers (CORS).
    Main,
    /// The metrics listener (`--metrics-addr`): a scraper's, never a page's, so no CORS headers.
    Metrics,
}

/// The way out of the door, for every request of every kind of connection and listener: turns
/// what became of `request` (its handler's answer, or a refusal by the door or the handler) into
/// the answer the client gets. A refusal becomes its JSON error and is logged and counted
/// (`refused`), every answer is counted by its route's name (`route_name`, the admitted route's
/// when the door admitted it; a stream when its head is sent), a `HEAD` loses its body, and the
/// main listener's answers get their CORS headers.
pub fn exit<S: Store>(
    state: &AppState<S>,
    request: &Parts,
    outcome: Answer,
    listener: Listener,
    route_name: Option<&'static str>,
) -> Response<ResponseBody> {
    let (method, uri) = (&request.method, &request.uri);
    let mut answer = outcome.unwrap_or_else(|err| {
        refused(state, method, uri, &err);
        response::error(&err)
    });
    // The door's own route when it found one: routing again costs every request as much.
    let route_name = route_name.unwrap_or_else(|| route::name_of(method, uri.path()));
    state.metrics.answered(route_name, answer.status().as_u16());
    if method == Method::HEAD {
        *answer.body_mut() = response::empty();
    }
    if listener == Listener::Main {
        response::add_cors(
            &state.config,
            request.headers.get(header::ORIGIN),
            method == Method::OPTIONS,
            answer.headers_mut(),
        );
        let authority = uri.authority().map(|a| a.as_str());
        if let Some(origin) = response::refused_origin(&state.config, &request.headers, authority) {
            activity::cross_origin(method.as_str(), uri.path(), origin);
        }
    }
    answer
}

/// Logs and counts a request answered with an error, at the door or later by its handler.
fn refused<S: Store>(state: &AppState<S>, method: &Method, uri: &Uri, err: &ApiError) {
    state.metrics.refused(err.code);
    activity::refused(method.as_str(), uri.path(), err.status.as_u16(), err.code);
}

/// The door of the metrics listener (`--metrics-addr`): `GET /metrics` only, without a token
/// (the listener is meant for a private address); anything else is 404, or 405 on `/metrics`.
///
/// # Errors
/// 404 `not_found` for another path, 405 for another method on `/metrics`.
pub fn admit_metrics(method: &Method, uri: &Uri) -> Result<Route<'static>, ApiError> {
    match Route::parse(method, uri.path()) {
        Ok(Route::Metrics) => Ok(Route::Metrics),
        Err(NoRoute::MethodNotAllowed(allowed)) if uri.path() == "/metrics" => {
            Err(ApiError::method_not_allowed(uri.path(), allowed))
        }
        _ => Err(ApiError::not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[tokio::test]
    async fn every_answer_leaves_counted_with_its_cors_headers_and_a_head_without_body() {
        use http_body_util::BodyExt;
        use hyper::{Request, StatusCode};

        let mut config = Config::defaults();
        config.allow_origins = vec!["https://app.example".to_owned()];
        let state = AppState::new(pere_core::MemoryStore::default(), config, Mode::Open);
        let request = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .header(header::ORIGIN, "https://app.example")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let get = request(Method::GET, "/push/C1");
        let refusal = || Err(ApiError::method_not_allowed("/push/C1", "POST"));

        let refused = exit(&state, &get, refusal(), Listener::Main, None);
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.headers()[header::ALLOW], "POST");
        assert_eq!(
            refused.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"{") && body.ends_with(b"}"), "{body:?}");

        let head = request(Method::HEAD, "/health");
        let answer = Ok(response::json(StatusCode::OK, &"ok"));
        let headed = exit(&state, &head, answer, Listener::Main, None);
        assert_eq!(headed.headers()[header::CONTENT_TYPE], "application/json");
        assert!(headed
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());

        let scraped = exit(&state, &get, refusal(), Listener::Metrics, None);
        assert_eq!(scraped.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(
            scraped
                .headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .is_none()
                && scraped.headers().get(header::VARY).is_none(),
            "no page reads the metrics listener"
        );

        let counts = state.metrics.render(&state.hub, 0);
        let count = |needle: &str| {
            counts
                .lines()
                .find(|line| !line.starts_with('#') && line.contains(needle))
                .and_then(|line| line.rsplit(' ').next())
                .unwrap_or_else(|| panic!("{needle} in {counts}"))
                .to_owned()
        };
        assert_eq!(count(r#"route="unmatched",status="405""#), "2");
        assert_eq!(count(r#"route="/health",status="200""#), "1");
        assert_eq!(count(r#"code="method_not_allowed""#), "2");
    }

    #[test]
    fn tokens_are_found_in_the_header_the_query_or_the_cookie() {
        let none = Query::default();
        assert_eq!(
            token(&headers(&[("authorization", "Bearer abc")]), &none).unwrap(),
            Some(("abc", Carrier::Header))
        );
        assert_eq!(
            token(&headers(&[("authorization", "bearer  abc ")]), &none).unwrap(),
            Some(("abc", Carrier::Header))
        );
        assert!(token(&headers(&[("authorization", "Basic abc")]), &none).is_err());
        assert!(token(&headers(&[("authorization", "Bearer")]), &none).is_err());
        assert_eq!(
            token(&HeaderMap::new(), &Query::parse(Some("access_token=q1"))).unwrap(),
            Some(("q1", Carrier::Query))
        );
        let cookies = headers(&[("cookie", "a=1; pere_token=c1"), ("cookie", "b=2")]);
        assert_eq!(
            token(&cookies, &none).unwrap(),
            Some(("c1", Carrier::Cookie))
        );
        assert_eq!(
            token(&headers(&[("cookie", "pere_tokenx=1")]), &none).unwrap(),
            None
        );
        assert_eq!(token(&HeaderMap::new(), &none).unwrap(), None);
    }

    #[test]
    fn changes_from_pages_of_other_sites_are_refused_with_ambient_credentials() {
        let mut config = Config::defaults();
        config.allow_origins = vec!["https://app.example".to_owned()];
        let uri: Uri = "/push/C".parse().unwrap();
        let check = |method: Method, pairs: &[(&str, &str)], ambient: Ambient| {
            let mut all = vec![("host", "pere.example:4567")];
            all.extend_from_slice(pairs);
            same_site(&config, &method, &uri, &headers(&all), ambient)
                .map_err(|err| (err.status.as_u16(), err.code))
        };
        let refused = Err((403, "cross_origin"));
        for ambient in [Ambient::Cookie, Ambient::Reach] {
            let post = |pairs: &[(&str, &str)]| check(Method::POST, pairs, ambient);
            assert_eq!(post(&[("origin", "https://evil.example")]), refused);
            assert_eq!(post(&[("origin", "null")]), refused);
            assert_eq!(post(&[("sec-fetch-site", "cross-site")]), refused);
            assert_eq!(post(&[("sec-fetch-site", "same-site")]), refused);
            assert_eq!(
                post(&[
                    ("origin", "https://evil.example"),
                    ("sec-fetch-site", "cross-site")
                ]),
                refused
            );
            assert_eq!(post(&[("origin", "http://pere.example:4567")]), Ok(()));
            assert_eq!(post(&[("origin", "HTTP://Pere.Example:4567")]), Ok(()));
            assert_eq!(
                post(&[("origin", "https://pere.example:4567")]),
                refused,
                "the scheme counts"
            );
            assert_eq!(post(&[("origin", "http://pere.example")]), refused);
            assert_eq!(post(&[("origin", "https://app.example")]), Ok(()));
            assert_eq!(post(&[("sec-fetch-site", "same-origin")]), Ok(()));
            assert_eq!(post(&[("sec-fetch-site", "none")]), Ok(()));
            for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
                assert_eq!(
                    check(method, &[("origin", "https://evil.example")], ambient),
                    Ok(()),
                    "reading changes nothing"
                );
            }
            for method in [Method::PUT, Method::DELETE] {
                assert_eq!(
                    check(method, &[("origin", "https://evil.example")], ambient),
                    refused
                );
            }
        }
        assert_eq!(
            check(Method::POST, &[], Ambient::Cookie),
            refused,
            "only a browser adds a cookie unasked"
        );
        assert_eq!(
            check(Method::POST, &[], Ambient::Reach),
            Ok(()),
            "a program, with nothing a page could borrow"
        );
        config.allow_origins.push("*".to_owned());
        let any = |ambient| {
            same_site(
                &config,
                &Method::POST,
                &uri,
                &headers(&[("origin", "https://evil.example")]),
                ambient,
            )
            .is_ok()
        };
        assert!(
            any(Ambient::Reach) && !any(Ambient::Cookie),
            "* carries no credentials"
        );
    }

    #[test]
    fn a_token_speaks_only_for_its_device() {
        let d = |s: &str| DeviceId::new(s).unwrap();
        let bound = Caller {
            device: Some(d("D1")),
            grants: Some(Grants::default()),
        };
        assert_eq!(bound.speaks_as(None).unwrap(), Some(d("D1")));
        assert_eq!(bound.speaks_as(Some(d("D1"))).unwrap(), Some(d("D1")));
        assert_eq!(
            bound.speaks_as(Some(d("D2"))).unwrap_err().code,
            "device_mismatch"
        );
        let open = Caller {
            device: Some(d("D1")),
            grants: None,
        };
        assert_eq!(
            open.speaks_as(Some(d("D2"))).unwrap(),
            Some(d("D2")),
            "without tokens, as the original"
        );
    }

    #[test]
    fn routes_need_their_grants() {
        let device = DeviceId::new("D1").unwrap();
        let grants = Grants {
            publish: vec!["p.*".into()],
            subscribe: vec!["s".into()],
            admin: false,
        };
        let ok = |route: Route<'_>| authorize(&route, &device, &grants).is_ok();
        assert!(ok(Route::Push("p.1")) && !ok(Route::Push("s")));
        assert!(
            ok(Route::Feed("s"))
                && ok(Route::Feedback("s"))
                && ok(Route::Receipts("s"))
                && ok(Route::Presence("s"))
        );
        assert!(!ok(Route::Feed("p.1")));
        assert!(ok(Route::DevicePending("s", "D1")) && !ok(Route::DevicePending("s", "D2")));
        assert!(
            !ok(Route::AdminConnections)
                && !ok(Route::Events("s"))
                && !ok(Route::RegisterDevice("s", "D1"))
        );
        assert!(
            !ok(Route::AdminStream) && ok(Route::Dashboard),
            "the page is public, its stream is not"
        );
        let admin = Grants {
            admin: true,
            ..Grants::default()
        };
        assert!(authorize(&Route::AdminDevices("x"), &device, &admin).is_ok());
        assert!(authorize(&Route::DevicePending("x", "D9"), &device, &admin).is_ok());
        assert!(
            authorize(&Route::Push("x"), &device, &admin).is_err(),
            "admin does not imply publish"
        );
    }
}
