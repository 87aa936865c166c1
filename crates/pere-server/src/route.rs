//! Request routing: method and path become a [`Route`], or an error that says what is wrong.

use hyper::Method;

/// Every endpoint of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl<'a> Route<'a> {
    /// Matches a request line.
    pub fn parse(method: &Method, path: &'a str) -> Result<Route<'a>, NoRoute> {
        if method == Method::OPTIONS {
            return Ok(Route::Preflight);
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (route, allowed) = match segments.as_slice() {
            [""] => (Route::Root, "GET"),
            ["subscriber.html"] => (Route::SubscriberPage, "GET"),
            ["pere.js"] => (Route::Script, "GET"),
            ["health"] => (Route::Health, "GET"),
            ["favicon.ico"] => (Route::Favicon, "GET"),
            ["healthz"] => (Route::Healthz, "GET"),
            ["readyz"] => (Route::Readyz, "GET"),
            ["push", channel] => (Route::Push(channel), "POST"),
            ["feed", channel] => (Route::Feed(channel), "GET"),
            ["feedback", channel] => (Route::Feedback(channel), "POST"),
            ["admin", "connections"] => (Route::AdminConnections, "GET"),
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    proptest::proptest! {
        #[test]
        fn any_path_is_a_route_or_a_refusal(path in "/.{0,100}", method in "(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH)") {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let _ = Route::parse(&method, &path);
        }
    }
}
