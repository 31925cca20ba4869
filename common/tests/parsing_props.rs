//! Property tests (fuzzing with proptest) of what the services parse from
//! the outside and from disk: the `POST /orders` body and its validation,
//! stock names, idempotency keys, the internal JSON messages, and the
//! postcard records and big-endian keys the sled stores hold. Any input must
//! give a value or an error, never a panic, and the validators must agree
//! with a plain statement of the rules.
//!
//! Each property prints how many inputs it ran and how long it took
//! (`cargo test -p common --test parsing_props -- --nocapture`).

use common::storage::decode_u64;
use common::types::{
    ApplyBatch, LeaderNotice, MAX_IDEMPOTENCY_KEY_LEN, MAX_STOCK_NAME_LEN, MAX_TRADE_QUANTITY,
    OrderRecord, Propagate, RangeQuery, TradeCommand, TradeKind, TradeRequest,
    validate_idempotency_key, validate_stock_name,
};
use proptest::prelude::*;

#[path = "support/props.rs"]
mod props;
use props::check;

/// Inputs per property: enough to hit every branch many times, few enough
/// that the whole file runs in a few seconds.
const CASES: u32 = 2000;

/// The stock-name rule, stated plainly.
fn name_is_valid(name: &str) -> bool {
    (1..=MAX_STOCK_NAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Names near every edge of the rule.
fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z]{1,8}",
        "[ -~]{0,70}",
        any::<String>(),
        Just(String::new()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("A".repeat(MAX_STOCK_NAME_LEN)),
        Just("A".repeat(MAX_STOCK_NAME_LEN + 1)),
        "[A-Z]{0,4}[/\\x00 \\t\\x7f%?#.][A-Z]{0,4}",
    ]
}

#[test]
fn stock_name_validation_matches_the_rule() {
    check("stock-name", CASES, any_name(), |name| {
        prop_assert_eq!(validate_stock_name(&name).is_ok(), name_is_valid(&name));
        Ok(())
    });
}

#[test]
fn idempotency_key_validation_matches_the_rule() {
    let keys = prop_oneof![
        "[!-~]{1,140}",
        "[ -~]{0,130}",
        any::<String>(),
        Just("k".repeat(MAX_IDEMPOTENCY_KEY_LEN)),
        Just("k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1)),
    ];
    check("idempotency-key", CASES, keys, |key| {
        let rule = (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_graphic());
        prop_assert_eq!(validate_idempotency_key(&key).is_ok(), rule);
        Ok(())
    });
}

/// A JSON value for `quantity`, with whether it is an integer in 1..=limit.
fn any_quantity() -> impl Strategy<Value = (String, bool)> {
    let ok = |q: u64| (1..=MAX_TRADE_QUANTITY).contains(&q);
    prop_oneof![
        (1..=MAX_TRADE_QUANTITY).prop_map(|q| (q.to_string(), true)),
        any::<u64>().prop_map(move |q| (q.to_string(), ok(q))),
        any::<i64>().prop_map(move |q| (q.to_string(), u64::try_from(q).is_ok_and(ok))),
        any::<f64>().prop_map(|q| (
            serde_json::to_string(&q).expect("a float serializes"),
            false
        )),
        (1..=100u32).prop_map(|q| (format!("{q}.0"), false)),
        (1..=9u32).prop_map(|q| (format!("{q}e2"), false)),
        "[1-9][0-9]{20,40}".prop_map(|q| (q, false)),
        Just(("\"5\"".to_string(), false)),
        Just(("null".to_string(), false)),
        Just(("true".to_string(), false)),
        Just(("[1]".to_string(), false)),
    ]
}

/// A JSON value for `type`, with whether it is `buy` or `sell`.
fn any_type() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        Just(("\"buy\"".to_string(), true)),
        Just(("\"sell\"".to_string(), true)),
        any::<String>().prop_map(|t| {
            let valid = t == "buy" || t == "sell";
            (
                serde_json::to_string(&t).expect("a string serializes"),
                valid,
            )
        }),
        Just(("\"BUY\"".to_string(), false)),
        Just(("1".to_string(), false)),
    ]
}

/// A trade body built field by field (some missing, some extra, in any
/// order), with whether the service must accept it.
fn any_trade_body() -> impl Strategy<Value = (String, bool)> {
    (
        proptest::option::weighted(0.9, any_name()),
        proptest::option::weighted(0.9, any_quantity()),
        proptest::option::weighted(0.9, any_type()),
        proptest::option::weighted(0.1, "[a-z]{1,6}"),
        any::<bool>(),
    )
        .prop_map(|(name, quantity, kind, extra, reversed)| {
            let mut fields = Vec::new();
            let mut valid = true;
            match &name {
                Some(n) => {
                    fields.push(format!(
                        "\"name\":{}",
                        serde_json::to_string(n).expect("a string serializes")
                    ));
                    valid &= name_is_valid(n);
                }
                None => valid = false,
            }
            match quantity {
                Some((q, ok)) => {
                    fields.push(format!("\"quantity\":{q}"));
                    valid &= ok;
                }
                None => valid = false,
            }
            match kind {
                Some((t, ok)) => {
                    fields.push(format!("\"type\":{t}"));
                    valid &= ok;
                }
                None => valid = false,
            }
            if let Some(key) = extra {
                // Unknown fields are refused; a repeated known one too.
                fields.push(format!("\"{key}\":1"));
                valid = false;
            }
            if reversed {
                fields.reverse();
            }
            (format!("{{{}}}", fields.join(",")), valid)
        })
}

