use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_config::{ApproversConfig, Config};
use portcullis_identity::Principal;
use portcullis_policy::PolicySet;
use portcullis_records::{RecordKind, Store};

use crate::*;

const CONFIG: &str = r#"
identity:
  oidc: [{ issuer: "http://127.0.0.1:1", audience: portcullis }]
connections:
  - name: db
    type: postgres
    listen: 127.0.0.1:1
    upstream: { host: 127.0.0.1, database: app, user: app }
  - name: auto-db
    type: postgres
    listen: 127.0.0.1:2
    upstream: { host: 127.0.0.1, database: app, user: app }
policies:
  - name: ci-jit
    match: { groups: [ci] }
    connection: db
    access: { jit: { max: 1h, approval: required } }
    allow: [read]
  - name: ci-auto
    match: { groups: [ci] }
    connection: auto-db
    access: { jit: { max: 10m, approval: auto } }
    allow: [read]
  - name: sre-jit
    match: { groups: [sre] }
    connection: db
    access: { jit: { max: 1h } }
    allow: [read]
"#;

fn principal(name: &str, groups: &[&str]) -> Principal {
    Principal {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "http://127.0.0.1:1".into(),
        claims: Default::default(),
        expires_at: SystemTime::now() + Duration::from_secs(600),
        token_fingerprint: "sha256:0000".into(),
    }
}

fn ci() -> Principal {
    principal("ci", &["ci"])
}
fn alice() -> Principal {
    principal("alice", &["sre"])
}
fn mallory() -> Principal {
    principal("mallory", &["ci"])
}

struct Fixture {
    _dir: tempfile::TempDir,
    url: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        Fixture { _dir: dir, url }
    }

    async fn broker(&self, timeout: Duration) -> (Arc<Broker>, Store) {
        let approvers = ApproversConfig {
            principals: vec![],
            groups: vec!["sre".into()],
        };
        self.broker_with(timeout, approvers).await
    }

    async fn broker_with(
        &self,
        timeout: Duration,
        approvers: ApproversConfig,
    ) -> (Arc<Broker>, Store) {
        let config = Config::parse("t.yaml", CONFIG).unwrap();
        let store = Store::open(&self.url).unwrap();
        let broker = Broker::open(
            store.clone(),
            Arc::new(PolicySet::compile(&config.policies).unwrap()),
            BrokerSettings {
                approvers,
                approval_timeout: timeout,
                base_url: "http://127.0.0.1:8080".into(),
                sole_issuer: None,
            },
            Notifier::disabled(),
        )
        .await
        .unwrap();
        (broker, store)
    }
}

fn events(store: &Store, kind: RecordKind) -> Vec<String> {
    store
        .records_of_kinds(&[kind])
        .unwrap()
        .into_iter()
        .map(|r| {
            format!(
                "{} {}",
                r.detail["id"].as_str().unwrap(),
                r.decision.unwrap()
            )
        })
        .collect()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_grant_needs_a_jit_policy_a_reason_and_at_most_max() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let no_policy = broker
        .request_grant(&principal("eve", &[]), "db", HOUR, "x")
        .await;
    assert!(
        matches!(no_policy, Err(JitError::Forbidden(_))),
        "{no_policy:?}"
    );
    let too_long = broker.request_grant(&ci(), "db", 2 * HOUR, "x").await;
    assert!(
        matches!(too_long, Err(JitError::Invalid(_))),
        "{too_long:?}"
    );
    let no_reason = broker.request_grant(&ci(), "db", HOUR, "  ").await;
    assert!(
        matches!(no_reason, Err(JitError::Invalid(_))),
        "{no_reason:?}"
    );
    assert!(broker.lease(&ci(), "db").await.is_none());
}

