//! The API's contract: the OpenAPI 3.1 document of every endpoint, written by hand in
//! `assets/openapi.json`, embedded in the binary and served at `GET /openapi.json`.
//!
//! Written by hand rather than generated, so that it reads as documentation (descriptions, the SSE
//! frames, the codes of each status) and `pere-core` needs no schema derive. Tests here hold it to
//! the code: every [`Route`](crate::route::Route) is in it and every operation in it is a route,
//! every wire view of [`pere_proto::wire`] validates against its schema, and every error code the
//! server uses is listed under its status. `tests/contract.rs` runs schemathesis against a live
//! server with it. Name schemas carry the pattern only; that `.` and `..` are refused is said in
//! their description, since a `not` there doubles the time schemathesis takes to draw names.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::response::{self, ResponseBody};

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("../assets/openapi.json");

/// The answer to `GET /openapi.json`.
pub fn document() -> Response<ResponseBody> {
    let mut answer = Response::new(response::full(DOCUMENT.as_bytes()));
    *answer.status_mut() = StatusCode::OK;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use hyper::Method;
    use pere_proto::wire::{
        AckJson, Banner, BatchAnswer, ChannelJson, ChannelsPage, CompletionJson, ConnectionsJson,
        CumulativeAnswer, DeviceJson, ErrorBody, EventJson, EventList, EventReceipts,
        FeedbackRequest, GapNotice, Health, MembershipJson, PendingEvents, PresenceJson,
        PushAccepted, PushWaited, Readiness, ReceiptBatchAnswer, ReceiptBatchEntry, ReceiptCounts,
        ReceiptJson, ReceiptSummaryJson, ResetNotice, WebhookSummary,
    };
    use serde::Serialize;
    use serde_json::{json, Value};
    use strum::IntoEnumIterator;

    use super::DOCUMENT;
    use crate::route::{NoRoute, Route, RouteDiscriminants};

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("assets/openapi.json is JSON")
    }

    /// The methods an OpenAPI path item can hold, as the router spells them.
    const METHODS: [&str; 8] = [
        "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
    ];

    /// A concrete path for a template: placeholders become valid names and ids.
    fn concrete(template: &str) -> String {
        template
            .replace("{channel}", "C1")
            .replace("{device}", "D1")
            .replace("{id}", "7")
    }

    /// The documented operations: (method, path template).
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method.to_ascii_lowercase()).is_some() {
                    found.insert((method.to_owned(), path.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1.")),
            "{}",
            doc["openapi"]
        );
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        // Every reference points at something: a typo would leave a client generator guessing.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 50, "the document uses its components");
        for reference in refs {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("a local reference: {reference}"));
            assert!(doc.pointer(pointer).is_some(), "{reference} names nothing");
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(reference)) => out.push(reference.clone()),
                        _ => collect_refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    /// One route of every kind, with sample parameters.
    fn every_route() -> Vec<Route<'static>> {
        vec![
            Route::Root,
            Route::SubscriberPage,
            Route::Script,
            Route::Health,
            Route::Healthz,
            Route::Readyz,
            Route::OpenApi,
            Route::Favicon,
            Route::Push("C1"),
            Route::Feed("C1"),
            Route::Feedback("C1"),
            Route::AdminConnections,
            Route::AdminChannels,
            Route::Metrics,
            Route::AdminStream,
            Route::Dashboard,
            Route::AdminEvents("C1"),
            Route::AdminDevices("C1"),
            Route::AdminReceipts("C1", "7"),
            Route::RegisterDevice("C1", "D1"),
            Route::RemoveDevice("C1", "D1"),
            Route::DevicePending("C1", "D1"),
            Route::Events("C1"),
            Route::Event("C1", "7"),
            Route::Receipts("C1"),
            Route::Presence("C1"),
            Route::Preflight,
        ]
    }

    #[test]
    fn every_kind_of_route_has_a_sample() {
        let sampled: BTreeSet<RouteDiscriminants> =
            every_route().iter().map(RouteDiscriminants::from).collect();
        let missing: Vec<_> = RouteDiscriminants::iter()
            .filter(|kind| !sampled.contains(kind))
            .collect();
        assert!(
            missing.is_empty(),
            "add these routes to every_route() and to assets/openapi.json: {missing:?}"
        );
    }

    /// Every route the router has is documented under its template, and every documented
    /// operation is that route: adding an endpoint without documenting it (or the other way
    /// round) fails here. Preflights answer `OPTIONS` on any path, which the document says once
    /// in its description rather than on every path.
    #[test]
    fn every_route_is_documented_and_every_operation_is_a_route() {
        let doc = document();
        let documented = operations(&doc);
        let mut routed = BTreeSet::new();
        for route in every_route() {
            let (method, template) = route.template();
            if route == Route::Preflight {
                assert!(doc["info"]["description"]
                    .as_str()
                    .unwrap()
                    .contains("OPTIONS on any path"));
                continue;
            }
            routed.insert((method.to_owned(), template.to_owned()));
        }
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from assets/openapi.json: {undocumented:?}"
        );
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            unrouted.is_empty(),
            "documented operations with no route: {unrouted:?}"
        );
        // The router takes each documented path to the route of that template, and answers the
        // methods the document lists there (HEAD with GET, preflights aside), no others.
        for path in doc["paths"].as_object().unwrap().keys() {
            let concrete = concrete(path);
            for method in METHODS.into_iter().filter(|m| *m != "OPTIONS") {
                let listed = documented.contains(&(method.to_owned(), path.clone()))
                    || (method == "HEAD" && documented.contains(&("GET".to_owned(), path.clone())));
                let parsed =
                    Route::parse(&Method::from_bytes(method.as_bytes()).unwrap(), &concrete);
                match parsed {
                    Ok(route) if listed => {
                        let (_, template) = route.template();
                        assert_eq!(template, path, "{method} {concrete} is routed to {route:?}");
                    }
                    Err(NoRoute::MethodNotAllowed(_)) if !listed => {}
                    other => panic!("{method} {concrete}: documented {listed}, routed {other:?}"),
                }
            }
        }
    }

    /// The operations the document lets a client call without a token (`"security": []`) are
    /// the routes the door lets in without one ([`Route::is_public`]), and no others.
    #[test]
    fn the_document_asks_no_token_of_the_public_routes_only() {
        let doc = document();
        for route in every_route() {
            if route == Route::Preflight {
                continue;
            }
            let (method, template) = route.template();
            let operation = &doc["paths"][template][method.to_ascii_lowercase()];
            let open = operation["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(open, route.is_public(), "{method} {template}");
        }
    }

    /// Every `{name}` in a path has its path parameter, and every path parameter its `{name}`.
    #[test]
    fn path_parameters_match_their_templates() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let named: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let declared: BTreeSet<&str> = item["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(named, declared, "{path}");
        }
    }

    fn resolve<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
        match value["$ref"].as_str() {
            Some(reference) => doc.pointer(&reference[1..]).expect("reference"),
            None => value,
        }
    }

    /// Validates `value` against the document's `#/components/schemas/{name}`, formats included.
    fn check(doc: &Value, name: &str, value: &impl Serialize) {
        // The document is the schema's root, so its references resolve; keywords JSON Schema does
        // not know (`openapi`, `paths`, ...) are ignored.
        let mut schema = doc.clone();
        schema["$ref"] = json!(format!("#/components/schemas/{name}"));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|err| panic!("schema {name}: {err}"));
        let instance = serde_json::to_value(value).expect("serialises");
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{name} does not match {instance}:\n{}",
            errors.join("\n")
        );
    }

    fn raw(json: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(json.to_owned()).unwrap()
    }

    const T: &str = "2026-11-30T04:09:47.579Z";

    fn summary() -> ReceiptSummaryJson {
        ReceiptSummaryJson {
            channel: "C1".into(),
            id: 7,
            acknowledged: vec![AckJson {
                device: "D1".into(),
                status: "rx ok".into(),
                class: "ok".into(),
                time: T.into(),
            }],
            delivered: vec!["D2".into()],
            pending: vec!["D3".into()],
            expected: 3,
            complete: false,
            counts: ReceiptCounts {
                acknowledged: 1,
                delivered: 1,
                pending: 1,
            },
            last_seen: [("D2".to_owned(), T.to_owned())].into(),
        }
    }

    fn event(device: Option<&str>, event_type: Option<&str>, data: &str) -> EventJson {
        EventJson {
            channel: "C1".into(),
            id: 7,
            time: T.into(),
            device: device.map(Into::into),
            event_type: event_type.map(Into::into),
            data: raw(data),
        }
    }

    /// Each wire view, with its optional fields both present and left out, is what the document
    /// says it is.
    #[test]
    fn the_wire_views_match_their_schemas() {
        let doc = &document();
        check(
            doc,
            "Banner",
            &Banner {
                message: "PERE server up and running".into(),
            },
        );
        check(
            doc,
            "Health",
            &Health {
                status: "ok".into(),
            },
        );
        check(
            doc,
            "Readiness",
            &Readiness {
                status: "ready".into(),
                reason: None,
                damaged_events: None,
            },
        );
        check(
            doc,
            "Readiness",
            &Readiness {
                status: "not_ready".into(),
                reason: Some("store_failed".into()),
                damaged_events: None,
            },
        );
        check(
            doc,
            "Readiness",
            &Readiness {
                status: "degraded".into(),
                reason: None,
                damaged_events: Some(3),
            },
        );
        let accepted = PushAccepted {
            channel: "C1".into(),
            id: 7,
            time: T.into(),
        };
        check(doc, "PushAccepted", &accepted);
        let waited = PushWaited {
            channel: "C1".into(),
            id: 7,
            time: T.into(),
            satisfied: false,
            receipts: summary(),
        };
        check(doc, "PushWaited", &waited);
        let receipt = ReceiptJson {
            channel: "C1".into(),
            id: 7,
            device: "D1".into(),
            status: "ok".into(),
            time: T.into(),
        };
        check(doc, "Receipt", &receipt);
        check(
            doc,
            "FeedbackRequest",
            &FeedbackRequest {
                device: Some("D1".into()),
                id: Some(json!(7)),
                upto: None,
                status: Some("ok".into()),
            },
        );
        check(
            doc,
            "FeedbackRequest",
            &FeedbackRequest {
                device: None,
                id: Some(json!("7")),
                upto: None,
                status: None,
            },
        );
        check(
            doc,
            "FeedbackRequest",
            &FeedbackRequest {
                device: Some("D1".into()),
                id: None,
                upto: Some(json!(9)),
                status: Some("rx ok".into()),
            },
        );
        let cumulative = CumulativeAnswer {
            channel: "C1".into(),
            device: "D1".into(),
            upto: 9,
            acknowledged: 2,
            ids: vec![3, 9],
            more: false,
        };
        check(doc, "CumulativeAnswer", &cumulative);
        check(
            doc,
            "CumulativeAnswer",
            &CumulativeAnswer {
                acknowledged: 0,
                ids: vec![],
                more: true,
                ..cumulative
            },
        );
        check(
            doc,
            "ReceiptBatchAnswer",
            &ReceiptBatchAnswer {
                channel: "C1".into(),
                device: "D1".into(),
                receipts: vec![ReceiptBatchEntry {
                    id: 7,
                    seq: 12,
                    status: "read".into(),
                    replayed: true,
                }],
            },
        );
        check(
            doc,
            "Event",
            &event(Some("P1"), Some("order"), r#"{"a":[1,2]}"#),
        );
        check(doc, "Event", &event(None, None, r#""plain text""#));
        check(
            doc,
            "EventList",
            &EventList {
                channel: "C1".into(),
                head: 9,
                events: vec![event(None, None, "42")],
                unreadable: vec![],
            },
        );
        check(
            doc,
            "EventList",
            &EventList {
                channel: "C1".into(),
                head: 0,
                events: vec![],
                unreadable: vec![],
            },
        );
        check(
            doc,
            "EventList",
            &EventList {
                channel: "C1".into(),
                head: 9,
                events: vec![event(None, None, "42")],
                unreadable: vec![8, 9],
            },
        );
        check(doc, "ReceiptSummary", &summary());
        let complete = ReceiptSummaryJson {
            delivered: vec![],
            pending: vec![],
            expected: 1,
            complete: true,
            counts: ReceiptCounts {
                acknowledged: 1,
                delivered: 0,
                pending: 0,
            },
            last_seen: BTreeMap::new(),
            ..summary()
        };
        check(doc, "ReceiptSummary", &complete);
        check(
            doc,
            "EventReceipts",
            &EventReceipts::retained(event(Some("P1"), Some("order"), "{}"), summary()),
        );
        check(
            doc,
            "EventReceipts",
            &EventReceipts::pruned("C1", 7, summary()),
        );
        check(
            doc,
            "WebhookSummary",
            &WebhookSummary {
                receipts: summary(),
                reason: "timeout".into(),
            },
        );
        let device = DeviceJson {
            recipient: true,
            op: "feedback".into(),
            at: T.into(),
            last_event_id: Some("7".into()),
            online: true,
            open_streams: 2,
            first_seen: T.into(),
            last_seen: T.into(),
            last_delivered: 7,
            last_acked: 6,
            receipts: 6,
        };
        let never = DeviceJson {
            last_event_id: None,
            op: "feed".into(),
            online: false,
            open_streams: 0,
            ..device.clone()
        };
        let devices: BTreeMap<String, DeviceJson> =
            [("D1".to_owned(), device), ("D2".to_owned(), never)].into();
        check(doc, "Devices", &devices);
        check(
            doc,
            "BatchAnswer",
            &BatchAnswer {
                channel: "C1".into(),
                ids: vec![7, 8, 9],
                time: T.into(),
                replayed: 1,
            },
        );
        let channel = ChannelJson {
            channel: "C1".into(),
            open_streams: 2,
            head: 9,
            retained: 9,
            recipients: 3,
        };
        check(
            doc,
            "ChannelsPage",
            &ChannelsPage {
                channels: vec![channel],
            },
        );
        check(doc, "ChannelsPage", &ChannelsPage { channels: vec![] });
        let membership = MembershipJson {
            channel: "C1".into(),
            device: "D1".into(),
            since: T.into(),
            expects_events_after: 6,
            left_after: None,
        };
        check(doc, "Membership", &membership);
        check(
            doc,
            "Membership",
            &MembershipJson {
                left_after: Some(9),
                ..membership
            },
        );
        let pending = PendingEvents {
            channel: "C1".into(),
            device: "D1".into(),
            pending: vec![event(None, None, "1")],
        };
        check(doc, "PendingEvents", &pending);
        check(
            doc,
            "Connections",
            &ConnectionsJson {
                channels: [("C1".to_owned(), 4)].into(),
                total: 4,
            },
        );
        check(doc, "Connections", &ConnectionsJson::default());
        check(
            doc,
            "Presence",
            &PresenceJson {
                device: "D1".into(),
                online: false,
                at: T.into(),
            },
        );
        check(
            doc,
            "Completion",
            &CompletionJson {
                channel: "C1".into(),
                id: 7,
                expected: 3,
            },
        );
        check(doc, "GapNotice", &GapNotice { from: 1, to: 3 });
        check(
            doc,
            "ResetNotice",
            &ResetNotice {
                last_event_id: 9,
                head: 2,
            },
        );
    }

    /// The schemas refuse what the views never write, so the checks above can fail.
    #[test]
    fn the_schemas_are_strict() {
        let doc = &document();
        let validator = |name: &str| {
            let mut schema = doc.clone();
            schema["$ref"] = json!(format!("#/components/schemas/{name}"));
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap()
        };
        let accepted = validator("PushAccepted");
        assert!(accepted.is_valid(&json!({"channel": "C1", "id": 1, "time": T})));
        assert!(
            !accepted.is_valid(&json!({"channel": "C1", "id": 1, "time": T, "extra": 1})),
            "no unknown fields"
        );
        assert!(
            !accepted.is_valid(&json!({"channel": "a/b", "id": 1, "time": T})),
            "channel names"
        );
        assert!(
            !accepted.is_valid(&json!({"channel": "C1", "id": 1, "time": "yesterday"})),
            "times"
        );
        assert!(!validator("ErrorBody").is_valid(&json!({"error": "bad_channel", "message": "m"})));
    }

    /// Every error code the server's code answers with (the literal codes given to `ApiError::new`
    /// with a literal status, and to `bad_request`, in this crate's sources, and the constructors of `error.rs`) is listed
    /// in the document under its status.
    #[test]
    fn every_error_code_is_documented_under_its_status() {
        let doc = document();
        let listed = |status: u16| -> BTreeSet<String> {
            doc["components"]["schemas"][format!("Error{status}")]["properties"]["error"]
                ["properties"]["code"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("the document has no Error{status} schema"))
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect()
        };
        let mut used: BTreeSet<(u16, String)> = BTreeSet::new();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for file in std::fs::read_dir(&src).unwrap() {
            let path = file.unwrap().path();
            // This file names the patterns it looks for.
            if path.ends_with("openapi.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for (status, code) in codes_in(&text) {
                used.insert((status, code));
            }
        }
        // The constructors of `ApiError` that name their code without a literal status.
        for err in [
            crate::error::ApiError::not_found(),
            crate::error::ApiError::method_not_allowed("/", "GET"),
            crate::error::ApiError::missing_token("m"),
            crate::error::ApiError::invalid_token(),
            crate::error::ApiError::expired_token(),
            crate::error::ApiError::forbidden("m"),
            crate::error::ApiError::device_mismatch("D1"),
            crate::error::ApiError::too_large(1),
            crate::error::ApiError::from(pere_core::ChannelName::new("a/b").unwrap_err()),
            crate::error::ApiError::from(pere_core::DeviceId::new("a/b").unwrap_err()),
            crate::error::ApiError::from(pere_core::EventType::new("a/b").unwrap_err()),
            crate::error::ApiError::from(pere_core::StoreError::InvalidIdempotencyKey),
        ] {
            used.insert((err.status.as_u16(), err.code.to_owned()));
        }
        assert!(used.len() > 25, "the scan finds the codes: {used:?}");
        let missing: Vec<_> = used
            .iter()
            .filter(|(status, code)| !listed(*status).contains(code))
            .collect();
        assert!(
            missing.is_empty(),
            "error codes missing from assets/openapi.json: {missing:?}"
        );
    }

    /// `(status, code)` of each `new(StatusCode::NAME, "code"` and `bad_request("code"` in `text`.
    fn codes_in(text: &str) -> Vec<(u16, String)> {
        let literal = |rest: &str| -> Option<String> {
            let rest = rest.trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_owned())
        };
        let mut found = Vec::new();
        for (at, _) in text.match_indices("bad_request(") {
            if let Some(code) = literal(&text[at + "bad_request(".len()..]) {
                found.push((400, code));
            }
        }
        for (at, _) in text.match_indices("new(") {
            let Some(rest) = text[at + "new(".len()..]
                .trim_start()
                .strip_prefix("StatusCode::")
            else {
                continue;
            };
            let Some((name, rest)) = rest.split_once(',') else {
                continue;
            };
            let status = match name.trim() {
                "BAD_REQUEST" => 400,
                "UNAUTHORIZED" => 401,
                "FORBIDDEN" => 403,
                "NOT_FOUND" => 404,
                "METHOD_NOT_ALLOWED" => 405,
                "REQUEST_TIMEOUT" => 408,
                "NOT_ACCEPTABLE" => 406,
                "CONFLICT" => 409,
                "GONE" => 410,
                "LENGTH_REQUIRED" => 411,
                "PAYLOAD_TOO_LARGE" => 413,
                "UNSUPPORTED_MEDIA_TYPE" => 415,
                "UNPROCESSABLE_ENTITY" => 422,
                "TOO_MANY_REQUESTS" => 429,
                "REQUEST_HEADER_FIELDS_TOO_LARGE" => 431,
                "INTERNAL_SERVER_ERROR" => 500,
                "NOT_IMPLEMENTED" => 501,
                "SERVICE_UNAVAILABLE" => 503,
                other => panic!("a status this test does not know yet: {other}"),
            };
            if let Some(code) = literal(rest) {
                found.push((status, code));
            }
        }
        found
    }

    #[test]
    fn error_bodies_match_the_error_schema() {
        let doc = &document();
        check(
            doc,
            "ErrorBody",
            &ErrorBody::new("bad_channel", "channel names are 1-128 characters"),
        );
        check(doc, "Error400", &ErrorBody::new("bad_channel", "m"));
        check(doc, "Error503", &ErrorBody::new("server_full", "m"));
        check(doc, "Error500", &ErrorBody::new("event_damaged", "m"));
    }
}
