//! What a logged-in client's statements do, over the simple and the
//! extended query protocol.
//!
//! Statements are parsed with datafusion-postgres's PostgreSQL
//! compatibility parser (which rewrites the catalog queries of psql,
//! Grafana and DBeaver into ones DataFusion plans), then:
//!
//! | statement | outcome |
//! |---|---|
//! | `SELECT`, `WITH`, `VALUES`, `EXPLAIN` | planned; the plan must pass [`otwatch_history::read_only`] (no DDL, DML or engine statements: `SELECT … INTO`, `EXPLAIN CREATE …` are refused too) and, for a user limited to sites, name no other site ([`check_sites`]); then run under the limits below |
//! | `BEGIN`, `COMMIT`, `ROLLBACK` | accepted (nothing is ever written, so there is nothing to commit) |
//! | `SHOW …`; `SET` of `statement_timeout`, `TimeZone`, `DateStyle`, `IntervalStyle`, `application_name`, `extra_float_digits`, `search_path`, `bytea_output` | the connection's own client settings |
//! | anything else (`COPY`, `CREATE`, `INSERT`, `DROP`, other `SET`s, cursors, …) | refused: `25006 cannot execute … : the otwatch SQL endpoint is read-only` |
//!
//! # Limits and errors
//!
//! Every query runs until its last row is sent under:
//!
//! - a deadline of `sql.query_timeout` (or the client's shorter
//!   `statement_timeout`): past it the plan is dropped, which stops its
//!   work, and the client gets `57014`;
//! - the client's cancel request (psql's Ctrl-C): the same, `57014`;
//! - `sql.max_rows`: a query with more rows fails with `54000` after the
//!   cap instead of arriving cut (a count or a graph that is silently
//!   short is the one answer an analyst cannot detect);
//! - the endpoint's memory pool (`sql.memory_limit`), shared by all
//!   connections: `53200` names the limit.
//!
//! A committed history file that is missing or damaged fails the query
//! with `XX001` and the history's message naming the file. Errors are
//! answers to the client; the service goes on.

use crate::session::{check_sites, ConnSession};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire;
use futures::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Client settings a `SET` may change (each kept per connection by
/// datafusion-postgres's `SetShowHook`); `TimeZone` is `SET TIME ZONE`.
const CLIENT_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
    "bytea_output",
];

/// Where datafusion-postgres keeps a client's `statement_timeout`.
const STATEMENT_TIMEOUT_KEY: &str = "statement_timeout_ms";

/// The limits every query runs under.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub query_timeout: Duration,
    pub max_rows: u64,
    pub memory_limit: u64,
}

/// A client error with its SQLSTATE.
pub(crate) fn sql_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// A statement after the extended protocol's Parse.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A query, planned and checked; parameters are bound at Execute.
    Query(LogicalPlan),
    /// A statement answered by the connection's settings (`SET`, `SHOW`,
    /// `BEGIN`, …), with the plan whose schema Describe reports.
    Session(Box<Statement>, LogicalPlan),
}

/// The query handlers, shared by every connection; each statement finds
/// its connection's session in the client's session extensions.
pub(crate) struct Queries {
    limits: Limits,
    parser: Arc<QueryParserImpl>,
}

/// The Parse step of the extended protocol.
pub(crate) struct QueryParserImpl {
    sql: PostgresCompatibilityParser,
}

/// What one statement is.
enum Kind {
    Query,
    Transaction,
    Setting,
}

impl Queries {
    pub fn new(limits: Limits) -> Queries {
        Queries {
            parser: Arc::new(QueryParserImpl {
                sql: PostgresCompatibilityParser::new(),
            }),
            limits,
        }
    }
}

fn session_of<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<ConnSession>> {
    client
        .session_extensions()
        .get::<ConnSession>()
        .ok_or_else(|| sql_error("28000", "not logged in"))
}

/// Sorts a statement into what runs here, or refuses it.
fn classify(statement: &Statement) -> PgWireResult<Kind> {
    match statement {
        Statement::Query(_) | Statement::Explain { .. } => Ok(Kind::Query),
        Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => {
            Ok(Kind::Transaction)
        }
        Statement::ShowVariable { .. } => Ok(Kind::Setting),
        Statement::Set(set) => match set {
            Set::SingleAssignment {
                scope: None,
                hivevar: false,
                variable,
                values,
            } if values.len() == 1
                && CLIENT_SETTINGS.contains(&variable.to_string().to_lowercase().as_str()) =>
            {
                Ok(Kind::Setting)
            }
            Set::SetTimeZone { local: false, .. } => Ok(Kind::Setting),
            _ => Err(sql_error(
                "25006",
                format!(
                    "cannot execute {statement}: the otwatch SQL endpoint only takes SET of the client settings {} and TIME ZONE",
                    CLIENT_SETTINGS.join(", ")
                ),
            )),
        },
        other => Err(read_only_refusal(&first_word(&other.to_string()))),
    }
}

