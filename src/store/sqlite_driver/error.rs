//! SQLite's errors as sqlx database errors, with the same codes and kinds as sqlx's own
//! SQLite driver gives, so that callers tell a refused write from a passing one alike.

use std::borrow::Cow;

use rusqlite::ffi;
use sqlx::error::{DatabaseError, ErrorKind};

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SqliteError {
    /// SQLite's extended result code.
    code: i32,
    message: String,
}

impl SqliteError {
    /// A rusqlite error as the sqlx error sqlx's SQLite driver would have returned.
    pub fn wrap(error: rusqlite::Error) -> sqlx::Error {
        match error {
            rusqlite::Error::SqliteFailure(failure, message) => {
                let message = message.unwrap_or_else(|| failure.to_string());
                sqlx::Error::Database(Box::new(Self { code: failure.extended_code, message }))
            }
            other => sqlx::Error::Protocol(other.to_string()),
        }
    }
}

/// Whether `error` is SQLite's "database is locked": another connection holds the lock
/// the statement needs.
pub fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else { return false };
    error.try_downcast_ref::<SqliteError>().is_some_and(|error| error.code & 0xff == ffi::SQLITE_BUSY)
}

impl DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => ErrorKind::UniqueViolation,
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
