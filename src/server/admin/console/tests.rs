use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use super::*;
use crate::server::admin::{
    ConditionReport, ConditionStatus, ConditionType, LeaderView, ObjectReport, PASS_WAIT,
    pass_channel,
};
use crate::store::db::{Change, Facts, State as Deployed};

/// What an agent could send to break out of the markup.
const SCRIPT_NAME: &str = "<script>alert(1)</script>";
const IMG_TAG: &str = "\"><img src=x onerror=alert(2)>";
const HTML_OUTPUT: &str = "done\n</pre><script>alert(3)</script><b onmouseover=alert(4)>x</b>";

fn object(kind: ObjectKind, name: &str) -> ObjectReport {
    ObjectReport {
        api_version: "tessera.dev/v1alpha1".into(),
        kind,
        namespace: "default".into(),
        name: name.into(),
        source: None,
        generation: 1,
        observed_generation: Some(1),
        source_revision: "abc".into(),
        details: serde_json::Map::new(),
        conditions: vec![ConditionReport {
            type_: ConditionType::Ready,
            status: ConditionStatus::True,
            reason: "Succeeded".into(),
            message: "ok".into(),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
        }],
        problems: vec![],
        spec: None,
        related: vec![],
    }
}

fn report() -> Report {
    let mut certificate = object(ObjectKind::Certificate, "web");
    certificate
        .details
        .insert("notAfter".into(), "2099-01-01T00:00:00Z".into());
    let mut suspended = object(ObjectKind::Activation, "held");
    suspended.details.insert(
        crate::server::admin::SUSPENDED_DETAIL.into(),
        "operator".into(),
    );
    Report {
        revision: "rev-1".into(),
        ready: true,
        objects: vec![
            object(ObjectKind::Activation, "hello"),
            suspended,
            object(ObjectKind::Package, "hello"),
            certificate,
        ],
        problems: vec![],
        conditions: vec![],
    }
}

/// A database with a hostile computer that was offered `hello` and failed with HTML output.
fn database() -> Arc<Database> {
    let db = Database::in_memory().unwrap();
    let facts = Facts {
        name: SCRIPT_NAME.into(),
        os_name: "Debian".into(),
        tags: vec![IMG_TAG.into(), "lab".into()],
        ..Facts::default()
    };
    let raw = crate::protocol::ocs::encode_body(
        "<REQUEST><CONTENT><HARDWARE><NAME>&lt;svg onload=alert(5)&gt;</NAME></HARDWARE></CONTENT></REQUEST>",
        crate::protocol::ocs::Encoding::Zlib,
    );
    db.record_inventory("evil-1", &facts, &raw, 1_000).unwrap();
    db.apply(
        "evil-1",
        &[
            Change::Arm {
                activation: "default/hello".into(),
                package: "default/hello".into(),
                package_id: "1700000001".into(),
                token: String::new(),
            },
            Change::Notify {
                activation: "default/hello".into(),
            },
        ],
        1_000,
    )
    .unwrap();
    db.record_result(
        "evil-1",
        "1700000001",
        Deployed::Error,
        Some("EXIT_CODE_2"),
        Some(HTML_OUTPUT),
        1_001,
    )
    .unwrap();
    Arc::new(db)
}

