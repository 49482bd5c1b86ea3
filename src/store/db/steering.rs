//! What operators asked for that outlives a request: Activations and Affectations suspended
//! by `tessera suspend` (until `tessera resume`), and certificates whose renewal was
//! requested by `tessera renew` (until the pass that issues them). One table,
//! `operator_requests`, one row per (kind, namespace, name, action); kept across restarts
//! and shared by every server of one database.

use crate::store::sql::params;

use super::{Database, DbError};

/// What an operator asked for an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorAction {
    /// Offer nothing new (an Activation or an Affectation).
    Suspend,
    /// Issue a new certificate now (a Certificate).
    Renew,
}

impl OperatorAction {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Renew => "renew",
        }
    }
}

/// One standing request: which object, and since when (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRequest {
    /// The kind as written (`Activation`).
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub requested_at: i64,
}

impl Database {
    /// Records `action` on `kind` `namespace/name` at `now`. Returns whether it is new (an
    /// object already suspended keeps the time it was first suspended; a renewal requested
    /// again before it is honoured keeps its first time too).
    pub fn request(
        &self,
        action: OperatorAction,
        kind: &str,
        namespace: &str,
        name: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        let added = self.with(|c| {
            c.execute(
                "INSERT INTO operator_requests (kind, namespace, name, action, requested_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, namespace, name, action) DO NOTHING",
                params![kind, namespace, name, action.as_str(), now],
            )
        })?;
        Ok(added > 0)
    }

    /// Withdraws `action` on `kind` `namespace/name` when it was requested at or before
    /// `through` (a renewal requested again while a pass issued leaves the newer request
    /// standing); `i64::MAX` withdraws it whenever it was made. Returns whether one was.
    pub fn withdraw(
        &self,
        action: OperatorAction,
        kind: &str,
        namespace: &str,
        name: &str,
        through: i64,
    ) -> Result<bool, DbError> {
        let removed = self.with(|c| {
            c.execute(
                "DELETE FROM operator_requests
                 WHERE kind = $1 AND namespace = $2 AND name = $3 AND action = $4
                     AND requested_at <= $5",
                params![kind, namespace, name, action.as_str(), through],
            )
        })?;
        Ok(removed > 0)
    }

    /// Every standing request for `action`, by kind, namespace and name.
    pub fn requests(&self, action: OperatorAction) -> Result<Vec<OperatorRequest>, DbError> {
        self.with(|c| {
            c.query(
                "SELECT kind, namespace, name, requested_at FROM operator_requests
                 WHERE action = $1 ORDER BY kind, namespace, name",
                params![action.as_str()],
            )?
            .iter()
            .map(|row| {
                Ok(OperatorRequest {
                    kind: row.text(0)?,
                    namespace: row.text(1)?,
                    name: row.text(2)?,
                    requested_at: row.int(3)?,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both!(
        a_suspension_is_kept_until_withdrawn,
        a_renewal_requested_during_a_pass_stays_standing,
    );

    fn a_suspension_is_kept_until_withdrawn(db: &Database) {
        let suspend = OperatorAction::Suspend;
        assert!(
            db.request(suspend, "Activation", "default", "hello", 10)
                .unwrap()
        );
        assert!(
            !db.request(suspend, "Activation", "default", "hello", 20)
                .unwrap(),
            "already suspended"
        );
        let found = db.requests(suspend).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].requested_at, 10, "the first time is kept");
        assert!(db.requests(OperatorAction::Renew).unwrap().is_empty());
        assert!(
            db.withdraw(suspend, "Activation", "default", "hello", i64::MAX)
                .unwrap()
        );
        assert!(
            !db.withdraw(suspend, "Activation", "default", "hello", i64::MAX)
                .unwrap()
        );
        assert!(db.requests(suspend).unwrap().is_empty());
    }

    fn a_renewal_requested_during_a_pass_stays_standing(db: &Database) {
        let renew = OperatorAction::Renew;
        db.request(renew, "Certificate", "default", "server", 50)
            .unwrap();
        // The pass honoured a request made at 40 or before: not this one.
        assert!(
            !db.withdraw(renew, "Certificate", "default", "server", 40)
                .unwrap()
        );
        assert_eq!(db.requests(renew).unwrap().len(), 1);
        assert!(
            db.withdraw(renew, "Certificate", "default", "server", 50)
                .unwrap()
        );
    }
}