#[tokio::test]
async fn approval_by_another_approver_gives_a_lease_and_is_recorded() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let g = broker
        .request_grant(&ci(), "db", Duration::from_secs(900), "incident 7")
        .await
        .unwrap();
    assert_eq!(g.status, GrantStatus::Pending);
    assert!(broker.lease(&ci(), "db").await.is_none());
    let not_approver = broker.approve_grant(&g.id, &mallory()).await;
    assert!(matches!(not_approver, Err(JitError::Forbidden(_))));
    let unknown = broker.approve_grant("g-nope", &alice()).await;
    assert!(matches!(unknown, Err(JitError::NotFound(_))));
    let approved = broker.approve_grant(&g.id, &alice()).await.unwrap();
    assert_eq!(approved.status, GrantStatus::Active);
    assert_eq!(approved.decided_by.as_deref(), Some("alice"));
    let expires = approved.expires_at.unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(900));
    let lease = broker.lease(&ci(), "db").await.unwrap();
    assert_eq!(lease.id, g.id);
    assert!(broker.lease(&ci(), "auto-db").await.is_none());
    let again = broker.approve_grant(&g.id, &alice()).await;
    assert!(matches!(again, Err(JitError::Conflict(_))));
    // No extension by asking again while the grant is open.
    let extend = broker.request_grant(&ci(), "db", HOUR, "more").await;
    assert!(matches!(extend, Err(JitError::Conflict(_))), "{extend:?}");
    assert_eq!(
        events(&store, RecordKind::Grant),
        [format!("{} requested", g.id), format!("{} approved", g.id)]
    );
}

#[tokio::test]
async fn an_approver_cannot_approve_their_own_request() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let g = broker
        .request_grant(&alice(), "db", HOUR, "mine")
        .await
        .unwrap();
    let own = broker.approve_grant(&g.id, &alice()).await;
    assert!(matches!(own, Err(JitError::Forbidden(_))), "{own:?}");
    let bob = principal("bob", &["sre"]);
    assert!(broker.approve_grant(&g.id, &bob).await.is_ok());
}

#[tokio::test]
async fn auto_grants_are_active_at_once_and_still_recorded() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let g = broker
        .request_grant(&ci(), "auto-db", Duration::from_secs(60), "deploy")
        .await
        .unwrap();
    assert_eq!(g.status, GrantStatus::Active);
    assert_eq!(g.decided_by.as_deref(), Some("auto"));
    assert!(broker.lease(&ci(), "auto-db").await.is_some());
    assert_eq!(
        events(&store, RecordKind::Grant),
        [format!("{} requested", g.id), format!("{} approved", g.id)]
    );
}

#[tokio::test]
async fn revocation_ends_the_lease_at_once_with_the_reason() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let g = broker.request_grant(&ci(), "db", HOUR, "x").await.unwrap();
    broker.approve_grant(&g.id, &alice()).await.unwrap();
    let mut lease = broker.lease(&ci(), "db").await.unwrap();
    let waiter = tokio::spawn(async move { lease.ended().await });
    broker
        .revoke_grant(&g.id, &alice(), Some("done".into()))
        .await
        .unwrap();
    let reason = waiter.await.unwrap();
    assert_eq!(reason, format!("grant {} was revoked by alice: done", g.id));
    assert!(broker.lease(&ci(), "db").await.is_none());
    // A new request is possible once the old grant is closed.
    assert!(broker.request_grant(&ci(), "db", HOUR, "y").await.is_ok());
}

#[tokio::test]
async fn expiry_ends_the_lease_and_is_recorded_by_the_sweep() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let g = broker
        .request_grant(&ci(), "auto-db", Duration::from_secs(1), "short")
        .await
        .unwrap();
    let mut lease = broker.lease(&ci(), "auto-db").await.unwrap();
    let reason = lease.ended().await;
    assert!(
        reason.starts_with(&format!("grant {} expired at", g.id)),
        "{reason}"
    );
    assert!(broker.lease(&ci(), "auto-db").await.is_none());
    broker.expire_due().await.unwrap();
    assert_eq!(
        events(&store, RecordKind::Grant).last().unwrap(),
        &format!("{} expired", g.id)
    );
    let listed = broker.grant(&g.id, &ci()).await.unwrap();
    assert_eq!(listed.status, GrantStatus::Expired);
}

