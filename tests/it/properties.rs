//! Property tests for the parsers that take outside input: whatever they are given, they do
//! not panic, and what they accept round-trips (or is refused for the right reason).

use ccgate::edge::passthrough::match_path;
use ccgate::gateway::wire::{cookie_pair, merge_cookies, parse_set_guid};
use ccgate::gateway::{parse_agent_id, Envelope, GatewayMethod, BASE_PATH};
use ccgate::ops::Failure;
use ccgate::session::conference::apply_event;
use ccgate::session::ConfState;
use http::Method;
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    json_with(any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from).boxed())
}

/// JSON without floats: serde_json reads a float back only to within its last digit, and the
/// gateway's envelopes carry integers and strings.
fn json_exact() -> impl Strategy<Value = Value> {
    json_with(Just(Value::Null).boxed())
}

fn json_with(number: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        number,
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::hash_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH])
}

proptest! {
    #[test]
    fn the_passthrough_matcher_accepts_only_canonical_paths(
        m in method(),
        rest in "[a-zA-Z0-9/%.]{0,40}",
    ) {
        let path = format!("{BASE_PATH}{rest}");
        match match_path(&m, &path) {
            Ok((g, agent)) => {
                prop_assert_eq!(g.path(agent), path.clone(), "accepted only as the registry spells it");
                prop_assert_eq!(g.http_method(), m);
            }
            Err(Failure::NotFound | Failure::MethodNotAllowed(_)) => {}
            Err(other) => prop_assert!(false, "unexpected refusal {other:?}"),
        }
    }

    #[test]
    fn every_registry_path_matches_its_own_method(i in 0..GatewayMethod::ALL.len(), agent in 101u32..=999_999) {
        let g = GatewayMethod::ALL[i];
        let path = g.path(&agent.to_string());
        let (found, a) = match_path(&g.http_method(), &path).unwrap();
        prop_assert_eq!(found, g);
        prop_assert_eq!(a, agent.to_string());
    }

    #[test]
    fn agent_ids_are_canonical_or_refused(s in ".{0,10}") {
        if let Some(n) = parse_agent_id(&s) {
            prop_assert_eq!(n.to_string(), s);
            prop_assert!((101..=999_999).contains(&n));
        }
    }

    #[test]
    fn every_work_number_round_trips(n in 101u32..=999_999) {
        prop_assert_eq!(parse_agent_id(&n.to_string()), Some(n));
    }

    #[test]
    fn set_guid_never_panics_and_keeps_the_node_suffix(
        raw in ".{0,60}",
        uuid in "[0-9a-f-]{8,36}",
        node in 0u8..10,
        attrs in "(; ?[A-Za-z]+(=[A-Za-z/]*)?){0,3}",
    ) {
        if let Some(g) = parse_set_guid(&raw) {
            prop_assert!(!g.is_empty() && g.bytes().all(|b| b.is_ascii_graphic()) && !g.contains(';'));
        }
        let guid = format!("{uuid}.AgentGateway{node}");
        prop_assert_eq!(parse_set_guid(&format!("JSESSIONID={guid}{attrs}")), Some(guid));
    }

    #[test]
    fn cookies_parse_and_merge_by_name(
        raw in ".{0,40}",
        names in prop::collection::vec("[a-z]{1,6}", 1..6),
        values in prop::collection::vec("[A-Za-z0-9]{0,8}", 6),
    ) {
        if let Some(pair) = cookie_pair(&raw) {
            prop_assert!(pair.contains('=') && !pair.starts_with('=') && !pair.contains(';'));
        }
        let pairs: Vec<String> = names.iter().zip(&values).map(|(n, v)| format!("{n}={v}")).collect();
        for p in &pairs {
            prop_assert_eq!(cookie_pair(&format!("{p}; Path=/; Secure")), Some(p.clone()));
        }
        let (merged, _) = merge_cookies(&[], &pairs);
        let mut seen: Vec<&str> = merged.iter().map(|c| c.split('=').next().unwrap()).collect();
        let before = seen.len();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len(), before, "one cookie per name");
        // The last value sent for a name wins.
        for (n, v) in names.iter().zip(&values) {
            let last = names.iter().zip(&values).rfind(|(m, _)| *m == n).map(|(_, w)| w).unwrap();
            if v == last {
                let expected = format!("{n}={v}");
                prop_assert!(merged.contains(&expected), "{expected} in {merged:?}");
            }
        }
    }

    #[test]
    fn envelopes_never_panic_and_round_trip(
        any_json in json(),
        message in ".{0,20}",
        code in "[0-9]{3}-[0-9]{3}|0|CCG-[0-9]{3}",
        result in prop::option::of(json_exact()),
    ) {
        let _ = serde_json::from_value::<Envelope>(any_json.clone());
        let _ = serde_json::from_slice::<Envelope>(any_json.to_string().as_bytes());
        let e = Envelope::error(&code, message, result.filter(|r| !r.is_null()));
        let back: Envelope = serde_json::from_slice(&e.to_bytes()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn gateway_events_never_panic_the_conference_state(
        event in json(),
        kind in prop::sample::select(vec![
            "AgentConf_RequestSuccess", "AgentConf_RequestFailed", "AgentConf_SelfJoinResult",
            "AgentConf_ParticipantChanged", "AgentConf_PresidentChanged", "AgentConf_SelfLeaveResult",
            "AgentOther_ShutdownService", "Unknown",
        ]),
        content in json(),
        state in prop::sample::select(vec![
            ConfState::None, ConfState::Requested, ConfState::Unknown,
            ConfState::Chair { conf_id: 7 }, ConfState::Participant { conf_id: 7 },
            ConfState::RequestFailed { cause: None },
        ]),
    ) {
        let _ = apply_event(state, "153", &event);
        let shaped = serde_json::json!({"eventType": kind, "workNo": "153", "content": content});
        let _ = apply_event(state, "153", &shaped);
    }
}