/// Parse and validate as the front-end does.
fn accept(body: &[u8]) -> Result<TradeRequest, String> {
    let t: TradeRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    t.validate()?;
    Ok(t)
}

#[test]
fn trade_bodies_are_accepted_exactly_when_valid() {
    check(
        "trade-body-oracle",
        CASES,
        any_trade_body(),
        |(body, valid)| {
            let got = accept(body.as_bytes());
            prop_assert_eq!(got.is_ok(), valid, "body {} gave {:?}", body, got);
            if let Ok(t) = got {
                prop_assert!((1..=MAX_TRADE_QUANTITY).contains(&t.quantity));
                prop_assert!(matches!(t.kind, TradeKind::Buy | TradeKind::Sell));
            }
            Ok(())
        },
    );
}

/// A valid body with a few random byte edits (flip, insert, delete).
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    let edits = proptest::collection::vec((any::<u8>(), any::<usize>(), 0..3u8), 1..6);
    (any_trade_body(), edits).prop_map(|((body, _), edits)| {
        let mut bytes = body.into_bytes();
        for (byte, at, op) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    })
}

#[test]
fn arbitrary_and_mutated_bytes_never_panic_the_body_parser() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        mutated_body(),
    ];
    check("trade-body-bytes", CASES * 2, bytes, |body| {
        if let Ok(t) = accept(&body) {
            // Whatever got through satisfies every rule.
            prop_assert!((1..=MAX_TRADE_QUANTITY).contains(&t.quantity));
            prop_assert!(name_is_valid(&t.name));
        }
        Ok(())
    });
}

#[test]
fn internal_messages_from_arbitrary_bytes_never_panic() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        "\\{\"(epoch|base|trades|orders|next|leader_id|from|limit|name|kind|quantity|key)\":[-0-9a-z\\[\\]{}\",:]{0,60}\\}"
            .prop_map(String::into_bytes),
    ];
    check("internal-json", CASES, bytes, |b| {
        let _ = serde_json::from_slice::<TradeCommand>(&b);
        let _ = serde_json::from_slice::<Propagate>(&b);
        let _ = serde_json::from_slice::<ApplyBatch>(&b);
        let _ = serde_json::from_slice::<LeaderNotice>(&b);
        let _ = serde_json::from_slice::<RangeQuery>(&b);
        Ok(())
    });
}

fn any_record() -> impl Strategy<Value = OrderRecord> {
    (
        any::<u64>(),
        any::<String>(),
        any::<bool>(),
        any::<u64>(),
        any::<String>(),
    )
        .prop_map(|(number, name, buy, quantity, key)| OrderRecord {
            number,
            name,
            kind: if buy { TradeKind::Buy } else { TradeKind::Sell },
            quantity,
            key,
        })
}

fn encode(r: &OrderRecord) -> Vec<u8> {
    postcard::to_stdvec(r).expect("a record encodes")
}

#[test]
fn stored_order_records_decode_from_any_bytes_without_panic() {
    // Arbitrary bytes, and real records with a byte changed or a varint
    // length blown up (a corrupt length must not allocate or panic).
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..128),
        (any_record(), any::<usize>(), any::<u8>()).prop_map(|(r, at, b)| {
            let mut bytes = encode(&r);
            let at = at % bytes.len();
            bytes[at] = b;
            bytes
        }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(n, tail)| {
            let mut bytes = postcard::to_stdvec(&n).expect("u64 encodes");
            bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
            bytes.extend(tail);
            bytes
        }),
    ];
    check("order-record-bytes", CASES * 2, bytes, |b| {
        if let Ok(r) = postcard::from_bytes::<OrderRecord>(&b) {
            // Whatever decodes re-encodes to a record that decodes the same.
            prop_assert_eq!(
                postcard::from_bytes::<OrderRecord>(&encode(&r)).ok(),
                Some(r)
            );
        }
        Ok(())
    });
}

#[test]
fn stored_order_records_round_trip_and_every_truncation_is_an_error() {
    check("order-record-round-trip", CASES, any_record(), |r| {
        let bytes = encode(&r);
        prop_assert_eq!(postcard::from_bytes::<OrderRecord>(&bytes).ok(), Some(r));
        for cut in 0..bytes.len() {
            prop_assert!(
                postcard::from_bytes::<OrderRecord>(&bytes[..cut]).is_err(),
                "a record cut to {} of {} bytes decoded",
                cut,
                bytes.len()
            );
        }
        Ok(())
    });
}

#[test]
fn number_keys_decode_only_from_8_bytes_and_sort_numerically() {
    let pairs = (
        proptest::collection::vec(any::<u8>(), 0..16),
        any::<u64>(),
        any::<u64>(),
    );
    check("number-keys", CASES, pairs, |(bytes, a, b)| {
        let decoded = decode_u64(&bytes);
        prop_assert_eq!(decoded.is_some(), bytes.len() == 8);
        if let Some(n) = decoded {
            prop_assert_eq!(n.to_be_bytes().to_vec(), bytes);
        }
        prop_assert_eq!(decode_u64(&a.to_be_bytes()), Some(a));
        // sled orders keys bytewise: big-endian keys keep numeric order.
        prop_assert_eq!(a.to_be_bytes().cmp(&b.to_be_bytes()), a.cmp(&b));
        Ok(())
    });
}
