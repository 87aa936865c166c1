//! Request routing: method and path become a [`Route`], or an error that says what is wrong.

use hyper::http::uri::{PathAndQuery, Uri};
use hyper::Method;

/// Every endpoint of the server. Each is in the OpenAPI document (`assets/openapi.json`) under
/// its [`Route::template`]; a test in `openapi` walks every variant to hold them together.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    test,
    derive(strum::EnumDiscriminants),
    strum_discriminants(derive(strum::EnumIter, PartialOrd, Ord))
)]
pub enum Route<'a> {
    /// `GET /`: the JSON banner, or the subscriber page for a browser.
    Root,
    /// `GET /subscriber.html`.
    SubscriberPage,
    /// `GET /pere.js`: the JavaScript client, an ES module.
    Script,
    /// `GET /health`.
    Health,
    /// `GET /healthz`: the process answers.
    Healthz,
    /// `GET /readyz`: the store answers a read and a write, and the server is not stopping.
    Readyz,
    /// `GET /openapi.json`: the API's contract.
    OpenApi,
    /// `GET /favicon.ico`, which every browser asks for: 204, so it leaves no refusal in the log.
    Favicon,
    /// `POST /push/:channel`.
    Push(&'a str),
    /// `GET /feed/:channel`.
    Feed(&'a str),
    /// `POST /feedback/:channel`.
    Feedback(&'a str),
    /// `GET /admin/connections`.
    AdminConnections,
    /// `GET /admin/channels`: channels with their streams, head, retained events, recipients.
    AdminChannels,
    /// `GET /metrics`: the Prometheus text format.
    Metrics,
    /// `GET /admin/events/:channel`.
    AdminEvents(&'a str),
    /// `GET /admin/devices/:channel`.
    AdminDevices(&'a str),
    /// `GET /admin/receipts/:channel/:id`.
    AdminReceipts(&'a str, &'a str),
    /// `PUT /devices/:channel/:device`: register a recipient.
    RegisterDevice(&'a str, &'a str),
    /// `DELETE /devices/:channel/:device`: remove a recipient.
    RemoveDevice(&'a str, &'a str),
    /// `GET /devices/:channel/:device/pending`.
    DevicePending(&'a str, &'a str),
    /// `GET /events/:channel`: retained events with ids and times (`?after=&limit=`).
    Events(&'a str),
    /// `GET /events/:channel/:id`: one event with its receipt summary.
    Event(&'a str, &'a str),
    /// `GET /receipts/:channel`: the receipt stream (SSE).
    Receipts(&'a str),
    /// `GET /presence/:channel`: the presence stream (SSE).
    Presence(&'a str),
    /// `GET /dashboard`: the live dashboard page.
    Dashboard,
    /// `GET /admin/stream`: the dashboard's stream of admin events (SSE; `?channel=` for one
    /// channel's devices and receipts).
    AdminStream,
    /// `OPTIONS` on any path: a CORS preflight.
    Preflight,
}

/// Why a request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No such path.
    NotFound,
    /// The path exists, with other methods.
    MethodNotAllowed(&'static str),
}

/// Path segments of the longest route (a test holds it to the OpenAPI document's longest path).
const MAX_SEGMENTS: usize = 4;

impl<'a> Route<'a> {
    /// Matches a request line.
    pub fn parse(method: &Method, path: &'a str) -> Result<Route<'a>, NoRoute> {
        if method == Method::OPTIONS {
            return Ok(Route::Preflight);
        }
        // On the stack: every request is routed, twice (admitted, then counted).
        let mut segments = [""; MAX_SEGMENTS];
        let mut count = 0;
        for segment in path.trim_start_matches('/').split('/') {
            let Some(slot) = segments.get_mut(count) else {
                return Err(NoRoute::NotFound);
            };
            *slot = segment;
            count += 1;
        }
        let (route, allowed) = match &segments[..count] {
            [""] => (Route::Root, "GET"),
            ["subscriber.html"] => (Route::SubscriberPage, "GET"),
            ["pere.js"] => (Route::Script, "GET"),
            ["health"] => (Route::Health, "GET"),
            ["favicon.ico"] => (Route::Favicon, "GET"),
            ["healthz"] => (Route::Healthz, "GET"),
            ["readyz"] => (Route::Readyz, "GET"),
            ["openapi.json"] => (Route::OpenApi, "GET"),
            ["push", channel] => (Route::Push(channel), "POST"),
            ["feed", channel] => (Route::Feed(channel), "GET"),
            ["feedback", channel] => (Route::Feedback(channel), "POST"),
            ["admin", "connections"] => (Route::AdminConnections, "GET"),
            ["admin", "channels"] => (Route::AdminChannels, "GET"),
            ["metrics"] => (Route::Metrics, "GET"),
            ["admin", "stream"] => (Route::AdminStream, "GET"),
            ["dashboard"] => (Route::Dashboard, "GET"),
            ["admin", "events", channel] => (Route::AdminEvents(channel), "GET"),
            ["admin", "devices", channel] => (Route::AdminDevices(channel), "GET"),
            ["admin", "receipts", channel, id] => (Route::AdminReceipts(channel, id), "GET"),
            ["devices", channel, device] if method == Method::DELETE => {
                (Route::RemoveDevice(channel, device), "PUT, DELETE")
            }
            ["devices", channel, device] => (Route::RegisterDevice(channel, device), "PUT, DELETE"),
            ["devices", channel, device, "pending"] => {
                (Route::DevicePending(channel, device), "GET")
            }
            ["events", channel] => (Route::Events(channel), "GET"),
            ["events", channel, id] => (Route::Event(channel, id), "GET"),
            ["receipts", channel] => (Route::Receipts(channel), "GET"),
            ["presence", channel] => (Route::Presence(channel), "GET"),
            _ => return Err(NoRoute::NotFound),
        };
        let method_ok = match allowed {
            "GET" => method == Method::GET || method == Method::HEAD,
            "PUT, DELETE" => method == Method::PUT || method == Method::DELETE,
            _ => method == Method::POST,
        };
        if method_ok {
            Ok(route)
        } else {
            Err(NoRoute::MethodNotAllowed(allowed))
        }
    }

    /// The method and the path template of this route, as the OpenAPI document names them
    /// (`{channel}`, `{device}`, `{id}`); a preflight answers `OPTIONS` on any path (`*`). Also a
    /// label for a route that never grows with the requests.
    pub fn template(&self) -> (&'static str, &'static str) {
        match self {
            Route::Root => ("GET", "/"),
            Route::SubscriberPage => ("GET", "/subscriber.html"),
            Route::Script => ("GET", "/pere.js"),
            Route::Health => ("GET", "/health"),
            Route::Healthz => ("GET", "/healthz"),
            Route::Readyz => ("GET", "/readyz"),
            Route::OpenApi => ("GET", "/openapi.json"),
            Route::Favicon => ("GET", "/favicon.ico"),
            Route::Push(_) => ("POST", "/push/{channel}"),
            Route::Feed(_) => ("GET", "/feed/{channel}"),
            Route::Feedback(_) => ("POST", "/feedback/{channel}"),
            Route::AdminConnections => ("GET", "/admin/connections"),
            Route::AdminChannels => ("GET", "/admin/channels"),
            Route::Metrics => ("GET", "/metrics"),
            Route::AdminStream => ("GET", "/admin/stream"),
            Route::Dashboard => ("GET", "/dashboard"),
            Route::AdminEvents(_) => ("GET", "/admin/events/{channel}"),
            Route::AdminDevices(_) => ("GET", "/admin/devices/{channel}"),
            Route::AdminReceipts(..) => ("GET", "/admin/receipts/{channel}/{id}"),
            Route::RegisterDevice(..) => ("PUT", "/devices/{channel}/{device}"),
            Route::RemoveDevice(..) => ("DELETE", "/devices/{channel}/{device}"),
            Route::DevicePending(..) => ("GET", "/devices/{channel}/{device}/pending"),
            Route::Events(_) => ("GET", "/events/{channel}"),
            Route::Event(..) => ("GET", "/events/{channel}/{id}"),
            Route::Receipts(_) => ("GET", "/receipts/{channel}"),
            Route::Presence(_) => ("GET", "/presence/{channel}"),
            Route::Preflight => ("OPTIONS", "*"),
        }
    }

    /// Whether anyone may ask for this route, without a token: the banner, the pages (which
    /// then ask for a token) and their script, health, the API's contract (it holds no secret,
    /// and a client generator reads it before it has a token), and CORS preflights (a browser
    /// sends no credentials with those). In the OpenAPI document, these are the operations with
    /// `"security": []`.
    pub fn is_public(&self) -> bool {
        // Every variant named, so a new route cannot become public, or private, by default.
        match self {
            Route::Root
            | Route::SubscriberPage
            | Route::Script
            | Route::Health
            | Route::Healthz
            | Route::Readyz
            | Route::OpenApi
            | Route::Favicon
            | Route::Dashboard
            | Route::Preflight => true,
            Route::Push(_)
            | Route::Feed(_)
            | Route::Feedback(_)
            | Route::AdminConnections
            | Route::AdminChannels
            | Route::Metrics
            | Route::AdminEvents(_)
            | Route::AdminDevices(_)
            | Route::AdminReceipts(..)
            | Route::RegisterDevice(..)
            | Route::RemoveDevice(..)
            | Route::DevicePending(..)
            | Route::Events(_)
            | Route::Event(..)
            | Route::Receipts(_)
            | Route::Presence(_)
            | Route::AdminStream => false,
        }
    }
}

/// The URI with every percent-escape of a name character (`A-Za-z0-9_.:-`) in its path decoded,
/// or `None` when there is none: URL libraries, and the clients generated from the OpenAPI
/// document, escape `:` (and sometimes more) in a path segment, and `/push/orders%3Aeu` publishes
/// to `orders:eu`. Any other escape stays as it is, so `a%2Fb` is still one segment, refused as a
/// name. Both kinds of connection apply it before the door, so routing, tokens and logs see the
/// names themselves.
pub fn unescape_names(uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    if !path.contains('%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(b));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                // `path` is ASCII (a URI's path is), so each byte is a char.
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    if out == path {
        return None;
    }
    if let Some(query) = uri.query() {
        out.push('?');
        out.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(out).ok()?);
    Uri::from_parts(parts).ok()
}

/// The metrics label of the route a request asks for: its path template (a fixed set, never the
/// path itself); `unmatched` for a path no route has or a method it does not take.
pub fn name_of(method: &Method, path: &str) -> &'static str {
    Route::parse(method, path).map_or("unmatched", |route| route.template().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the OpenAPI document is a route, whose template is the document's:
    /// among other things, `MAX_SEGMENTS` follows the longest path.
    #[test]
    fn every_documented_operation_is_a_route() {
        let document: serde_json::Value =
            serde_json::from_str(include_str!("../assets/openapi.json")).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for (template, operations) in paths {
            let path = template
                .replace("{channel}", "C")
                .replace("{device}", "D")
                .replace("{id}", "1");
            for method in operations.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let route = Route::parse(&method, &path)
                    .unwrap_or_else(|_| panic!("{method} {template} is documented, not routed"));
                assert_eq!(route.template(), (method.as_str(), template.as_str()));
            }
        }
        let longest = paths.keys().map(|p| p.split('/').count() - 1).max();
        assert_eq!(longest, Some(MAX_SEGMENTS));
    }

    #[test]
    fn routes() {
        assert_eq!(
            Route::parse(&Method::POST, "/push/C1"),
            Ok(Route::Push("C1"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/feed/C1"),
            Ok(Route::Feed("C1"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/admin/receipts/C1/7"),
            Ok(Route::AdminReceipts("C1", "7"))
        );
        assert_eq!(Route::parse(&Method::GET, "/"), Ok(Route::Root));
        assert_eq!(Route::parse(&Method::GET, "/pere.js"), Ok(Route::Script));
        assert_eq!(
            Route::parse(&Method::GET, "/dashboard"),
            Ok(Route::Dashboard)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/admin/stream"),
            Ok(Route::AdminStream)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/push/C1"),
            Err(NoRoute::MethodNotAllowed("POST"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/feed/C1/extra"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::GET, "/nowhere"),
            Err(NoRoute::NotFound)
        );
        // Longer than any route, and so found nowhere (even if its start is one).
        assert_eq!(
            Route::parse(&Method::GET, "/admin/receipts/C1/1/more"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::POST, "/feedback/C1/a/b/c/d/e/f"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/devices/C/H1"),
            Ok(Route::RegisterDevice("C", "H1"))
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/devices/C/H1"),
            Ok(Route::RemoveDevice("C", "H1"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/devices/C/H1"),
            Err(NoRoute::MethodNotAllowed("PUT, DELETE"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/devices/C/H1/pending"),
            Ok(Route::DevicePending("C", "H1"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/events/C"),
            Ok(Route::Events("C"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/events/C/4"),
            Ok(Route::Event("C", "4"))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/admin/channels"),
            Ok(Route::AdminChannels)
        );
        assert_eq!(Route::parse(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(name_of(&Method::POST, "/push/anything"), "/push/{channel}");
        assert_eq!(name_of(&Method::GET, "/no/such/path"), "unmatched");
    }

    #[test]
    fn escaped_name_characters_are_the_characters() {
        let unescape = |uri: &str| unescape_names(&uri.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            unescape("/push/orders%3Aeu?event=a%3Ab").as_deref(),
            Some("/push/orders:eu?event=a%3Ab")
        );
        assert_eq!(
            unescape("/devices/v%3a/D%2D1/pending").as_deref(),
            Some("/devices/v:/D-1/pending")
        );
        assert_eq!(
            unescape("/push/a%2Fb"),
            None,
            "a slash stays escaped: one segment, a bad name"
        );
        assert_eq!(unescape("/push/a%2Fb%3A").as_deref(), Some("/push/a%2Fb:"));
        assert_eq!(unescape("/push/a%20b%"), None);
        assert_eq!(unescape("/push/a%zz"), None);
        assert_eq!(unescape("/push/plain"), None);
    }

    proptest::proptest! {
        #[test]
        fn any_escaped_path_unescapes_to_a_uri(path in "/[a-zA-Z0-9%:/._-]{0,60}") {
            if let Ok(uri) = path.parse::<Uri>() {
                let _ = unescape_names(&uri);
            }
        }

        #[test]
        fn any_path_is_a_route_or_a_refusal(path in "/.{0,100}", method in "(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH)") {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let _ = Route::parse(&method, &path);
        }
    }
}
