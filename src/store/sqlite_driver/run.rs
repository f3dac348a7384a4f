//! Running one request's SQL on a rusqlite connection, and turning its answers into
//! the Any driver's rows and results.

use std::sync::Arc;

use fallible_iterator::FallibleIterator;
use rusqlite::types::{ToSqlOutput, ValueRef};
use sqlx::Either;
use sqlx_core::any::{
    AnyArguments, AnyColumn, AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind, AnyValue, AnyValueKind,
};
use sqlx_core::ext::ustr::UStr;

use super::error::SqliteError;

pub type Answer = Either<AnyQueryResult, AnyRow>;

/// Runs every statement of `sql` with `arguments`, and gives what each returned: its rows,
/// then its result. Stops after `limit` rows, if given.
pub fn run(
    db: &rusqlite::Connection,
    sql: &str,
    arguments: Option<AnyArguments>,
    limit: Option<usize>,
) -> Result<Vec<Answer>, sqlx::Error> {
    let values = arguments.map(|arguments| arguments.values.0).unwrap_or_default();
    let mut answers = Vec::new();
    let mut binder = Binder::new(&values);
    if is_one_statement(sql) {
        // The store's statements are few and repeated: each is prepared once per connection.
        let mut statement = db.prepare_cached(sql).map_err(SqliteError::wrap)?;
        step(db, &mut statement, &mut binder, limit, &mut answers)?;
        return Ok(answers);
    }
    let mut batch = rusqlite::Batch::new(db, sql);
    while let Some(mut statement) = batch.next().map_err(SqliteError::wrap)? {
        step(db, &mut statement, &mut binder, limit, &mut answers)?;
        if limit.is_some_and(|limit| rows(&answers) >= limit) {
            break;
        }
    }
    Ok(answers)
}

/// Whether `sql` holds a single statement; one with a `;` anywhere but at its end (even in
/// a string) is taken as several, which the batch path handles too.
fn is_one_statement(sql: &str) -> bool {
    !sql.trim_end().trim_end_matches(';').contains(';')
}

fn rows(answers: &[Answer]) -> usize {
    answers.iter().filter(|answer| answer.is_right()).count()
}

fn step(
    db: &rusqlite::Connection,
    statement: &mut rusqlite::Statement<'_>,
    binder: &mut Binder<'_>,
    limit: Option<usize>,
    answers: &mut Vec<Answer>,
) -> Result<(), sqlx::Error> {
    binder.bind(statement)?;
    let names = column_names(statement);
    let writes = !statement.readonly();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next().map_err(SqliteError::wrap)? {
        answers.push(Either::Right(any_row(row, &names)?));
        if limit.is_some_and(|limit| self::rows(answers) >= limit) {
            return Ok(());
        }
    }
    // `changes()` keeps the count of the last write, so a read reports none of its own.
    let rows_affected = if writes { db.changes() } else { 0 };
    answers.push(Either::Left(AnyQueryResult { rows_affected, last_insert_id: None }));
    Ok(())
}

struct ColumnNames {
    by_name: Arc<sqlx_core::HashMap<UStr, usize>>,
    in_order: Vec<UStr>,
}

fn column_names(statement: &rusqlite::Statement<'_>) -> ColumnNames {
    let in_order: Vec<UStr> = statement.column_names().into_iter().map(UStr::new).collect();
    let by_name = in_order.iter().enumerate().map(|(ordinal, name)| (name.clone(), ordinal)).collect();
    ColumnNames { by_name: Arc::new(by_name), in_order }
}

fn any_row(row: &rusqlite::Row<'_>, names: &ColumnNames) -> Result<AnyRow, sqlx::Error> {
    let mut columns = Vec::with_capacity(names.in_order.len());
    let mut values = Vec::with_capacity(names.in_order.len());
    for (ordinal, name) in names.in_order.iter().enumerate() {
        let kind = any_value(row.get_ref(ordinal).map_err(SqliteError::wrap)?, ordinal)?;
        let type_info = AnyTypeInfo { kind: kind_of(&kind) };
        columns.push(AnyColumn { ordinal, name: name.clone(), type_info });
        values.push(AnyValue { kind });
    }
    Ok(AnyRow { column_names: names.by_name.clone(), columns, values })
}

