//! The tables of the history and their schemas. The schemas themselves are
//! owned by `otwatch-proto` (they are the event log's schemas too); this
//! module only names them.

use arrow::datatypes::SchemaRef;
use otwatch_proto::arrow::{alerts_schema, control_schema, events_schema};

/// A table of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Controller events, one row per `ControllerEvent`.
    Events,
    /// Alerts raised by the detector.
    Alerts,
    /// The SOC's decisions (the `control` topic of the event log): who
    /// accepted which alert, relearned which asset, when and from where; a
    /// hash chain (see `otwatch_proto::arrow::control_schema`).
    Audit,
}

impl Table {
    /// Every table, in registration order.
    pub const ALL: [Table; 3] = [Table::Events, Table::Alerts, Table::Audit];

    /// The SQL name of the table, which is also its directory under the root.
    pub fn name(self) -> &'static str {
        match self {
            Table::Events => "events",
            Table::Alerts => "alerts",
            Table::Audit => "audit",
        }
    }

    /// The Arrow schema of the table's files (without the partition columns).
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Events => events_schema(),
            Table::Alerts => alerts_schema(),
            Table::Audit => control_schema(),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
