//! The Redis store's own tests, each on a private Redis: the conformance suite (on one server,
//! plain and over TLS; on a three-primary Redis Cluster, plain and over TLS; through Sentinel,
//! every write confirmed by the replica), TLS failures told from outages, two nodes sharing one
//! sequence, an unloaded channel forgotten by the node, presence numbered once for the cluster, and an unreachable Redis failing fast.

use std::collections::HashSet;

use pere_proto::name::DeviceId;
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::Receipt;
use pere_testkit::redis_server::unrelated_ca_pem;
use pere_testkit::{RedisCluster, RedisSentinel, RedisServer};

use super::connection::RESPONSE_TIMEOUT;
use super::{RedisClientCert, RedisOptions, RedisStore, RedisTls};
use crate::error::StoreError;
use crate::store::conformance::{self, ROOMY};
use crate::store::{Retention, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = RedisServer::start();
    let url = server.url();
    let round = std::sync::atomic::AtomicU64::new(0);
    conformance::run_all(|retention| {
        // A fresh prefix per check: a fresh store on the same server.
        let prefix = format!(
            "t{}",
            round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let url = url.clone();
        async move {
            RedisStore::open(RedisOptions {
                url,
                prefix,
                retention,
                tls: RedisTls::default(),
                wait_replicas: 0,
            })
            .unwrap()
        }
    })
    .await;
}

/// Runs the conformance suite on the Redis at `url`, a fresh prefix per check (a fresh store
/// on the same Redis), with `tls`.
async fn conformance_on(url: &str, tls: RedisTls, wait_replicas: usize) {
    let round = std::sync::atomic::AtomicU64::new(0);
    conformance::run_all(|retention| {
        let prefix = format!(
            "c{}",
            round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let options = RedisOptions {
            url: url.to_owned(),
            prefix,
            retention,
            tls: tls.clone(),
            wait_replicas,
        };
        async move { RedisStore::open(options).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    conformance_on(&cluster.url(), RedisTls::default(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_a_cluster_over_tls() {
    let cluster = RedisCluster::start_tls(3);
    let ca = std::fs::read(cluster.ca_file()).expect("CA file");
    let tls = RedisTls {
        ca: Some(ca),
        client: None,
    };
    conformance_on(&cluster.url(), tls, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_through_sentinel_with_writes_confirmed_by_the_replica() {
    let redis = RedisSentinel::start();
    conformance_on(&redis.url(), RedisTls::default(), 1).await;
    let replicated = redis.cli(redis.replica_port(), &["EXISTS", "c0:confirmed"]);
    assert_eq!(replicated.trim(), "1", "confirmed writes went through WAIT");
}

#[tokio::test]
async fn replicas_confirmations_are_refused_on_a_cluster() {
    let refused = RedisStore::open(RedisOptions {
        url: "redis+cluster://127.0.0.1:7000,127.0.0.1:7001".into(),
        prefix: "p".into(),
        retention: ROOMY,
        tls: RedisTls::default(),
        wait_replicas: 1,
    });
    assert!(
        matches!(refused, Err(StoreError::Incompatible(_))),
        "{refused:?}"
    );
}

/// Options for a store on `server` (a TLS one) trusting `ca`, with the server's client
/// certificate when `client`.
fn over_tls(
    server: &RedisServer,
    prefix: &str,
    retention: Retention,
    ca: Option<Vec<u8>>,
    client: bool,
) -> RedisOptions {
    let read = |path: std::path::PathBuf| std::fs::read(path).expect("certificate file");
    RedisOptions {
        url: server.url(),
        prefix: prefix.to_owned(),
        retention,
        tls: RedisTls {
            ca,
            client: client.then(|| RedisClientCert {
                chain: read(server.client_cert_file()),
                key: read(server.client_key_file()),
            }),
        },
        wait_replicas: 0,
    }
}

fn ca_of(server: &RedisServer) -> Option<Vec<u8>> {
    Some(std::fs::read(server.ca_file()).expect("CA file"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_over_tls() {
    let server = RedisServer::start_tls(false);
    assert!(server.url().starts_with("rediss://"), "{}", server.url());
    let round = std::sync::atomic::AtomicU64::new(0);
    conformance::run_all(|retention| {
        let prefix = format!(
            "tls{}",
            round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let options = over_tls(&server, &prefix, retention, ca_of(&server), false);
        async move { RedisStore::open(options).unwrap() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_a_tls_failure_found_fast() {
    let server = RedisServer::start_tls(false);
    let unrelated = unrelated_ca_pem().into_bytes();
    // Another CA's, then the system's CAs: neither signed the server's certificate.
    for (what, ca) in [("another CA", Some(unrelated)), ("the system's CAs", None)] {
        let store = RedisStore::open(over_tls(&server, "untrusted", ROOMY, ca, false)).unwrap();
        let started = std::time::Instant::now();
        let outcome = store.probe().await;
        assert!(
            matches!(outcome, Err(StoreError::Tls(_))),
            "{what}: {outcome:?}"
        );
        assert!(
            started.elapsed() < RESPONSE_TIMEOUT,
            "{what}: failed in {:?}",
            started.elapsed()
        );
    }
    let trusted = RedisStore::open(over_tls(&server, "trusted", ROOMY, ca_of(&server), false));
    trusted
        .unwrap()
        .probe()
        .await
        .expect("the server's own CA is trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_for_a_client_certificate_is_given_one() {
    let server = RedisServer::start_tls(true);
    let store = RedisStore::open(over_tls(&server, "mtls", ROOMY, ca_of(&server), true)).unwrap();
    store
        .probe()
        .await
        .expect("answers a client with a certificate");
    let c = conformance::ch("C");
    let appended = store.append(&c, conformance::body("x")).await.unwrap();
    assert_eq!(store.head(&c).await.unwrap(), appended.event.id);

    let without =
        RedisStore::open(over_tls(&server, "mtls", ROOMY, ca_of(&server), false)).unwrap();
    let refused = without.probe().await;
    assert!(
        matches!(refused, Err(StoreError::Tls(_))),
        "a client without a certificate is refused: {refused:?}"
    );
}

// A runtime: a store that opens spawns its connection task.
#[tokio::test]
async fn tls_settings_go_with_rediss_urls_only() {
    let ca = RedisTls {
        ca: Some(unrelated_ca_pem().into_bytes()),
        client: None,
    };
    let open = |url: &str, tls: &RedisTls| {
        RedisStore::open(RedisOptions {
            url: url.to_owned(),
            prefix: "p".into(),
            retention: ROOMY,
            tls: tls.clone(),
            wait_replicas: 0,
        })
    };
    let refused = open("redis://:secret@127.0.0.1:6379/0", &ca).unwrap_err();
    assert!(
        matches!(&refused, StoreError::Incompatible(m) if m.contains("rediss://") && !m.contains("secret")),
        "{refused}"
    );
    let insecure = open("rediss://127.0.0.1:6379/0#insecure", &RedisTls::default());
    assert!(
        matches!(insecure, Err(StoreError::Incompatible(_))),
        "{insecure:?}"
    );
    let bad_ca = RedisTls {
        ca: Some(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec()),
        client: None,
    };
    assert!(matches!(
        open("rediss://127.0.0.1:6379/0", &bad_ca),
        Err(StoreError::Incompatible(_))
    ));
    open("rediss://127.0.0.1:6379/0", &ca).expect("certificates with rediss://");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_channel_share_one_sequence() {
    let server = RedisServer::start();
    let open = || {
        RedisStore::open(RedisOptions {
            url: server.url(),
            prefix: "two".into(),
            retention: ROOMY,
            tls: RedisTls::default(),
            wait_replicas: 0,
        })
        .unwrap()
    };
    let (a, b) = (open(), open());
    assert_ne!(a.node(), b.node());
    let c = conformance::ch("Shared");
    let tasks: Vec<_> = [a.clone(), b.clone(), a, b]
        .into_iter()
        .map(|store| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..25 {
                    ids.push(
                        store
                            .append(&c, conformance::body("x"))
                            .await
                            .unwrap()
                            .event
                            .id,
                    );
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_channel_leaves_the_nodes_memory_and_continues() {
    let server = RedisServer::start();
    let store = RedisStore::open(RedisOptions {
        url: server.url(),
        prefix: "idle".into(),
        retention: ROOMY,
        tls: RedisTls::default(),
        wait_replicas: 0,
    })
    .unwrap();
    let c = conformance::ch("C");
    for _ in 0..2 {
        store.append(&c, conformance::body("x")).await.unwrap();
    }
    assert_eq!((store.known_head(&c), store.channels_in_memory()), (2, 1));
    store.channel_unloaded(&c);
    assert_eq!((store.known_head(&c), store.channels_in_memory()), (0, 0));
    // Written to again: the next id, its head known again, and listed.
    let next = store.append(&c, conformance::body("x")).await.unwrap();
    assert_eq!(next.event.id, 3);
    assert_eq!((store.known_head(&c), store.channels_in_memory()), (3, 1));
    assert_eq!(store.channels().await.unwrap(), vec![c]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_window_a_receipt_key_is_deleted_with_its_receipt() {
    let server = RedisServer::start();
    let store = RedisStore::open(RedisOptions {
        url: server.url(),
        prefix: "rk".into(),
        retention: Retention {
            max_events: 2,
            ..ROOMY
        },
        tls: RedisTls::default(),
        wait_replicas: 0,
    })
    .unwrap();
    let held = "{rk:ch:RG}:rk:H1/once";
    let exists = |key: &'static str| {
        let mut conn = store.connection();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    conformance::receipt_keys_go_with_their_receipts(store.clone()).await;
    assert_eq!(exists(held).await, 1, "given again by the last receipt");
    // Two more receipts push that one out of the receipt stream: its key goes too.
    let c = conformance::ch("RG");
    for _ in 0..2 {
        store
            .record_receipt(Receipt {
                seq: 0,
                channel: c.clone(),
                event_id: 3,
                device: conformance::dev("H2"),
                status: "ok".into(),
                time: pere_proto::event::now(),
            })
            .await
            .unwrap();
    }
    assert_eq!(exists(held).await, 0, "no key outlives its receipt");
}

/// Keys an older version held bare (`:keys` field `KEY`, `:rk:KEY`) may read as another's
/// scope (`DEVICE/KEY`): they answer no push or receipt, and another's data never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_an_older_version_answer_no_other_publisher() {
    let server = RedisServer::start();
    let store = RedisStore::open(RedisOptions {
        url: server.url(),
        prefix: "old".into(),
        retention: ROOMY,
        tls: RedisTls::default(),
        wait_replicas: 0,
    })
    .unwrap();
    let c = conformance::ch("C");
    let by = |publisher: &str, key: &str| pere_proto::event::NewEvent {
        publisher: Some(conformance::dev(publisher)),
        idempotency_key: Some(key.to_owned()),
        ..conformance::body("secret of PA")
    };
    let first = store.append(&c, by("PA", "x")).await.unwrap();
    let receipt = |device: &str| Receipt {
        seq: 0,
        channel: c.clone(),
        event_id: 1,
        device: conformance::dev(device),
        status: "shipped".into(),
        time: pere_proto::event::now(),
    };
    let held = store
        .record_receipt_keyed(receipt("HA"), "r".to_owned())
        .await
        .unwrap();
    // As an older version would have held keys spelled `PB/x` and `HB/r`.
    let mut conn = store.connection();
    redis::pipe()
        .cmd("HSET")
        .arg("{old:ch:C}:keys")
        .arg("PB/x")
        .arg(first.event.id)
        .cmd("SET")
        .arg("{old:ch:C}:rk:HB/r")
        .arg(held.receipt.seq)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let theirs = store.append(&c, by("PB", "x")).await.unwrap();
    assert!(theirs.new, "PA's event is not PB's");
    let again = store.append(&c, by("PB", "x")).await.unwrap();
    assert_eq!((again.new, again.event.id), (false, theirs.event.id));
    let mine = store.append(&c, by("PA", "x")).await.unwrap();
    assert_eq!((mine.new, mine.event.id), (false, first.event.id));
    // A bare field that reads as PA's own scope for another key answers nothing either.
    redis::cmd("HSET")
        .arg("{old:ch:C}:keys")
        .arg("PA/y")
        .arg(first.event.id)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(store.append(&c, by("PA", "y")).await.unwrap().new);
    let other = store
        .record_receipt_keyed(receipt("HB"), "r".to_owned())
        .await
        .unwrap();
    assert!(other.new, "HA's receipt is not HB's");
    assert_eq!(other.receipt.device.as_str(), "HB");
    let batch = store
        .record_receipts(crate::store::ReceiptBatch {
            channel: c.clone(),
            device: conformance::dev("HB"),
            time: pere_proto::event::now(),
            lines: vec![crate::store::ReceiptLine {
                event_id: 1,
                status: "shipped".into(),
                key: Some("r".into()),
            }],
            unacknowledged_only: false,
        })
        .await
        .unwrap();
    assert_eq!(
        (batch[0].new, batch[0].receipt.seq),
        (false, other.receipt.seq),
        "HB's own key, now held in its scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_once_for_the_cluster_and_a_sweep_clears_a_node_once() {
    let server = RedisServer::start();
    let store = RedisStore::open(RedisOptions {
        url: server.url(),
        prefix: "pr".into(),
        retention: ROOMY,
        tls: RedisTls::default(),
        wait_replicas: 0,
    })
    .unwrap();
    let (c, h1, h2) = (
        conformance::ch("Room"),
        conformance::dev("H1"),
        conformance::dev("H2"),
    );
    let changes = || async { store.presence_after(&c, 0).await.unwrap().unwrap() };
    let states = |changes: Vec<PresenceChange>| -> Vec<(u64, String, bool)> {
        changes
            .into_iter()
            .map(|p| (p.seq, p.device.to_string(), p.online))
            .collect()
    };
    let set = |node: &'static str, streams: Vec<(DeviceId, usize)>, replace: bool| {
        let (store, c) = (store.clone(), c.clone());
        async move {
            store
                .nodes()
                .set_presence(node, &c, &streams, replace, 1000)
                .await
                .unwrap()
        }
    };

    assert_eq!(set("n1", vec![(h1.clone(), 1)], false).await, 1);
    assert_eq!(
        set("n2", vec![(h1.clone(), 2), (h2.clone(), 1)], false).await,
        2
    );
    assert_eq!(set("n1", vec![(h1.clone(), 0)], false).await, 0);
    assert_eq!(
        states(changes().await),
        vec![(1, "H1".into(), true), (2, "H2".into(), true)],
        "H1's second node and its first node's leaving change nothing"
    );
    // n2 dies: two sweeps, one change per device.
    assert_eq!(set("n2", Vec::new(), true).await, 0);
    assert_eq!(set("n2", Vec::new(), true).await, 0);
    assert_eq!(
        states(store.presence_after(&c, 2).await.unwrap().unwrap()),
        vec![(3, "H1".into(), false), (4, "H2".into(), false)]
    );
    assert!(store.online_devices(&c).await.unwrap().unwrap().is_empty());
    // Written whole again, a node's share replaces what it held.
    set("n1", vec![(h1.clone(), 1), (h2.clone(), 1)], false).await;
    assert_eq!(set("n1", vec![(h2.clone(), 3)], true).await, 1);
    assert_eq!(
        store.nodes().node_presence("n1", &c).await.unwrap(),
        vec![(h2.clone(), 3)]
    );
    assert_eq!(
        store.online_devices(&c).await.unwrap().unwrap(),
        HashSet::from([h2])
    );
    assert_eq!(changes().await.last().map(|p| p.seq), Some(7));
}

#[tokio::test]
async fn an_unreachable_redis_fails_fast() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let store = RedisStore::open(RedisOptions {
        url,
        prefix: "gone".into(),
        retention: ROOMY,
        tls: RedisTls::default(),
        wait_replicas: 0,
    })
    .unwrap();
    let started = std::time::Instant::now();
    let outcome = store
        .append(&conformance::ch("C"), conformance::body("x"))
        .await;
    assert!(
        matches!(outcome, Err(StoreError::Backend(_))),
        "{outcome:?}"
    );
    assert!(store.probe().await.is_err());
    assert!(
        started.elapsed() < RESPONSE_TIMEOUT,
        "failed in {:?}",
        started.elapsed()
    );
}