fn first_word(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_uppercase()
}

fn read_only_refusal(what: &str) -> PgWireError {
    sql_error(
        "25006",
        format!(
            "cannot execute {what}: the otwatch SQL endpoint is read-only (SELECT, WITH, EXPLAIN and SHOW run here; COPY, CREATE, INSERT and other writes do not)"
        ),
    )
}

/// Plans a query and checks that it only reads.
async fn plan_query(ctx: &SessionContext, statement: Statement) -> PgWireResult<LogicalPlan> {
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
        .await
        .map_err(|e| planning_error(&e))?;
    if otwatch_history::read_only().verify_plan(&plan).is_err() {
        return Err(read_only_refusal(&first_word(&statement.to_string())));
    }
    Ok(plan)
}

/// Refuses a plan that names a site the user may not read.
fn check_access(session: &ConnSession, plan: &LogicalPlan) -> PgWireResult<()> {
    let Some(sites) = &session.access.sites else {
        return Ok(());
    };
    match check_sites(plan, sites) {
        None => Ok(()),
        Some(other) => {
            tracing::warn!(
                user = %session.access.user,
                peer = %session.peer,
                site = %other,
                "SQL query refused: it names a site the user may not read"
            );
            Err(sql_error(
                "42501",
                format!(
                    "user {:?} may read sites {} only; {other:?} is not one of them",
                    &*session.access.user,
                    sites.join(", ")
                ),
            ))
        }
    }
}

fn planning_error(e: &DataFusionError) -> PgWireError {
    let code = match e.find_root() {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        _ => "XX000",
    };
    sql_error(code, e.to_string())
}

impl Limits {
    /// Maps an error from running a query to what the client is told.
    fn execution_error(&self, e: DataFusionError) -> PgWireError {
        let chain = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
        for cause in chain {
            if let Some(problem) = cause.downcast_ref::<otwatch_history::IntegrityError>() {
                return sql_error("XX001", problem.to_string());
            }
        }
        if let DataFusionError::ResourcesExhausted(detail) = e.find_root() {
            let detail = detail.trim().lines().last().unwrap_or_default().to_string();
            return sql_error(
                "53200",
                format!(
                    "query needs more memory than sql.memory_limit = {} allows, shared by all connections ({detail}); add date/hour filters or aggregate more",
                    human_bytes(self.memory_limit)
                ),
            );
        }
        planning_error(&e)
    }

