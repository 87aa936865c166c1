//! The one door every request passes, whatever kind of connection carries it (a hyper connection
//! or a dedicated feed connection): method, path, query and headers become a [`Route`] and a
//! [`Caller`], and the request is let in or refused here. The access log and the refusal log are
//! written here too; whatever must hold for every request (credentials, limits, counts) belongs
//! in [`admit`] and nowhere else.

use hyper::header::HeaderMap;
use hyper::{Method, Uri};
use pere_core::{DeviceId, Store};

use crate::activity;
use crate::error::ApiError;
use crate::limits::StreamSlot;
use crate::request::{self, Query};
use crate::route::{NoRoute, Route};
use crate::state::AppState;

/// Who is asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The device the request speaks for (the `device` header, else `?device=`), if it says.
    pub device: Option<DeviceId>,
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

/// Decides whether a request may go on, and where to.
///
/// # Errors
/// The answer for a request that may not: 404 and 405 for paths and methods the server does not
/// have, 400 for a device id that is not one, 503 or 429 for a stream past the limits.
pub fn admit<'a, S: Store>(
    state: &AppState<S>,
    method: &Method,
    uri: &'a Uri,
    headers: &HeaderMap,
) -> Result<Admitted<'a>, ApiError> {
    let path = uri.path();
    let route = Route::parse(method, path).map_err(|no| match no {
        NoRoute::NotFound => ApiError::not_found(),
        NoRoute::MethodNotAllowed(allowed) => ApiError::method_not_allowed(path, allowed),
    })?;
    let query = Query::parse(uri.query());
    let caller = Caller { device: request::device(headers, &query)? };
    // A HEAD of a stream opens nothing, so it takes no place.
    let stream = match route {
        Route::Feed(_) | Route::Receipts(_) | Route::Presence(_) if method == Method::GET => {
            Some(state.limits.stream(caller.device.as_ref())?)
        }
        _ => None,
    };
    activity::admitted(method.as_str(), path, caller.device.as_ref().map(|d| d.as_str()));
    Ok(Admitted { route, caller, query, stream })
}

/// Logs a request answered with an error, at the door or later by its handler; every refusal of
/// either kind of connection passes here.
pub fn refused(method: &Method, uri: &Uri, err: &ApiError) {
    activity::refused(method.as_str(), uri.path(), err.status.as_u16(), err.code);
}