/// SQLite's value as sqlx's own SQLite driver hands it to Any: integers as 64 bits, reals
/// as doubles, by the value's type rather than the column's.
fn any_value(value: ValueRef<'_>, ordinal: usize) -> Result<AnyValueKind, sqlx::Error> {
    Ok(match value {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(integer) => AnyValueKind::BigInt(integer),
        ValueRef::Real(real) => AnyValueKind::Double(real),
        ValueRef::Text(text) => match std::str::from_utf8(text) {
            Ok(text) => AnyValueKind::Text(Arc::new(text.to_owned())),
            Err(error) => return Err(sqlx::Error::ColumnDecode { index: ordinal.to_string(), source: error.into() }),
        },
        ValueRef::Blob(blob) => AnyValueKind::Blob(Arc::new(blob.to_vec())),
    })
}

fn kind_of(value: &AnyValueKind) -> AnyTypeInfoKind {
    match value {
        AnyValueKind::Null(kind) => *kind,
        AnyValueKind::BigInt(_) => AnyTypeInfoKind::BigInt,
        AnyValueKind::Double(_) => AnyTypeInfoKind::Double,
        AnyValueKind::Blob(_) => AnyTypeInfoKind::Blob,
        _ => AnyTypeInfoKind::Text,
    }
}

/// Binds arguments as sqlx's SQLite driver does: `$N` and `?N` name the Nth argument, a
/// bare `?` takes the next one, counting across the statements of one request.
struct Binder<'a> {
    values: &'a [AnyValueKind],
    next: usize,
}

impl<'a> Binder<'a> {
    fn new(values: &'a [AnyValueKind]) -> Self {
        Self { values, next: 0 }
    }

    fn bind(&mut self, statement: &mut rusqlite::Statement<'_>) -> Result<(), sqlx::Error> {
        for parameter in 1..=statement.parameter_count() {
            let index = match statement.parameter_name(parameter).and_then(numbered) {
                Some(number) => number - 1,
                None => {
                    self.next += 1;
                    self.next - 1
                }
            };
            let value = self.values.get(index).ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "the statement asks for argument {} but {} were given",
                    index + 1,
                    self.values.len()
                ))
            })?;
            statement.raw_bind_parameter(parameter, sql_value(value)?).map_err(SqliteError::wrap)?;
        }
        Ok(())
    }
}

/// The number in a parameter named `$3` or `?3`.
fn numbered(name: &str) -> Option<usize> {
    name.strip_prefix(['$', '?']).and_then(|number| number.parse().ok()).filter(|number| *number > 0)
}

fn sql_value(value: &AnyValueKind) -> Result<ToSqlOutput<'_>, sqlx::Error> {
    use rusqlite::types::Value;
    Ok(match value {
        AnyValueKind::Null(_) => ToSqlOutput::Owned(Value::Null),
        AnyValueKind::Bool(boolean) => ToSqlOutput::Owned(Value::Integer(i64::from(*boolean))),
        AnyValueKind::SmallInt(integer) => ToSqlOutput::Owned(Value::Integer(i64::from(*integer))),
        AnyValueKind::Integer(integer) => ToSqlOutput::Owned(Value::Integer(i64::from(*integer))),
        AnyValueKind::BigInt(integer) => ToSqlOutput::Owned(Value::Integer(*integer)),
        AnyValueKind::Real(real) => ToSqlOutput::Owned(Value::Real(f64::from(*real))),
        AnyValueKind::Double(real) => ToSqlOutput::Owned(Value::Real(*real)),
        AnyValueKind::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        AnyValueKind::TextSlice(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        AnyValueKind::Blob(blob) => ToSqlOutput::Borrowed(ValueRef::Blob(blob)),
        other => return Err(sqlx::Error::Protocol(format!("cannot bind {other:?} on SQLite"))),
    })
}
