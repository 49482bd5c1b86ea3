//! The admin API's mutating endpoints, for `tessera suspend`, `resume`, `reconcile` and
//! `renew`: `POST /api/v1/objects/{kind}/{name}/suspend` and `.../resume` (`?namespace=`),
//! `POST /api/v1/reconcile` (`{"source": true}` fetches the git branch first) and
//! `POST /api/v1/certificates/{name}/renew` (`?namespace=`).
//!
//! Only the leader acts (a follower answers 409 naming the leader), since the leader alone
//! writes what servers share. What outlives the request (a suspension, a renewal request) is
//! written to the state database first, so a restart keeps it; then a reconcile pass is
//! asked for through [`PassTrigger`] (reconcile holds the other end, [`PassQueue`]: this
//! module imports nothing of reconcile), and its summary is the answer when it finishes in
//! time, else the answer says it is queued.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::auth::Caller;
use super::report::{ObjectKind, ObjectReport, Report};
use crate::store::db::journal::{self, Record};
use crate::store::db::{Database, OperatorAction};

/// How long an action waits for the pass it asked for before answering "queued": a pass
/// builds packages and issues certificates, which takes seconds; the CLI gives up at 30 s.
pub const PASS_WAIT: Duration = Duration::from_secs(20);

/// The key of `ObjectReport::details` saying what holds an object suspended (`spec` or
/// `operator`); `tessera get` reads it.
pub const SUSPENDED_DETAIL: &str = "suspended";

/// Who leads the reconcile, as this replica knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leader {
    /// This replica: it may act.
    This,
    /// Another replica, named when known (the identity it recorded, the Lease holder).
    Other(Option<String>),
}

/// Asks who leads now (may read the state database: called on the blocking pool).
#[derive(Clone)]
pub struct LeaderView(Arc<dyn Fn() -> Leader + Send + Sync>);

impl LeaderView {
    /// Leadership as `ask` tells it.
    pub fn new(ask: impl Fn() -> Leader + Send + Sync + 'static) -> Self {
        Self(Arc::new(ask))
    }

    /// Always this replica (a server alone).
    pub fn this() -> Self {
        Self::new(|| Leader::This)
    }

    pub(super) fn now(&self) -> Leader {
        (self.0)()
    }
}

/// What a pass did, as the answer to the action that asked for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PassDone {
    /// The highest request this pass answers (requests coalesce into the next pass).
    #[serde(skip)]
    pub request: u64,
    /// The revision of the configuration reconciled.
    pub revision: String,
    /// Objects in the report, and how many of them are Ready.
    pub objects: usize,
    pub ready: usize,
    /// Problems found, of objects and of the configuration.
    pub problems: usize,
}

/// The admin API's end of the pass requests.
#[derive(Clone)]
pub struct PassTrigger {
    requested: Arc<watch::Sender<u64>>,
    done: watch::Receiver<PassDone>,
}

/// Reconcile's end: it reads `requested` (a counter: bursts coalesce into one pass) and
/// answers on `done` with the request number it served.
pub struct PassQueue {
    pub requested: watch::Receiver<u64>,
    pub done: watch::Sender<PassDone>,
}

/// A new pair of ends.
pub fn pass_channel() -> (PassTrigger, PassQueue) {
    let (requested_tx, requested) = watch::channel(0);
    let (done, done_rx) = watch::channel(PassDone::default());
    (
        PassTrigger {
            requested: Arc::new(requested_tx),
            done: done_rx,
        },
        PassQueue { requested, done },
    )
}

impl PassTrigger {
    /// Asks for a pass and waits up to `wait` for it to finish: its summary, or `None` when
    /// it is still queued (or no reconcile loop listens).
    pub async fn pass(&self, wait: Duration) -> Option<PassDone> {
        let mut done = self.done.clone();
        let mut id = 0;
        self.requested.send_modify(|n| {
            *n += 1;
            id = *n;
        });
        let finished = tokio::time::timeout(wait, done.wait_for(|d| d.request >= id)).await;
        match finished {
            Ok(Ok(summary)) => Some(summary.clone()),
            _ => None,
        }
    }
}

