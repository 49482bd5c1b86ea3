//! `POST /api/v1/computers/{computer}/wake`, for `tessera notify`: asks a computer's agent to
//! check in now over the push channel (`server::push`), when it holds one. Like the other
//! actions, only the leader acts (a follower answers 409), and the caller must be an
//! operator (the admin authentication's rule for every mutating route).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::actions::{Leader, Steering};
use crate::server::push::{Delivery, Registry};

/// The answer of a wake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WakeReport {
    /// The computer's device id.
    pub device: String,
    /// `held` (its agent waits on the channel and was answered), `between` (it is checking
    /// in; its next wait is answered at once) or `notConnected` (call its listener, or wait
    /// for its schedule).
    pub delivery: String,
}

/// The wake route, over the steering's database and leadership and the push registry.
pub fn wake_app(steering: Steering, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/api/v1/computers/{computer}/wake", post(wake))
        .with_state((steering, registry))
}

async fn wake(
    State((steering, registry)): State<(Steering, Arc<Registry>)>,
    Path(computer): Path<String>,
) -> Response {
    let refuse =
        |status: StatusCode, error: String| (status, Json(serde_json::json!({ "error": error })));
    let (leader, db) = (steering.leader.clone(), steering.db.clone());
    let looked_up = tokio::task::spawn_blocking(move || {
        let leader = leader.now();
        db.find_computers(&computer)
            .map(|found| (leader, found, computer))
    })
    .await;
    let (leader, found, computer) = match looked_up {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "failed to find the computer: {}",
                    crate::error_chain(&error)
                ),
            )
            .into_response();
        }
        Err(_) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the state database call stopped".into(),
            )
            .into_response();
        }
    };
    if let Leader::Other(name) = leader {
        let leader = name.unwrap_or_else(|| "not known to this replica".into());
        return refuse(
            StatusCode::CONFLICT,
            format!("this replica is not the leader; the leader is {leader}"),
        )
        .into_response();
    }
    let device = match found.as_slice() {
        [one] => one.device_id.clone(),
        [] => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("no computer with device id or name {computer:?}"),
            )
            .into_response();
        }
        many => {
            let ids: Vec<&str> = many.iter().map(|c| c.device_id.as_str()).collect();
            return refuse(
                StatusCode::CONFLICT,
                format!(
                    "{} computers are named {computer:?}: give a device id ({})",
                    many.len(),
                    ids.join(", ")
                ),
            )
            .into_response();
        }
    };
    let delivery = match registry.wake(&device) {
        Delivery::Held => "held",
        Delivery::Between => "between",
        Delivery::NotConnected => "notConnected",
    };
    tracing::info!(%device, delivery, "operator asked for a check-in now");
    Json(WakeReport {
        device,
        delivery: delivery.into(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::server::admin::{Report, pass_channel};
    use crate::store::db::Database;

    fn app(leader: Leader, registry: &Arc<Registry>) -> Router {
        let db = Arc::new(Database::in_memory().unwrap());
        db.contact("lab-01-id", 0).unwrap();
        let (_, reports) = tokio::sync::watch::channel(Report::default());
        let steering = Steering {
            db,
            reports,
            leader: super::super::actions::LeaderView::new(move || leader.clone()),
            passes: pass_channel().0,
            fetch: None,
            wait: Duration::from_secs(1),
            replica: "test".into(),
        };
        wake_app(steering, registry.clone())
    }

    async fn wake(app: Router, computer: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(
                Request::post(format!("/api/v1/computers/{computer}/wake"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_leader_wakes_a_held_agent_and_a_follower_refuses() {
        let registry = Arc::new(Registry::starting_at(1));
        let leader = app(Leader::This, &registry);
        let (status, body) = wake(leader.clone(), "lab-01-id").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["delivery"], "notConnected");
        let mut held = registry.subscribe("lab-01-id");
        held.borrow_and_update();
        let (_, body) = wake(leader.clone(), "lab-01-id").await;
        assert_eq!(body["delivery"], "held");
        assert!(held.has_changed().unwrap());
        held.borrow_and_update();
        let (status, _) = wake(leader, "nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let follower = app(Leader::Other(Some("tessera-0".into())), &registry);
        let (status, body) = wake(follower, "lab-01-id").await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(
            body["error"],
            "this replica is not the leader; the leader is tessera-0"
        );
        assert!(!held.has_changed().unwrap(), "a follower wakes nothing");
    }
}