fn app(db: Arc<Database>, report: Report) -> Router {
    let (passes, _queue) = pass_channel();
    console_app(Steering {
        db,
        reports: tokio::sync::watch::channel(report).1,
        leader: LeaderView::this(),
        passes,
        fetch: None,
        wait: PASS_WAIT,
        replica: "replica-1".into(),
    })
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// Nothing of the hostile values became markup: no element but the page's own script.
fn assert_inert(page: &str) {
    assert_eq!(page.matches("<script").count(), 1, "{page}");
    assert!(page.contains(r#"<script src="/ui/assets/app.js" defer></script>"#));
    for markup in ["<img", "<b ", "<svg", "onerror=alert", "onmouseover=alert"]
        .iter()
        .filter(|m| m.starts_with('<'))
    {
        assert!(!page.contains(markup), "{markup} in {page}");
    }
    assert!(!page.contains(r#""><img"#), "{page}");
}

#[tokio::test]
async fn hostile_names_tags_output_and_inventory_render_as_text() {
    let app = app(database(), report());
    let (status, _, fleet) = get(&app, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&fleet);
    assert!(
        fleet.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{fleet}"
    );
    assert!(
        fleet.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "{fleet}"
    );
    assert!(fleet.contains("EXIT_CODE_2"));

    let (status, _, page) = get(&app, "/ui/computer?id=evil-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&page);
    assert!(
        page.contains("&lt;/pre&gt;&lt;script&gt;alert(3)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("/ui/inventory?id=evil-1"));

    let (status, _, page) = get(&app, "/ui/inventory?id=evil-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&page);
    // Decompressed, and escaped once more on the way out.
    assert!(
        page.contains("&lt;NAME&gt;&amp;lt;svg onload=alert(5)&amp;gt;"),
        "{page}"
    );

    // A filter typed into the form comes back as an attribute value, escaped.
    let hostile = url::form_urlencoded::byte_serialize(IMG_TAG.as_bytes()).collect::<String>();
    let (_, _, page) = get(&app, &format!("/ui/?name={hostile}")).await;
    assert_inert(&page);
    assert!(page.contains(r#"value="&quot;&gt;&lt;img"#), "{page}");
}

#[tokio::test]
async fn every_page_answers_with_a_strict_policy_and_a_live_fragment() {
    let app = app(database(), report());
    for path in [
        "/ui/",
        "/ui/computer?id=evil-1",
        "/ui/deployments",
        "/ui/certificates",
        "/ui/health",
        "/ui/events",
        "/ui/assets/app.js",
        "/ui/assets/console.css",
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        if path.ends_with(".js") || path.ends_with(".css") {
            continue;
        }
        // No inline style or script: the policy would refuse them.
        assert!(!body.contains("style="), "{path}");
        assert!(!body.contains("<style"), "{path}");
        assert!(body.contains(r#"action="/ui/logout""#), "{path}");
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, _, fragment) = get(&app, &format!("{path}{separator}fragment=1")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!fragment.contains("<html"), "{path}: {fragment}");
        assert!(
            body.contains(&fragment),
            "{path}: the fragment is the page's live region"
        );
    }
    let (status, headers, _) = get(&app, "/").await;
    assert!(status.is_redirection());
    assert_eq!(headers[header::LOCATION], "/ui/");
    let (status, _, body) = get(&app, "/ui/?state=broken").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("unknown state"), "{body}");
    let (status, _, _) = get(&app, "/ui/computer?id=nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_show_what_the_api_counts_and_the_actions_of_each_object() {
    let app = app(database(), report());
    let (_, _, page) = get(&app, "/ui/deployments").await;
    // The table's one target, in error, drawn whole and linked to the fleet filtered.
    assert!(page.contains("seg state-error w100"), "{page}");
    assert!(
        page.contains("/ui/?activation=default%2Fhello&amp;state=error"),
        "{page}"
    );
    assert!(
        page.contains(r#"data-post="/api/v1/objects/Activation/hello/suspend?namespace=default""#)
    );
    assert!(
        page.contains(r#"data-post="/api/v1/objects/Activation/held/resume?namespace=default""#)
    );
    assert!(page.contains("suspended (operator)"));
    // Result codes on the Fleet for a chosen activation (not recounted at every poll else).
    let (_, _, page) = get(&app, "/ui/?activation=hello").await;
    assert!(page.contains("Result codes"), "{page}");
    let (_, _, page) = get(&app, "/ui/").await;
    assert!(!page.contains("Result codes"), "{page}");
    let (_, _, page) = get(&app, "/ui/certificates").await;
    assert!(page.contains(r#"<tr class="expiry-ok">"#), "{page}");
    assert!(page.contains("2099-01-01T00:00:00Z"));
    assert!(page.contains(r#"data-post="/api/v1/certificates/web/renew?namespace=default""#));
    let (_, _, page) = get(&app, "/ui/health").await;
    assert!(page.contains("this replica (replica-1)"), "{page}");
    assert!(page.contains("rev-1"));
    let (_, _, page) = get(&app, "/ui/events").await;
    assert!(page.contains("<table class=\"events\">"), "{page}");
}

#[tokio::test]
async fn pages_that_need_a_report_wait_for_the_first_reconcile() {
    let app = app(database(), Report::default());
    let (status, _, body) = get(&app, "/ui/deployments").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("first reconcile"), "{body}");
}

#[test]
fn certificates_are_coloured_by_the_time_left() {
    let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    for (not_after, class) in [
        (Some("2025-12-31T00:00:00Z"), "expiry-expired"),
        (Some("2026-01-03T00:00:00Z"), "expiry-critical"),
        (Some("2026-01-20T00:00:00Z"), "expiry-warning"),
        (Some("2026-06-01T00:00:00Z"), "expiry-ok"),
        (None, "expiry-unknown"),
    ] {
        assert_eq!(pages::expiry_class(not_after, now), class, "{not_after:?}");
    }
}