impl PassQueue {
    /// The summary of a pass that served requests up to `request`, from its `report`.
    pub fn finished(&self, request: u64, report: &Report) -> PassDone {
        let summary = PassDone {
            request,
            revision: report.revision.clone(),
            objects: report.objects.len(),
            ready: report.objects.iter().filter(|o| is_ready(o)).count(),
            problems: report.problems.len()
                + report
                    .objects
                    .iter()
                    .map(|o| o.problems.len())
                    .sum::<usize>(),
        };
        self.done.send_replace(summary.clone());
        summary
    }
}

fn is_ready(object: &ObjectReport) -> bool {
    object
        .conditions
        .iter()
        .any(|c| c.type_ == super::ConditionType::Ready && c.status == super::ConditionStatus::True)
}

/// What the action endpoints need.
#[derive(Clone)]
pub struct Steering {
    pub db: Arc<Database>,
    pub reports: watch::Receiver<Report>,
    pub leader: LeaderView,
    pub passes: PassTrigger,
    /// Wakes the git source to fetch now (the webhook's path), when the source is git.
    pub fetch: Option<Arc<Notify>>,
    /// How long to wait for a pass ([`PASS_WAIT`]; tests shorten it).
    pub wait: Duration,
    /// This replica's name, for the events of the actions that concern no one object.
    pub replica: String,
}

/// The answer of every action.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionReport {
    /// `suspend`, `resume`, `reconcile`, `renew`.
    pub action: String,
    /// `Kind/namespace/name`, for the actions on one object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// What happened, in words.
    pub message: String,
    /// The pass that followed, when it finished within the wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<PassDone>,
    /// The pass is still to come (it runs when the current one ends).
    pub queued: bool,
    /// The object as that pass left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ObjectReport>,
}

/// `POST /api/v1/objects/{kind}/{name}/suspend|resume`, `POST /api/v1/reconcile` and
/// `POST /api/v1/certificates/{name}/renew`.
pub fn actions_app(steering: Steering) -> Router {
    Router::new()
        .route("/api/v1/objects/{kind}/{name}/suspend", post(suspend))
        .route("/api/v1/objects/{kind}/{name}/resume", post(resume))
        .route("/api/v1/reconcile", post(reconcile))
        .route("/api/v1/certificates/{name}/renew", post(renew))
        .with_state(steering)
}

/// `?namespace=`.
#[derive(Debug, Default, Deserialize)]
struct Namespace {
    namespace: Option<String>,
}

/// The body of `POST /api/v1/reconcile`.
#[derive(Debug, Default, Deserialize)]
struct ReconcileRequest {
    #[serde(default)]
    source: bool,
}

