//! The components of the central service. Each has one job, reads the event
//! log from its own committed offset (or, for ingest, is the one producer),
//! and runs under the [`crate::supervisor`].
//!
//! | component | stage | reads | writes |
//! |---|---|---|---|
//! | `ingest` | ingest | agents (gRPC) | `events` topic |
//! | `detector` | detect | `events`, `control` topics | `alerts` topic, checkpoint |
//! | `history-events`, `history-alerts`, `history-audit` | output | a topic | Parquet tables |
//! | `admin` (in [`crate::admin`]) | ingest | `<data_dir>/admin.sock` | `control` topic |
//! | `output-<name>` | output | `alerts` topic | a receiver (stdout, file, ...) |
//! | `sql` | ingest | analysts (Postgres wire), the history's files | nothing |

pub mod detector;
pub mod history;
pub mod ingest;
pub mod sql;