    /// Runs `plan` and returns its rows as they come, within the limits
    /// of the module documentation.
    async fn run(
        &self,
        session: &ConnSession,
        plan: LogicalPlan,
        format: &Format,
        client_settings: &std::collections::HashMap<String, String>,
    ) -> PgWireResult<QueryResponse> {
        let client_timeout = client_settings
            .get(STATEMENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .filter(|t| *t < self.query_timeout);
        let mut guard = Guard {
            deadline: Instant::now() + client_timeout.unwrap_or(self.query_timeout),
            timeout_message: match client_timeout {
                Some(_) => "canceling statement due to statement timeout".to_string(),
                None => format!(
                    "canceling statement: it ran longer than sql.query_timeout = {}; add date/hour filters to read less",
                    humantime_duration(self.query_timeout)
                ),
            },
            cancel: {
                let mut cancel = session.cancel.clone();
                cancel.borrow_and_update();
                cancel
            },
        };
        let fields = Arc::new(arrow_schema_to_pg_fields(
            plan.schema().as_arrow(),
            format,
            Some(Arc::new(FormatOptions::from_client_metadata(
                client_settings,
            ))),
        )?);
        let max_rows = self.max_rows;
        let ctx = session.ctx.clone();
        let started = guard
            .within(async {
                let frame = ctx.execute_logical_plan(plan).await?;
                // One row more than the cap tells that the cap was passed;
                // the rest is never computed.
                let fetch = usize::try_from(max_rows.saturating_add(1)).unwrap_or(usize::MAX);
                frame.limit(0, Some(fetch))?.execute_stream().await
            })
            .await;
        let stream = match started {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.execution_error(e)),
            Err(stopped) => return Err(stopped),
        };
        let state = Rows {
            stream,
            guard,
            limits: self.clone(),
            rows: 0,
            done: false,
        };
        let batches = futures::stream::unfold(state, Rows::next);
        let rows_fields = fields.clone();
        let rows = batches
            .map(move |batch| -> Box<dyn Iterator<Item = _> + Send + Sync> {
                match batch {
                    Ok(batch) => encode_recordbatch(rows_fields.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            })
            .flat_map(futures::stream::iter);
        Ok(QueryResponse::new(fields, rows))
    }
}

/// The deadline and the cancel signal of one statement.
struct Guard {
    deadline: Instant,
    timeout_message: String,
    cancel: watch::Receiver<u64>,
}

impl Guard {
    /// Runs `work` unless the deadline passes or the client cancels first;
    /// then `work` is dropped, which stops it.
    async fn within<T>(&mut self, work: impl std::future::Future<Output = T>) -> PgWireResult<T> {
        let Guard {
            deadline,
            timeout_message,
            cancel,
        } = self;
        let cancelled = async {
            if cancel.changed().await.is_err() {
                // The connection is going away; its task ends the work.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            _ = cancelled => Err(sql_error("57014", "canceling statement due to user request")),
            _ = tokio::time::sleep_until(*deadline) => Err(sql_error("57014", timeout_message.clone())),
            out = work => Ok(out),
        }
    }
}

/// The batches of a running query, checked against the limits.
struct Rows {
    stream: SendableRecordBatchStream,
    guard: Guard,
    limits: Limits,
    rows: u64,
    done: bool,
}

impl Rows {
    async fn next(
        mut self,
    ) -> Option<(
        PgWireResult<datafusion::arrow::record_batch::RecordBatch>,
        Rows,
    )> {
        if self.done {
            return None;
        }
        let next = {
            let stream = &mut self.stream;
            self.guard.within(stream.next()).await
        };
        let item = match next {
            Err(stopped) => Err(stopped),
            Ok(None) => return None,
            Ok(Some(Err(e))) => Err(self.limits.execution_error(e)),
            Ok(Some(Ok(batch))) => {
                self.rows += batch.num_rows() as u64;
                if self.rows > self.limits.max_rows {
                    Err(sql_error(
                        "54000",
                        format!(
                            "the result has more than sql.max_rows = {} rows: add a LIMIT, or narrow or aggregate the query",
                            self.limits.max_rows
                        ),
                    ))
                } else {
                    return Some((Ok(batch), self));
                }
            }
        };
        // After an error the plan is dropped at once: its work stops.
        self.done = true;
        self.stream = Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(
            self.stream.schema(),
        ));
        Some((item, self))
    }
}

fn human_bytes(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

fn humantime_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// Parameter types of a plan, in `$1, $2, …` order (`UNKNOWN` where
/// DataFusion cannot tell).
fn parameter_types(plan: &LogicalPlan) -> PgWireResult<Vec<(usize, Option<DataType>)>> {
    let types = plan.get_parameter_types().map_err(|e| planning_error(&e))?;
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(id, t)| Some((id.strip_prefix('$')?.parse().ok()?, t)))
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    Ok(ordered)
}

#[async_trait::async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let statements = self
            .parser
            .sql
            .parse(query)
            .map_err(|e| sql_error("42601", e.to_string()))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::new();
        for statement in statements {
            match self.simple(client, &session, statement).await {
                Ok(response) => responses.push(response),
                Err(e) => {
                    // Like PostgreSQL: what ran is answered, the failed
                    // statement is the error, the rest does not run.
                    responses.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

impl Queries {
    async fn simple<C>(
        &self,
        client: &mut C,
        session: &ConnSession,
        statement: Statement,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let kind = classify(&statement)?;
        let hook_client: &mut dyn HookClient = client;
        // Transaction statements, and anything inside a failed transaction
        // (which is refused until ROLLBACK), are the transaction hook's.
        if let Some(response) = TransactionStatementHook
            .handle_simple_query(&statement, &session.ctx, hook_client)
            .await
        {
            return response;
        }
        match kind {
            Kind::Setting => SetShowHook
                .handle_simple_query(&statement, &session.ctx, hook_client)
                .await
                .unwrap_or_else(|| Err(read_only_refusal(&first_word(&statement.to_string())))),
            Kind::Transaction => Err(read_only_refusal(&first_word(&statement.to_string()))),
            Kind::Query => {
                let plan = plan_query(&session.ctx, statement).await?;
                check_access(session, &plan)?;
                let settings = hook_client.metadata().clone();
                self.limits
                    .run(session, plan, &Format::UnifiedText, &settings)
                    .await
                    .map(Response::Query)
            }
        }
    }
}

#[async_trait::async_trait]
impl QueryParser for QueryParserImpl {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        let mut statements = self
            .sql
            .parse(sql)
            .map_err(|e| sql_error("42601", e.to_string()))?;
        if statements.len() > 1 {
            return Err(sql_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let client_info: &(dyn ClientInfo + Send + Sync) = client;
        match classify(&statement)? {
            Kind::Query => {
                let plan = plan_query(&session.ctx, statement).await?;
                Ok(Some(Prepared::Query(plan)))
            }
            Kind::Transaction | Kind::Setting => {
                for hook in [&TransactionStatementHook as &dyn QueryHook, &SetShowHook] {
                    if let Some(plan) = hook
                        .handle_extended_parse_query(&statement, &session.ctx, client_info)
                        .await
                    {
                        return Ok(Some(Prepared::Session(Box::new(statement), plan?)));
                    }
                }
                Err(read_only_refusal(&first_word(&statement.to_string())))
            }
        }
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        match statement {
            Prepared::Query(plan) => parameter_types(plan)?
                .into_iter()
                .map(|(_, t)| match t {
                    Some(t) => into_pg_type(&t),
                    None => Ok(Type::UNKNOWN),
                })
                .collect(),
            Prepared::Session(..) => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let plan = match statement {
            Prepared::Query(plan) | Prepared::Session(_, plan) => plan,
        };
        arrow_schema_to_pg_fields(
            plan.schema().as_arrow(),
            format.unwrap_or(&Format::UnifiedText),
            None,
        )
    }
}

#[async_trait::async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Prepared;
    type QueryParser = QueryParserImpl;

    fn query_parser(&self) -> Arc<QueryParserImpl> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let hook_client: &mut dyn HookClient = client;
        match &portal.statement.statement {
            Prepared::Session(statement, plan) => {
                for hook in [&TransactionStatementHook as &dyn QueryHook, &SetShowHook] {
                    if let Some(response) = hook
                        .handle_extended_query(
                            statement,
                            plan,
                            &ParamValues::List(Vec::new()),
                            &session.ctx,
                            hook_client,
                        )
                        .await
                    {
                        return response;
                    }
                }
                Err(read_only_refusal(&first_word(&statement.to_string())))
            }
            Prepared::Query(plan) => {
                if hook_client.transaction_status()
                    == pgwire::messages::response::TransactionStatus::Error
                {
                    return Err(sql_error(
                        "25P02",
                        "current transaction is aborted, commands ignored until end of transaction block",
                    ));
                }
                let types = parameter_types(plan)?;
                let inferred: Vec<Option<&DataType>> =
                    types.iter().map(|(_, t)| t.as_ref()).collect();
                let values = deserialize_parameters(portal, &inferred)?;
                let plan = plan
                    .clone()
                    .replace_params_with_values(&values)
                    .map_err(|e| planning_error(&e))?;
                check_access(&session, &plan)?;
                let settings = hook_client.metadata().clone();
                self.limits
                    .run(&session, plan, &portal.result_column_format, &settings)
                    .await
                    .map(Response::Query)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn kind(sql: &str) -> Result<&'static str, String> {
        let statement = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_statement()
            .unwrap();
        match classify(&statement) {
            Ok(Kind::Query) => Ok("query"),
            Ok(Kind::Transaction) => Ok("transaction"),
            Ok(Kind::Setting) => Ok("setting"),
            Err(e) => Err(ErrorInfo::from(e).message),
        }
    }

    #[test]
    fn only_reads_and_client_settings_are_taken() {
        assert_eq!(kind("SELECT 1"), Ok("query"));
        assert_eq!(kind("WITH a AS (SELECT 1) SELECT * FROM a"), Ok("query"));
        assert_eq!(kind("EXPLAIN SELECT 1"), Ok("query"));
        assert_eq!(kind("BEGIN"), Ok("transaction"));
        assert_eq!(kind("SET statement_timeout = '5s'"), Ok("setting"));
        assert_eq!(kind("SET TIME ZONE 'UTC'"), Ok("setting"));
        assert_eq!(kind("SHOW TimeZone"), Ok("setting"));
        for (sql, word) in [
            ("COPY events TO STDOUT", "COPY"),
            ("CREATE TABLE t (a INT)", "CREATE"),
            ("INSERT INTO events VALUES (1)", "INSERT"),
            ("DROP TABLE events", "DROP"),
            ("DECLARE c CURSOR FOR SELECT 1", "DECLARE"),
        ] {
            let err = kind(sql).unwrap_err();
            assert!(
                err.contains(&format!("cannot execute {word}")),
                "{sql}: {err}"
            );
            assert!(err.contains("read-only"), "{sql}: {err}");
        }
        let err = kind("SET datafusion.runtime.memory_limit = '100G'").unwrap_err();
        assert!(
            err.contains("only takes SET of the client settings"),
            "{err}"
        );
        assert!(kind("SET LOCAL statement_timeout = '1s'").is_err());
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 29), "1536.0 MiB");
        assert_eq!(human_bytes(512), "512 bytes");
    }
}
