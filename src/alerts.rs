//! `otwatch alerts`: list alerts with their latest state and the
//! suppressions (from the history, with SQL), and ack, resolve, suppress
//! them or lift a suppression (through the admin socket of the running
//! service, like `otwatch model`).

use clap::Subcommand;
use otwatch_runtime::admin::alerts::{SuppressionRecord, MAX_SUPPRESSION_SECS};
use otwatch_runtime::admin::Request;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum AlertsAction {
    /// The alerts in the history, each with its latest state (open, acked,
    /// resolved, suppressed), who set it, when, and the comment; oldest
    /// first.
    List {
        /// Data directory of `otwatch serve` or `otwatch demo`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Only alerts neither resolved nor suppressed.
        #[arg(long)]
        open: bool,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only alerts raised since TIME: RFC 3339, `YYYY-MM-DD HH:MM:SS`
        /// UTC, Unix seconds, or a span back from now (`24h`, `7days`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Output format: table, csv or json (one object per line).
        #[arg(long, default_value = "table")]
        format: otwatch_history::OutputFormat,
    },
    /// Take an alert: its state becomes `acked`; the outputs send the update.
    Ack {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// The alert's id (`otwatch alerts list`).
        id: String,
        /// Why, or what is being done; kept with the state and the audit.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Close an alert: its state becomes `resolved`; the outputs send the
    /// update.
    Resolve {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// The alert's id (`otwatch alerts list`).
        id: String,
        /// How it was resolved; kept with the state and the audit.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// For a while from now, store the new alerts of a site (or one asset,
    /// or one detector of it) as `suppressed` and send none of them.
    Suppress {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        #[arg(long)]
        site: String,
        /// Only this asset.
        #[arg(long)]
        asset: Option<String>,
        /// Only this detector (cycle, cadence, sequence, process, discrete,
        /// access).
        #[arg(long)]
        detector: Option<String>,
        /// How long: `2h`, `30m`, `1day` (at most 31 days).
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Why (maintenance window, known work, ...); goes into the audit.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// The suppressions in force (with `--all`, also those over or
    /// lifted): id, site, asset, detector, window, who set it and why.
    Suppressions {
        /// Data directory of `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Also the suppressions that are over or were lifted.
        #[arg(long)]
        all: bool,
        /// Output format: table, csv or json (one object per line).
        #[arg(long, default_value = "table")]
        format: otwatch_history::OutputFormat,
    },
    /// End a suppression now, before its time: alerts of events from now
    /// on are sent again (those already suppressed stay so).
    Unsuppress {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// The suppression's id (`otwatch alerts suppressions`).
        id: String,
        /// Why it ends early; goes into the audit.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Add a comment to an alert without changing its state; it is kept
    /// in the audit (`otwatch sql "SELECT ts, user, args FROM audit WHERE
    /// command = 'alert.comment'"`) and shown on the alert's dashboard page.
    Comment {
        /// Data directory of the running `otwatch serve`.
        #[arg(long, value_name = "DIR", default_value = "otwatch-data")]
        data_dir: PathBuf,
        /// The alert's id (`otwatch alerts list`).
        id: String,
        /// The comment.
        #[arg(long, value_name = "TEXT")]
        text: String,
    },
}

/// `--since`: a time, or a span back from now.
fn since_ns(since: &str) -> anyhow::Result<i64> {
    if let Ok(span) = humantime::parse_duration(since) {
        let now = chrono::Utc::now();
        let back = chrono::Duration::from_std(span)
            .map_err(|_| anyhow::anyhow!("--since {since:?} is too far back"))?;
        return (now - back)
            .timestamp_nanos_opt()
            .ok_or_else(|| anyhow::anyhow!("--since {since:?} is too far back"));
    }
    otwatch_eval::parse_time(since)
        .map_err(|e| anyhow::anyhow!("--since: {e:#}; or a span back from now such as 24h"))
}

/// The query of `otwatch alerts list`: the latest row of each alert id
/// (greatest `coalesce(state_at, ts)`; a null state, from history written
/// before alert states, is `open`).
pub fn list_query(open: bool, site: Option<&str>, since_ns: Option<i64>) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut filters = Vec::new();
    if let Some(site) = site {
        filters.push(format!("site = {}", quote(site)));
    }
    if let Some(since) = since_ns {
        filters.push(format!("ts >= to_timestamp_nanos({since})"));
    }
    if filters.is_empty() {
        filters.push("TRUE".into());
    }
    let open = if open {
        "AND state NOT IN ('resolved', 'suppressed')"
    } else {
        ""
    };
    format!(
        "SELECT id, ts, site, asset, detector, severity, state, state_by, state_at, comment, message FROM ({}) \
         WHERE TRUE {open} ORDER BY ts, id",
        otwatch_runtime::admin::alerts::latest_alerts_sql(&filters.join(" AND "))
    )
}

async fn list(
    data_dir: &Path,
    open: bool,
    site: Option<String>,
    since: Option<String>,
    format: otwatch_history::OutputFormat,
) -> anyhow::Result<()> {
    let history = crate::existing_history(data_dir)?;
    let since = since.as_deref().map(since_ns).transpose()?;
    let sql = list_query(open, site.as_deref(), since);
    let mut stream =
        otwatch_history::query_stream(&history, &sql, &otwatch_history::SqlConfig::default())
            .await?;
    let mut out = otwatch_history::BatchWriter::new(std::io::stdout().lock(), format);
    while let Some(batch) = stream.next_batch().await {
        out.write(&batch?)?;
    }
    drop(out.finish()?);
    Ok(())
}

/// The suppressions as a table: one row each, oldest first.
pub fn suppressions_batch(
    records: &[SuppressionRecord],
    now_ns: i64,
) -> anyhow::Result<arrow::array::RecordBatch> {
    use arrow::array::{ArrayRef, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let text = |f: &dyn Fn(&SuppressionRecord) -> Option<String>| -> ArrayRef {
        Arc::new(records.iter().map(f).collect::<StringArray>())
    };
    let time = |f: &dyn Fn(&SuppressionRecord) -> Option<i64>| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(f)
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let ts = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("asset", DataType::Utf8, false),
        Field::new("detector", DataType::Utf8, false),
        Field::new("from", ts(), false),
        Field::new("until", ts(), false),
        Field::new("set_by", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("lifted_by", DataType::Utf8, true),
        Field::new("lift_reason", DataType::Utf8, true),
    ]);
    let columns = vec![
        text(&|r| Some(r.suppression.id.clone())),
        text(&|r| Some(r.status(now_ns).to_string())),
        text(&|r| Some(r.suppression.site.clone())),
        text(&|r| Some(r.suppression.asset.clone().unwrap_or_else(|| "*".into()))),
        text(&|r| Some(r.suppression.detector.clone().unwrap_or_else(|| "*".into()))),
        time(&|r| Some(r.suppression.from_ns)),
        time(&|r| Some(r.suppression.until_ns)),
        text(&|r| Some(r.suppression.by.clone())),
        text(&|r| Some(r.suppression.reason.clone())),
        text(&|r| r.lifted.as_ref().map(|(_, by, _)| by.clone())),
        text(&|r| r.lifted.as_ref().map(|(_, _, why)| why.clone())),
    ];
    Ok(arrow::array::RecordBatch::try_new(
        Arc::new(schema),
        columns,
    )?)
}

async fn list_suppressions(
    data_dir: &Path,
    site: Option<String>,
    all: bool,
    format: otwatch_history::OutputFormat,
) -> anyhow::Result<()> {
    let history = crate::existing_history(data_dir)?;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    let mut records = otwatch_runtime::admin::alerts::suppressions(&history)
        .await
        .map_err(anyhow::Error::msg)?;
    records.retain(|r| {
        site.as_ref().is_none_or(|s| *s == r.suppression.site)
            && (all || r.status(now) == "in force")
    });
    let mut out = otwatch_history::BatchWriter::new(std::io::stdout().lock(), format);
    out.write(&suppressions_batch(&records, now)?)?;
    drop(out.finish()?);
    Ok(())
}

pub async fn run(action: AlertsAction) -> anyhow::Result<()> {
    let (data_dir, request) = match action {
        AlertsAction::List {
            data_dir,
            open,
            site,
            since,
            format,
        } => return list(&data_dir, open, site, since, format).await,
        AlertsAction::Suppressions {
            data_dir,
            site,
            all,
            format,
        } => return list_suppressions(&data_dir, site, all, format).await,
        AlertsAction::Unsuppress {
            data_dir,
            id,
            reason,
        } => (data_dir, Request::AlertUnsuppress { id, reason }),
        AlertsAction::Comment { data_dir, id, text } => (
            data_dir,
            Request::AlertComment {
                alert_id: id,
                comment: text,
            },
        ),
        AlertsAction::Ack {
            data_dir,
            id,
            comment,
        } => (
            data_dir,
            Request::AlertAck {
                alert_id: id,
                comment,
            },
        ),
        AlertsAction::Resolve {
            data_dir,
            id,
            comment,
        } => (
            data_dir,
            Request::AlertResolve {
                alert_id: id,
                comment,
            },
        ),
        AlertsAction::Suppress {
            data_dir,
            site,
            asset,
            detector,
            duration,
            reason,
        } => {
            // Rounded up, so that `--for 500ms` is not refused as zero.
            let for_secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
            anyhow::ensure!(
                for_secs <= MAX_SUPPRESSION_SECS,
                "--for {} is longer than the longest suppression ({} days)",
                humantime::format_duration(duration),
                MAX_SUPPRESSION_SECS / 86_400
            );
            (
                data_dir,
                Request::AlertSuppress {
                    site,
                    asset,
                    detector,
                    for_secs,
                    reason,
                },
            )
        }
    };
    let suppress = matches!(request, Request::AlertSuppress { .. });
    let answer = crate::ask_admin(&data_dir, &request).await?;
    let id = answer.id.unwrap_or_default();
    println!(
        "{} (control record {id})",
        answer.detail.unwrap_or_default()
    );
    if suppress {
        println!("`otwatch alerts unsuppress {id} --reason TEXT` ends it early");
    }
    Ok(())
}
