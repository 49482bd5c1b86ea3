//! Admin API tokens: who may read (`viewer`) or also steer (`operator`) through the admin
//! API. Stored with their secret hashed, listed without it, revoked by id.

use crate::store::sql::{Row, params};

use super::{Database, DbError};

/// An admin token as stored (its secret only as a hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminTokenRecord {
    /// Public name: 12 hex digits.
    pub id: String,
    #[serde(skip)]
    pub secret_sha256: String,
    /// Who holds it: the caller's name in events and logs.
    pub name: String,
    /// `viewer` or `operator`, as stored.
    pub role: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Database {
    /// Stores a new admin token.
    pub fn create_admin_token(&self, token: &AdminTokenRecord) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO admin_tokens (id, secret_sha256, name, role, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                params![
                    &token.id,
                    &token.secret_sha256,
                    &token.name,
                    &token.role,
                    token.created_at
                ],
            )
        })?;
        Ok(())
    }

    /// Every admin token, newest first.
    pub fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, DbError> {
        self.all(
            &format!("SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at DESC, id"),
            &[],
            admin_token_row,
        )
    }

    /// The admin token `id`, revoked or not; the caller checks its secret.
    pub fn admin_token(&self, id: &str) -> Result<Option<AdminTokenRecord>, DbError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = $1"),
                params![id],
            )?
            .map(|row| admin_token_row(&row))
            .transpose()
        })
    }

    /// Notes that token `id` was used at `now`.
    pub fn touch_admin_token(&self, id: &str, now: i64) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE admin_tokens SET last_used_at = $1 WHERE id = $2",
                params![now, id],
            )
        })?;
        Ok(())
    }

    /// Revokes admin token `id`; false when there is no such token.
    pub fn revoke_admin_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                params![now, id],
            )
        })?;
        Ok(changed > 0)
    }
}

const COLUMNS: &str = "id, secret_sha256, name, role, created_at, last_used_at, revoked_at";

fn admin_token_row(row: &Row) -> Result<AdminTokenRecord, DbError> {
    Ok(AdminTokenRecord {
        id: row.text(0)?,
        secret_sha256: row.text(1)?,
        name: row.text(2)?,
        role: row.text(3)?,
        created_at: row.int(4)?,
        last_used_at: row.opt_int(5)?,
        revoked_at: row.opt_int(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both!(an_admin_token_is_found_touched_listed_and_revoked,);

    fn an_admin_token_is_found_touched_listed_and_revoked(db: &Database) {
        db.create_admin_token(&AdminTokenRecord {
            id: "0123456789ab".into(),
            secret_sha256: "hash".into(),
            name: "alice".into(),
            role: "operator".into(),
            created_at: 5,
            last_used_at: None,
            revoked_at: None,
        })
        .unwrap();
        let found = db.admin_token("0123456789ab").unwrap().unwrap();
        assert_eq!(
            (found.name.as_str(), found.role.as_str()),
            ("alice", "operator")
        );
        assert_eq!(found.secret_sha256, "hash");
        assert!(db.admin_token("nope").unwrap().is_none());
        db.touch_admin_token("0123456789ab", 7).unwrap();
        assert!(db.revoke_admin_token("0123456789ab", 9).unwrap());
        assert!(!db.revoke_admin_token("nope", 9).unwrap());
        let listed = db.admin_tokens().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].last_used_at, listed[0].revoked_at),
            (Some(7), Some(9))
        );
        let json = serde_json::to_string(&listed).unwrap();
        assert!(
            !json.contains("hash"),
            "the list never carries the hash: {json}"
        );
    }
}
