//! Enrollment tokens: stored with their secret hashed, used at most as often as they allow
//! even by several servers at once, expired or revoked.

use crate::store::sql::{Dialect, Row, params};

use super::{Database, DbError};

/// An enrollment token as stored (its secret only as a hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    #[serde(skip)]
    pub secret_sha256: String,
    pub note: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: i64,
    pub uses: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token, or the secret does not match (the two are not told apart).
    #[error("unknown enrollment token")]
    Unknown,
    #[error("the enrollment token has expired")]
    Expired,
    #[error("the enrollment token has been used as many times as it allows")]
    UsedUp,
    #[error("the enrollment token has been revoked")]
    Revoked,
}

impl Database {
    /// Stores a new enrollment token.
    pub fn create_token(&self, token: &TokenRecord) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, note, created_at, expires_at,
                     max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
                params![
                    &token.id,
                    &token.secret_sha256,
                    &token.note,
                    token.created_at,
                    token.expires_at,
                    token.max_uses
                ],
            )
        })?;
        Ok(())
    }

    /// Every enrollment token, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.all(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"),
            &[],
            token_row,
        )
    }

    /// Revokes token `id`; false when there is no such token.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                params![now, id],
            )
        })?;
        Ok(changed > 0)
    }

    /// Uses token `id` once, if `proves` accepts its stored secret hash and it is neither
    /// expired, used up nor revoked. Checking and counting happen in one transaction (the
    /// row locked on PostgreSQL), so a token allowed N uses is never used N+1 times, even by
    /// several servers at once.
    pub fn use_token(
        &self,
        id: &str,
        proves: impl FnOnce(&str) -> bool,
        now: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, DbError> {
        self.transaction(|c| {
            let lock = match c.dialect() {
                // SQLite has one writer: the transaction is serialised already.
                Dialect::Sqlite => "",
                Dialect::Postgres => " FOR UPDATE",
            };
            let found = c
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1{lock}"),
                    params![id],
                )?
                .map(|row| token_row(&row))
                .transpose()?;
            let Some(mut token) = found.filter(|t| proves(&t.secret_sha256)) else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let refusal = if token.revoked_at.is_some() {
                Some(TokenRefusal::Revoked)
            } else if now >= token.expires_at {
                Some(TokenRefusal::Expired)
            } else if token.uses >= token.max_uses {
                Some(TokenRefusal::UsedUp)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                return Ok(Err(refusal));
            }
            c.execute(
                "UPDATE enrollment_tokens SET uses = uses + 1, last_used_at = $1 WHERE id = $2",
                params![now, id],
            )?;
            token.uses += 1;
            token.last_used_at = Some(now);
            Ok(Ok(token))
        })
    }
}

const TOKEN_COLUMNS: &str = "id, secret_sha256, note, created_at, expires_at, max_uses, uses, \
     last_used_at, revoked_at";

fn token_row(row: &Row) -> Result<TokenRecord, DbError> {
    Ok(TokenRecord {
        id: row.text(0)?,
        secret_sha256: row.text(1)?,
        note: row.text(2)?,
        created_at: row.int(3)?,
        expires_at: row.int(4)?,
        max_uses: row.int(5)?,
        uses: row.int(6)?,
        last_used_at: row.opt_int(7)?,
        revoked_at: row.opt_int(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::Engine;
    use crate::store::db::tests::scratch_postgres;

    on_both!(a_token_is_refused_once_used_up_expired_or_revoked_and_a_wrong_secret_is_unknown,);

    /// Two servers on one PostgreSQL database using the same token at once: a token
    /// allowed N uses is used exactly N times.
    #[test]
    fn two_servers_on_one_database_never_use_a_token_more_than_it_allows() {
        let Some(first) = scratch_postgres() else {
            return;
        };
        // The second server: a new pool on the same schema.
        let Engine::Postgres(pool) = &first.engine else {
            unreachable!()
        };
        let second = Database::postgres_with(pool.config().clone()).unwrap();
        first
            .create_token(&TokenRecord {
                id: "shared".into(),
                secret_sha256: "right".into(),
                note: String::new(),
                created_at: 0,
                expires_at: 100,
                max_uses: 5,
                uses: 0,
                last_used_at: None,
                revoked_at: None,
            })
            .unwrap();
        let accepted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for db in [&first, &second, &first, &second] {
                let accepted = &accepted;
                scope.spawn(move || {
                    for _ in 0..5 {
                        if db.use_token("shared", |h| h == "right", 1).unwrap().is_ok() {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 5);
        assert_eq!(second.tokens().unwrap()[0].uses, 5);
    }

    fn a_token_is_refused_once_used_up_expired_or_revoked_and_a_wrong_secret_is_unknown(
        db: &Database,
    ) {
        let token = |id: &str, expires_at, max_uses| TokenRecord {
            id: id.into(),
            secret_sha256: "right".into(),
            note: String::new(),
            created_at: 0,
            expires_at,
            max_uses,
            uses: 0,
            last_used_at: None,
            revoked_at: None,
        };
        db.create_token(&token("twice", 100, 2)).unwrap();
        db.create_token(&token("old", 10, 5)).unwrap();
        let right = |hash: &str| hash == "right";
        assert!(db.use_token("twice", right, 1).unwrap().is_ok());
        assert_eq!(
            db.use_token("twice", |h| h == "wrong", 2).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(db.use_token("twice", right, 3).unwrap().unwrap().uses, 2);
        assert_eq!(
            db.use_token("twice", right, 4).unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            db.use_token("old", right, 10).unwrap(),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            db.use_token("nope", right, 1).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        db.create_token(&token("third", 100, 5)).unwrap();
        assert!(db.revoke_token("third", 5).unwrap());
        assert!(!db.revoke_token("nope", 5).unwrap());
        assert_eq!(
            db.use_token("third", right, 6).unwrap(),
            Err(TokenRefusal::Revoked)
        );
        let listed = db.tokens().unwrap();
        assert_eq!(listed.len(), 3);
        let twice = listed.iter().find(|t| t.id == "twice").unwrap();
        assert_eq!((twice.uses, twice.last_used_at), (2, Some(3)));
    }
}