#[tokio::test]
async fn grants_survive_a_restart_and_stale_holds_are_abandoned() {
    let f = Fixture::new();
    let (g, held_id) = {
        let (broker, store) = f.broker(HOUR).await;
        let g = broker.request_grant(&ci(), "db", HOUR, "x").await.unwrap();
        broker.approve_grant(&g.id, &alice()).await.unwrap();
        let mut held = broker
            .hold(hold_request("UPDATE t SET x = 1"))
            .await
            .unwrap();
        let id = held.approval.id.clone();
        // A killed gateway never gets to abandon it.
        held.settled = true;
        drop(held);
        drop(broker);
        store.flush().await.unwrap();
        (g, id)
    };
    let (broker, store) = f.broker(HOUR).await;
    let lease = broker.lease(&ci(), "db").await.expect("grant survived");
    assert_eq!(lease.id, g.id);
    let a = broker.approval(&held_id, &alice()).await.unwrap();
    assert_eq!(a.status, ApprovalStatus::Abandoned);
    assert_eq!(
        events(&store, RecordKind::Approval),
        [
            format!("{held_id} requested"),
            format!("{held_id} abandoned")
        ]
    );
    assert!(store.verify().unwrap().first_broken.is_none());
}

fn hold_request(sql: &str) -> HoldRequest {
    HoldRequest {
        session_id: "s1".into(),
        principal: "ci".into(),
        issuer: ci().issuer,
        connection: "db".into(),
        statement: sql.into(),
        classes: vec!["write".into()],
        relations: vec!["t".into()],
        policy: Some("ci-jit".into()),
        rule: "write".into(),
        reason: "statement \"UPDATE\" matches require_approval rule".into(),
        grant: Some("g-1".into()),
    }
}

#[tokio::test]
async fn a_held_statement_is_released_once_by_an_approver() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let mut held = broker
        .hold(hold_request("UPDATE t SET x = 1"))
        .await
        .unwrap();
    let id = held.approval.id.clone();
    let listed = broker.approvals(&alice()).await.unwrap();
    assert_eq!(listed[0].statement, "UPDATE t SET x = 1");
    assert!(matches!(
        broker.approvals(&ci()).await,
        Err(JitError::Forbidden(_))
    ));
    let own = broker.approve(&id, &principal("ci", &["sre"]), None).await;
    assert!(matches!(own, Err(JitError::Forbidden(_))), "{own:?}");
    broker.approve(&id, &alice(), None).await.unwrap();
    assert_eq!(
        held.outcome().await,
        Outcome::Approved { by: "alice".into() }
    );
    let twice = broker.approve(&id, &alice(), None).await;
    assert!(matches!(twice, Err(JitError::Conflict(_))));
    drop(held);
    assert_eq!(
        events(&store, RecordKind::Approval),
        [format!("{id} requested"), format!("{id} approved")]
    );
}

#[tokio::test]
async fn denial_and_timeout_refuse_and_are_recorded() {
    let f = Fixture::new();
    let (broker, store) = f.broker(Duration::from_millis(200)).await;
    let mut denied = broker.hold(hold_request("UPDATE a")).await.unwrap();
    broker
        .deny(&denied.approval.id, &alice(), Some("not now".into()))
        .await
        .unwrap();
    assert_eq!(
        denied.outcome().await,
        Outcome::Denied {
            by: "alice".into(),
            note: Some("not now".into())
        }
    );
    let mut late = broker.hold(hold_request("UPDATE b")).await.unwrap();
    assert_eq!(late.outcome().await, Outcome::TimedOut);
    let too_late = broker.approve(&late.approval.id, &alice(), None).await;
    assert!(matches!(too_late, Err(JitError::Conflict(_))));
    let (d, l) = (denied.approval.id.clone(), late.approval.id.clone());
    assert_eq!(
        events(&store, RecordKind::Approval),
        [
            format!("{d} requested"),
            format!("{d} denied"),
            format!("{l} requested"),
            format!("{l} timed_out")
        ]
    );
}