/// A refusal, as JSON `{"error": "..."}` (what the CLI prints).
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn suspend(
    State(steering): State<Steering>,
    caller: Option<Extension<Caller>>,
    Path((kind, name)): Path<(String, String)>,
    Query(namespace): Query<Namespace>,
) -> Response {
    suspension(
        steering,
        &by(caller),
        &kind,
        &name,
        namespace.namespace,
        true,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

async fn resume(
    State(steering): State<Steering>,
    caller: Option<Extension<Caller>>,
    Path((kind, name)): Path<(String, String)>,
    Query(namespace): Query<Namespace>,
) -> Response {
    suspension(
        steering,
        &by(caller),
        &kind,
        &name,
        namespace.namespace,
        false,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// Who made a call, for its event: "operator alice"; "an operator" when the admin API runs
/// without the authentication middleware (tests of the actions alone).
fn by(caller: Option<Extension<Caller>>) -> String {
    caller.map_or_else(
        || "an operator".to_owned(),
        |Extension(caller)| caller.to_string(),
    )
}

async fn suspension(
    steering: Steering,
    by: &str,
    kind: &str,
    name: &str,
    namespace: Option<String>,
    suspend: bool,
) -> Result<Response, Refusal> {
    let kind = match kind.to_ascii_lowercase().as_str() {
        "activation" | "activations" | "act" => ObjectKind::Activation,
        "affectation" | "affectations" => ObjectKind::Affectation,
        _ => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                format!("{kind}: only Activations and Affectations are suspended and resumed"),
            ));
        }
    };
    leading(&steering).await?;
    let object = find(&steering.reports, kind, name, namespace.as_deref())?;
    let (namespace, name) = (object.namespace.clone(), object.name.clone());
    let db = steering.db.clone();
    let (n, k) = (namespace.clone(), name.clone());
    let now = jiff::Timestamp::now().as_second();
    let changed = tokio::task::spawn_blocking(move || {
        let action = OperatorAction::Suspend;
        if suspend {
            db.request(action, kind.as_str(), &n, &k, now)
        } else {
            db.withdraw(action, kind.as_str(), &n, &k, i64::MAX)
        }
    })
    .await
    .map_err(|_| internal("the state database call stopped"))?
    .map_err(|error| {
        internal(&format!(
            "failed to record the override: {}",
            crate::error_chain(&error)
        ))
    })?;
    let verb = if suspend { "suspend" } else { "resume" };
    let qualified = format!("{kind}/{namespace}/{name}");
    tracing::info!(action = verb, object = %qualified, changed, caller = by, "operator action");
    if changed {
        let (reason, message) = if suspend {
            (
                "Suspended",
                format!("suspended by {by} (`tessera suspend`)"),
            )
        } else {
            ("Resumed", format!("resumed by {by} (`tessera resume`)"))
        };
        journal::record(
            &steering.db,
            Record::normal(kind.as_str(), &namespace, &name, reason, &message),
        );
    }
    let spec_holds = |after: &Option<ObjectReport>| {
        after.as_ref().and_then(|o| o.details.get(SUSPENDED_DETAIL)) == Some(&"spec".into())
    };
    let (pass, after) = pass_and_object(&steering, kind, &namespace, &name).await;
    let message = match (suspend, changed) {
        (true, true) => {
            format!("{qualified} suspended: nothing new is offered until it is resumed")
        }
        (true, false) => format!("{qualified} was already suspended by an operator"),
        (false, _) if spec_holds(&after) => format!(
            "{qualified}: spec.suspend is true in the configuration; it stays suspended until that changes"
        ),
        (false, true) => format!("{qualified} resumed: its package is offered again"),
        (false, false) => format!("{qualified} was not suspended by an operator"),
    };
    Ok(answer(verb, Some(qualified), message, pass, after))
}

async fn reconcile(
    State(steering): State<Steering>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let by = by(caller);
    let request: ReconcileRequest = if body.is_empty() {
        ReconcileRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(error) => {
                return Refusal(StatusCode::BAD_REQUEST, format!("not a request: {error}"))
                    .into_response();
            }
        }
    };
    if let Err(refusal) = leading(&steering).await {
        return refusal.into_response();
    }
    let fetched = match (&steering.fetch, request.source) {
        (Some(fetch), true) => {
            fetch.notify_one();
            "a git fetch was started (a new commit starts a pass of its own); "
        }
        (None, true) => {
            "this source has nothing to fetch (a directory is watched, the cluster's objects too); "
        }
        (_, false) => "",
    };
    tracing::info!(
        action = "reconcile",
        source = request.source,
        caller = by,
        "operator action"
    );
    journal::record(
        &steering.db,
        Record::normal(
            "Replica",
            "",
            &steering.replica,
            "ReconcileRequested",
            &if request.source {
                format!("{by} asked for a fetch and a pass now (`tessera reconcile --source`)")
            } else {
                format!("{by} asked for a pass now (`tessera reconcile`)")
            },
        ),
    );
    let pass = steering.passes.pass(steering.wait).await;
    let message = match &pass {
        Some(done) => format!(
            "{fetched}reconciled revision {}: {} objects, {} ready",
            done.revision, done.objects, done.ready
        ),
        None => format!("{fetched}a pass is queued"),
    };
    answer("reconcile", None, message, pass, None)
}

