//! One connection's SQL session: its own DataFusion context over the
//! endpoint's shared history session.
//!
//! The endpoint opens the history once ([`otwatch_history::session_with`]:
//! committed files only, the memory pool and spill limits of `[sql]`).
//! Each logged-in connection gets a context of its own that shares that
//! session's runtime (so all connections together stay within
//! `memory_limit` and `max_spill_bytes`) and its table providers, plus the
//! `pg_catalog` schema and functions that psql, Grafana and DBeaver query.
//! Nothing a connection does reaches another's context.
//!
//! # Sites
//!
//! For a user limited to some sites, every table (`events`, `alerts` and
//! `audit`, each with a `site` column) is registered as the history's table behind a filter `site IN (<the user's sites>)`.
//! The user's SQL only ever names the filtered table: DataFusion inlines it
//! into every plan under the filter (`LogicalPlanBuilder::scan`), predicates
//! the user adds are ANDed to it, and statements that could reach the files
//! another way (`CREATE EXTERNAL TABLE`, URL tables) are refused or not
//! enabled. [`check_sites`] also refuses a query that names another site in
//! `site = '…'` or `site IN (…)`, so an analyst is told instead of getting
//! an empty result that looks like a quiet plant.

use crate::users::Access;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::{provider_as_source, TableType, ViewTable};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{col, lit, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use otwatch_history::Table;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The site column every history table has.
const SITE: &str = "site";

/// What the query handlers need of a logged-in connection; kept in the
/// connection's session extensions.
pub(crate) struct ConnSession {
    pub access: Access,
    pub peer: SocketAddr,
    pub ctx: SessionContext,
    /// Changes when the client asks to cancel its running statement.
    pub cancel: watch::Receiver<u64>,
    /// Unregisters the connection from cancel requests when it ends.
    pub _cancel_guard: crate::server::CancelGuard,
}

/// A context for one connection of `access`, over `base` (the endpoint's
/// history session).
pub(crate) async fn connection_context(
    base: &SessionContext,
    access: &Access,
) -> DfResult<SessionContext> {
    let ctx = SessionContext::new_with_config_rt(base.copied_config(), base.runtime_env());
    for table in Table::ALL {
        let name = table.name();
        let provider = base.table_provider(name).await?;
        let provider = match &access.sites {
            None => provider,
            Some(sites) => Arc::new(SiteRows::new(name, provider, sites)?),
        };
        ctx.register_table(name, provider)?;
    }
    let catalog = ctx
        .copied_config()
        .options()
        .catalog
        .default_catalog
        .clone();
    setup_pg_catalog(&ctx, &catalog, EmptyContextProvider).map_err(|e| *e)?;
    Ok(ctx)
}

/// A table limited to some sites' rows: the history's table under a
/// `site IN (…)` filter, inlined into every plan that reads it. It
/// presents itself as a base table, as the unfiltered one does, so that
/// catalog queries (`\dt`, Grafana's table list) show it the same way.
#[derive(Debug)]
struct SiteRows {
    view: ViewTable,
}

impl SiteRows {
    fn new(name: &str, provider: Arc<dyn TableProvider>, sites: &[String]) -> DfResult<SiteRows> {
        let allowed = sites.iter().map(|s| lit(s.as_str())).collect();
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?
            .filter(col(SITE).in_list(allowed, false))?
            .build()?;
        Ok(SiteRows {
            view: ViewTable::new(plan, None),
        })
    }
}

#[async_trait::async_trait]
impl TableProvider for SiteRows {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.view.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Planning inlines this plan (the filter over the history's table) in
    /// place of the table.
    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.view.get_logical_plan()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.view.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.view.scan(state, projection, filters, limit).await
    }
}

/// The first site that `plan` asks for by name (`site = '…'`,
/// `site IN (…)`) although `sites` does not hold it.
pub(crate) fn check_sites(plan: &LogicalPlan, sites: &[String]) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            expr.apply(|e| {
                Ok(match other_site(e, sites) {
                    Some(other) => {
                        found = Some(other);
                        TreeNodeRecursion::Stop
                    }
                    None => TreeNodeRecursion::Continue,
                })
            })?;
            if found.is_some() {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A site that `expr` itself names (`site = '…'`, `site IN (…)`) and
/// `sites` does not hold.
fn other_site(expr: &Expr, sites: &[String]) -> Option<String> {
    let named: Vec<&str> = match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (site_column(left), site_column(right)) {
            (true, false) => string_literal(right).into_iter().collect(),
            (false, true) => string_literal(left).into_iter().collect(),
            _ => Vec::new(),
        },
        Expr::InList(list) if !list.negated && site_column(&list.expr) => {
            list.list.iter().filter_map(string_literal).collect()
        }
        _ => Vec::new(),
    };
    named
        .into_iter()
        .find(|s| !sites.iter().any(|a| a == s))
        .map(str::to_string)
}

fn site_column(expr: &Expr) -> bool {
    match expr {
        Expr::Column(c) => c.name == SITE,
        Expr::Cast(c) => site_column(&c.expr),
        Expr::TryCast(c) => site_column(&c.expr),
        _ => false,
    }
}

fn string_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(s),
            ScalarValue::Dictionary(_, inner) => match inner.as_ref() {
                ScalarValue::Utf8(Some(s)) => Some(s),
                _ => None,
            },
            _ => None,
        },
        Expr::Cast(c) => string_literal(&c.expr),
        Expr::TryCast(c) => string_literal(&c.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn plan(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    #[tokio::test]
    async fn another_site_named_in_a_query_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let base = otwatch_history::session(dir.path()).await.unwrap();
        let sites: Arc<[String]> = Arc::from(vec!["plant-lyon".to_string()]);
        let access = Access {
            user: Arc::from("lyon"),
            sites: Some(sites.clone()),
        };
        let ctx = connection_context(&base, &access).await.unwrap();
        let own = plan(
            &ctx,
            "SELECT count(*) FROM events WHERE site = 'plant-lyon'",
        )
        .await;
        assert_eq!(check_sites(&own, &sites), None);
        for sql in [
            "SELECT count(*) FROM events WHERE site = 'plant-porto'",
            "SELECT count(*) FROM events WHERE 'plant-porto' = site OR kind = 'CYCLE'",
            "SELECT * FROM alerts WHERE site IN ('plant-lyon', 'plant-porto')",
            "SELECT * FROM events e WHERE e.asset IN (SELECT asset FROM alerts WHERE site = 'plant-porto')",
        ] {
            assert_eq!(
                check_sites(&plan(&ctx, sql).await, &sites).as_deref(),
                Some("plant-porto"),
                "{sql}"
            );
        }
        // The filter is in every plan, whatever the query adds to it.
        let text = format!(
            "{}",
            plan(&ctx, "SELECT * FROM events WHERE true OR site <> ''")
                .await
                .display_indent()
        );
        assert!(text.contains("plant-lyon"), "{text}");
    }
}