#[tokio::test]
async fn dropping_a_hold_abandons_it() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let held = broker.hold(hold_request("UPDATE a")).await.unwrap();
    let id = held.approval.id.clone();
    drop(held);
    for _ in 0..200 {
        if broker.approval(&id, &alice()).await.unwrap().status == ApprovalStatus::Abandoned {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let late = broker.approve(&id, &alice(), None).await;
    assert!(matches!(late, Err(JitError::Conflict(_))), "{late:?}");
    assert_eq!(events(&store, RecordKind::Approval).len(), 2);
}

#[tokio::test]
async fn an_approval_window_lets_the_same_statement_rerun_without_a_hold() {
    let f = Fixture::new();
    let (broker, store) = f.broker(HOUR).await;
    let mut first = broker.hold(hold_request("UPDATE a")).await.unwrap();
    let id = first.approval.id.clone();
    let too_long = broker.approve(&id, &alice(), Some(2 * MAX_WINDOW)).await;
    assert!(
        matches!(too_long, Err(JitError::Invalid(_))),
        "{too_long:?}"
    );
    broker
        .approve(&id, &alice(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    assert_eq!(
        first.outcome().await,
        Outcome::Approved { by: "alice".into() }
    );
    // The identical statement runs at once, recorded as covered by the first.
    let mut again = broker.hold(hold_request("UPDATE a")).await.unwrap();
    assert_eq!(again.approval.status, ApprovalStatus::Approved);
    assert_eq!(again.approval.covered_by.as_deref(), Some(id.as_str()));
    assert_eq!(
        again.outcome().await,
        Outcome::Approved { by: "alice".into() }
    );
    // Another statement, or another principal, is held as usual.
    let other = broker.hold(hold_request("UPDATE b")).await.unwrap();
    assert_eq!(other.approval.status, ApprovalStatus::Pending);
    let mut someone_else = hold_request("UPDATE a");
    someone_else.principal = "mallory".into();
    let theirs = broker.hold(someone_else).await.unwrap();
    assert_eq!(theirs.approval.status, ApprovalStatus::Pending);
    let again_id = again.approval.id.clone();
    drop((again, other, theirs));
    let recorded = events(&store, RecordKind::Approval);
    assert!(
        recorded.contains(&format!("{again_id} approved")),
        "{recorded:?}"
    );
    assert!(
        !recorded.contains(&format!("{again_id} requested")),
        "{recorded:?}"
    );
}

#[tokio::test]
async fn nothing_changes_when_the_change_cannot_be_recorded() {
    let f = Fixture::new();
    // Create the store, then reopen it read-only: every append fails.
    drop(Store::open(&f.url).unwrap());
    let config = Config::parse("t.yaml", CONFIG).unwrap();
    let broker = Broker::open(
        Store::open_read_only(&f.url).unwrap(),
        Arc::new(PolicySet::compile(&config.policies).unwrap()),
        BrokerSettings {
            approvers: ApproversConfig {
                principals: vec!["alice".into()],
                groups: vec![],
            },
            approval_timeout: HOUR,
            base_url: "http://127.0.0.1:8080".into(),
            sole_issuer: None,
        },
        Notifier::disabled(),
    )
    .await
    .unwrap();
    let auto = broker.request_grant(&ci(), "auto-db", HOUR / 6, "x").await;
    assert!(matches!(auto, Err(JitError::Store(_))), "{auto:?}");
    assert!(broker.grants(&alice()).await.is_empty());
    assert!(broker.lease(&ci(), "auto-db").await.is_none());
    let held = broker.hold(hold_request("UPDATE a")).await;
    assert!(matches!(held, Err(JitError::Store(_))));
    assert!(broker.approvals(&alice()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_duration_of_exactly_max_is_granted_and_fractions_are_refused() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let over = broker
        .request_grant(&ci(), "db", HOUR + Duration::from_secs(1), "x")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(over, "duration 1h 1s is longer than the policy's max of 1h");
    for fraction in [Duration::from_nanos(1), HOUR + Duration::from_nanos(1)] {
        let e = broker.request_grant(&ci(), "db", fraction, "x").await;
        assert!(
            matches!(&e, Err(JitError::Invalid(m)) if m.contains("whole seconds")),
            "{e:?}"
        );
    }
    let g = broker.request_grant(&ci(), "db", HOUR, "x").await.unwrap();
    assert_eq!(g.duration_secs, 3600);
}

#[tokio::test]
async fn reasons_are_bounded_and_messages_use_the_api_s_words() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let long = "r".repeat(MAX_REASON_CHARS + 1);
    let e = broker.request_grant(&ci(), "db", HOUR, &long).await;
    assert!(
        matches!(&e, Err(JitError::Invalid(m)) if m.contains("at most 1000")),
        "{e:?}"
    );
    let g = broker
        .request_grant(&ci(), "db", HOUR, &"r".repeat(MAX_REASON_CHARS))
        .await
        .unwrap();
    let long_note = broker.deny_grant(&g.id, &alice(), Some(long)).await;
    assert!(
        matches!(long_note, Err(JitError::Invalid(_))),
        "{long_note:?}"
    );
    let again = broker
        .request_grant(&ci(), "db", HOUR, "x")
        .await
        .unwrap_err();
    assert_eq!(
        again.to_string(),
        format!(
            "ci already has a pending grant {} on connection \"db\"; grants cannot be extended",
            g.id
        )
    );
    broker.deny_grant(&g.id, &alice(), None).await.unwrap();
    let twice = broker
        .revoke_grant(&g.id, &alice(), None)
        .await
        .unwrap_err();
    assert_eq!(
        twice.to_string(),
        format!(
            "grant {} is already denied; only a pending or active grant can be revoked",
            g.id
        )
    );
}

#[tokio::test]
async fn grant_requests_are_limited_per_principal_and_page_approvers_sparingly() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let (max, _) = GRANT_REQUESTS;
    for _ in 0..max {
        // Refused requests count as much as granted ones.
        let e = broker.request_grant(&ci(), "db", 2 * HOUR, "x").await;
        assert!(matches!(e, Err(JitError::Invalid(_))), "{e:?}");
    }
    let e = broker
        .request_grant(&ci(), "db", HOUR, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JitError::TooMany { message, .. } if message.starts_with("too many grant requests from ci (5 within 1m)")),
        "{e:?}"
    );
    assert!(broker
        .request_grant(&mallory(), "db", HOUR, "x")
        .await
        .is_ok());
    let (announced, _) = ANNOUNCED_REQUESTS;
    let pages = (0..announced + 2)
        .filter(|_| broker.may_announce("bob"))
        .count();
    assert_eq!(pages, announced as usize);
}

#[tokio::test]
async fn a_re_run_window_of_exactly_the_max_is_allowed_and_fractions_are_not() {
    let f = Fixture::new();
    let (broker, _) = f.broker(HOUR).await;
    let held = broker.hold(hold_request("UPDATE w")).await.unwrap();
    let id = held.approval.id.clone();
    let over = broker
        .approve(&id, &alice(), Some(MAX_WINDOW + Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(
        over.to_string(),
        "the re-run window 1day 1s is longer than the max of 1day"
    );
    let fraction = broker
        .approve(&id, &alice(), Some(Duration::from_millis(1500)))
        .await;
    assert!(
        matches!(fraction, Err(JitError::Invalid(_))),
        "{fraction:?}"
    );
    let approved = broker
        .approve(&id, &alice(), Some(MAX_WINDOW))
        .await
        .unwrap();
    assert!(approved.covers_until.is_some());
}

#[tokio::test]
async fn the_same_name_from_another_issuer_neither_approves_nor_uses_the_grant() {
    let f = Fixture::new();
    // As the config check demands with several issuers: the group is tied to its issuer.
    let approvers = ApproversConfig {
        principals: vec![],
        groups: vec![portcullis_config::IssuedName {
            issuer: Some(alice().issuer),
            name: "sre".into(),
        }],
    };
    let (broker, _) = f.broker_with(HOUR, approvers).await;
    let other = |mut p: Principal| {
        p.issuer = "https://other-issuer.test".into();
        p
    };
    // An approver's name and group, vouched for by another issuer, approve nothing.
    assert!(broker.is_approver(&alice()));
    assert!(!broker.is_approver(&other(alice())));
    let grant = broker
        .request_grant(&ci(), "db", HOUR, "incident")
        .await
        .unwrap();
    assert_eq!(grant.issuer, ci().issuer);
    let refused = broker.approve_grant(&grant.id, &other(alice())).await;
    assert!(
        matches!(refused, Err(JitError::Forbidden(_))),
        "{refused:?}"
    );
    broker.approve_grant(&grant.id, &alice()).await.unwrap();
    // Only the grantee of the right issuer gets the lease, and sees the grant.
    assert!(broker.lease(&ci(), "db").await.is_some());
    assert!(broker.lease(&other(ci()), "db").await.is_none());
    assert!(broker.grants(&other(ci())).await.is_empty());
}