async fn renew(
    State(steering): State<Steering>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    Query(namespace): Query<Namespace>,
) -> Response {
    renewal(steering, &by(caller), &name, namespace.namespace)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn renewal(
    steering: Steering,
    by: &str,
    name: &str,
    namespace: Option<String>,
) -> Result<Response, Refusal> {
    leading(&steering).await?;
    let kind = ObjectKind::Certificate;
    let object = find(&steering.reports, kind, name, namespace.as_deref())?;
    let (namespace, name) = (object.namespace.clone(), object.name.clone());
    let db = steering.db.clone();
    let (n, k) = (namespace.clone(), name.clone());
    let now = jiff::Timestamp::now().as_second();
    tokio::task::spawn_blocking(move || {
        db.request(OperatorAction::Renew, kind.as_str(), &n, &k, now)
    })
    .await
    .map_err(|_| internal("the state database call stopped"))?
    .map_err(|error| {
        internal(&format!(
            "failed to record the renewal request: {}",
            crate::error_chain(&error)
        ))
    })?;
    let qualified = format!("{kind}/{namespace}/{name}");
    tracing::info!(action = "renew", object = %qualified, caller = by, "operator action");
    journal::record(
        &steering.db,
        Record::normal(
            kind.as_str(),
            &namespace,
            &name,
            "RenewalRequested",
            &format!("renewal requested by {by} (`tessera renew`)"),
        ),
    );
    let (pass, after) = pass_and_object(&steering, kind, &namespace, &name).await;
    let revision = |o: &ObjectReport| o.details.get("revision").and_then(|r| r.as_i64());
    let message = match (&pass, after.as_ref().and_then(revision)) {
        (Some(_), Some(now)) if revision(&object) != Some(now) => {
            format!("{qualified} renewed: revision {now}")
        }
        (Some(_), _) => format!(
            "{qualified}: renewal requested; not issued by this pass (see its conditions), it stands until a pass issues it"
        ),
        (None, _) => format!("{qualified}: renewal requested; a pass is queued"),
    };
    Ok(answer("renew", Some(qualified), message, pass, after))
}

/// Refuses unless this replica leads.
async fn leading(steering: &Steering) -> Result<(), Refusal> {
    let view = steering.leader.clone();
    let leader = tokio::task::spawn_blocking(move || view.now())
        .await
        .map_err(|_| internal("asking who leads stopped"))?;
    refuse_unless_leading(&leader)
}

/// The 409 of a follower, naming the leader when it is known.
fn refuse_unless_leading(leader: &Leader) -> Result<(), Refusal> {
    match leader {
        Leader::This => Ok(()),
        Leader::Other(name) => Err(Refusal(
            StatusCode::CONFLICT,
            format!(
                "this replica is not the leader; the leader is {}",
                name.as_deref()
                    .unwrap_or("not known to this replica (it has not recorded itself yet)")
            ),
        )),
    }
}

/// The object of the latest report: by kind and name, in `namespace` when given, else the
/// only one of that name.
fn find(
    reports: &watch::Receiver<Report>,
    kind: ObjectKind,
    name: &str,
    namespace: Option<&str>,
) -> Result<ObjectReport, Refusal> {
    let report = reports.borrow();
    if !report.ready {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first reconcile has not finished".into(),
        ));
    }
    let found: Vec<&ObjectReport> = report
        .objects
        .iter()
        .filter(|o| o.kind == kind && o.name == name)
        .filter(|o| namespace.is_none_or(|n| o.namespace == n))
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Refusal(
            StatusCode::NOT_FOUND,
            match namespace {
                Some(namespace) => format!("no {kind} {name} in namespace {namespace}"),
                None => format!("no {kind} {name}"),
            },
        )),
        several => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "{kind} {name} is in several namespaces ({}): give one with -n",
                several
                    .iter()
                    .map(|o| o.namespace.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Asks for a pass, and reads the object as it left it.
async fn pass_and_object(
    steering: &Steering,
    kind: ObjectKind,
    namespace: &str,
    name: &str,
) -> (Option<PassDone>, Option<ObjectReport>) {
    let pass = steering.passes.pass(steering.wait).await;
    let after = pass.as_ref().and_then(|_| {
        steering
            .reports
            .borrow()
            .objects
            .iter()
            .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
            .cloned()
    });
    (pass, after)
}

fn answer(
    action: &str,
    object: Option<String>,
    message: String,
    pass: Option<PassDone>,
    after: Option<ObjectReport>,
) -> Response {
    let queued = pass.is_none();
    let status = if queued {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(ActionReport {
            action: action.to_owned(),
            object,
            message,
            pass,
            queued,
            after,
        }),
    )
        .into_response()
}

fn internal(message: &str) -> Refusal {
    Refusal(StatusCode::INTERNAL_SERVER_ERROR, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::{ConditionReport, ConditionStatus, ConditionType};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn report() -> Report {
        let object = |kind, name: &str| ObjectReport {
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
                reason: "Active".into(),
                message: String::new(),
                last_transition_time: String::new(),
            }],
            problems: vec![],
            spec: None,
            related: Vec::new(),
        };
        Report {
            revision: "abc".into(),
            ready: true,
            objects: vec![
                object(ObjectKind::Activation, "hello"),
                object(ObjectKind::Certificate, "server"),
            ],
            problems: vec![],
            conditions: vec![],
        }
    }

    /// The actions on `report`, led as `leader` says, with a reconcile loop that answers
    /// every pass request at once (as a stand-in for reconcile).
    fn steering(leader: Leader) -> (Steering, Arc<Database>) {
        let db = Arc::new(Database::in_memory().unwrap());
        // The receiver keeps the last value once its sender is gone.
        let (_, reports) = watch::channel(report());
        let (passes, mut queue) = pass_channel();
        tokio::spawn(async move {
            while queue.requested.changed().await.is_ok() {
                let n = *queue.requested.borrow_and_update();
                queue.finished(n, &report());
            }
        });
        let steering = Steering {
            db: db.clone(),
            reports,
            leader: LeaderView::new(move || leader.clone()),
            passes,
            fetch: None,
            wait: Duration::from_secs(5),
            replica: "test".to_owned(),
        };
        (steering, db)
    }

    async fn post(app: Router, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(
                Request::post(uri)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn a_follower_refuses_every_action_and_names_the_leader() {
        let (steering, db) = steering(Leader::Other(Some("tessera-0".into())));
        let app = actions_app(steering);
        for uri in [
            "/api/v1/objects/Activation/hello/suspend",
            "/api/v1/objects/Activation/hello/resume",
            "/api/v1/reconcile",
            "/api/v1/certificates/server/renew",
        ] {
            let (status, body) = post(app.clone(), uri, "{}").await;
            assert_eq!(status, StatusCode::CONFLICT, "{uri}");
            assert_eq!(
                body["error"], "this replica is not the leader; the leader is tessera-0",
                "{uri}"
            );
        }
        assert!(
            db.requests(OperatorAction::Suspend).unwrap().is_empty(),
            "nothing recorded"
        );
    }

    #[tokio::test]
    async fn the_leader_records_a_suspension_and_its_withdrawal_and_runs_a_pass() {
        let (steering, db) = steering(Leader::This);
        let app = actions_app(steering);
        let (status, body) = post(
            app.clone(),
            "/api/v1/objects/activation/hello/suspend?namespace=default",
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["object"], "Activation/default/hello");
        assert_eq!(body["pass"]["revision"], "abc");
        assert_eq!(body["queued"], false);
        let standing = db.requests(OperatorAction::Suspend).unwrap();
        assert_eq!(standing.len(), 1);
        assert_eq!(
            (standing[0].kind.as_str(), standing[0].name.as_str()),
            ("Activation", "hello")
        );
        let (status, body) = post(app.clone(), "/api/v1/objects/Activation/hello/resume", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body["message"].as_str().unwrap().contains("resumed"),
            "{body}"
        );
        assert!(db.requests(OperatorAction::Suspend).unwrap().is_empty());
        // Only Activations and Affectations; unknown objects are named.
        let (status, _) = post(app.clone(), "/api/v1/objects/Package/hello/suspend", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = post(app.clone(), "/api/v1/objects/Activation/nope/suspend", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no Activation nope");
    }

    #[tokio::test]
    async fn renew_records_a_request_and_reconcile_reports_its_pass() {
        let (steering, db) = steering(Leader::This);
        let app = actions_app(steering);
        let (status, _) = post(app.clone(), "/api/v1/certificates/server/renew", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(db.requests(OperatorAction::Renew).unwrap().len(), 1);
        let (status, body) = post(app.clone(), "/api/v1/reconcile", r#"{"source": false}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["pass"]["objects"], 2);
        assert_eq!(body["pass"]["ready"], 2);
        let (status, _) = post(app, "/api/v1/reconcile", "{nope").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn an_unanswered_pass_is_reported_as_queued() {
        let (passes, _queue) = pass_channel();
        assert_eq!(passes.pass(Duration::from_millis(50)).await, None);
    }
}
