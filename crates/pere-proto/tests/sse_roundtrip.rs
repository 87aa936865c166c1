//! Property: any body, any event type and id, encoded by PERE and decoded by a widely used SSE
//! client (`eventsource-stream`), arrives as exactly one event with the same id, type and data
//! (line breaks as LF, which is all SSE can carry).

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use pere_proto::sse;
use proptest::prelude::*;

fn decode(bytes: bytes::Bytes) -> Vec<eventsource_stream::Event> {
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(
        stream
            .eventsource()
            .map(|e| e.expect("a valid stream"))
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_body_is_one_event(body in any::<String>(), id in any::<u64>(), event_type in "[A-Za-z0-9_.:-]{1,64}") {
        let events = decode(sse::encode_event(id, Some(&event_type), &body));
        prop_assert_eq!(events.len(), 1);
        let expected = body.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(&events[0].data, &expected);
        prop_assert_eq!(&events[0].id, &id.to_string());
        prop_assert_eq!(&events[0].event, &event_type);
    }

    #[test]
    fn any_body_in_a_notice_is_one_event_without_an_id(body in any::<String>()) {
        let mut stream = sse::encode_event(7, None, "before").to_vec();
        stream.extend_from_slice(&sse::encode_notice("complete", &body));
        let events = decode(stream.into());
        prop_assert_eq!(events.len(), 2);
        prop_assert_eq!(&events[1].event, "complete");
        prop_assert_eq!(&events[1].id, "7", "a notice leaves the last id as it was");
    }
}
