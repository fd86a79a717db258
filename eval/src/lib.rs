//! `otwatch eval`: scores the production detector on labelled recordings.
//!
//! Each CSV file is one asset. Its rows become `ControllerEvent`s (one
//! SAMPLE per tag column and row, the row's time as `ts`), are cut into
//! Arrow record batches exactly as the collector stores them, and go through
//! a [`Detector`] with the default configuration. The first rows (training)
//! are the asset's learning window; the label column never reaches the
//! detector. A test row counts as predicted anomalous while an episode of a
//! `process` alert covers it: from the alert's observation up to (not
//! including) the first observation back under the release limit, which the
//! detector reports through [`Detector::take_episode_ends`].
//!
//! Scores are pooled over files as in the SKAB protocol: TP, FP, FN and TN
//! summed, then F1 = TP / (TP + (FN + FP) / 2), FAR = FP / (FP + TN) and
//! MAR = FN / (FN + TP), no point adjustment.
//!
//! Beside otwatch, every run scores the same rows with the textbook plain
//! PCA T²+Q of [`baseline`], so a user sees on their own recordings whether
//! otwatch adds anything. `eval skab --every N` keeps every N-th row of each
//! file (the same process sampled N times more slowly, learning over the
//! same span): the detector should hold across sampling rates.
//!
//! No SOC acts during an evaluation: an episode that never ends (a
//! persistent deviation nobody accepts) flags every row to the end of its
//! file.

pub mod baseline;

use anyhow::{bail, ensure, Context};
use indicatif::{ProgressBar, ProgressStyle};
use otwatch_detector::{Detector, DetectorConfig};
use otwatch_proto::{ControllerEvent, EventKind};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Events per record batch fed to the detector.
const BATCH_EVENTS: usize = 2048;

/// The published SKAB leaderboard (outlier detection, test part): algorithm,
/// F1, FAR %, MAR %.
pub const SKAB_LEADERBOARD: [(&str, f64, f64, f64); 11] = [
    ("Conv-AE", 0.78, 13.55, 28.02),
    ("MSET", 0.78, 39.73, 14.13),
    ("T²+Q (PCA-based)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92),
    ("T²", 0.66, 19.21, 42.6),
    ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla LSTM", 0.54, 12.54, 59.53),
    ("Vanilla AE", 0.39, 2.59, 75.15),
    ("MSCRED", 0.36, 49.94, 69.88),
    ("Isolation forest", 0.29, 2.56, 82.89),
    ("Null detector", 0.0, 0.0, 100.0),
];

/// A labelled recording: timestamps, tag columns, labels.
#[derive(Debug, Clone)]
pub struct Recording {
    pub name: String,
    pub ts_ns: Vec<i64>,
    pub tags: Vec<String>,
    /// Per tag, one value per row (NaN where the cell is empty).
    pub values: Vec<Vec<f64>>,
    /// Per row; `None` for a recording without labels.
    pub labels: Option<Vec<bool>>,
}

/// How a CSV file is read.
#[derive(Debug, Clone)]
pub struct CsvFormat {
    pub time_col: String,
    /// `None`: the file has no labels (only its false-alarm rate is measured).
    pub label_col: Option<String>,
    /// Other columns that are not tags (e.g. a second label column).
    pub ignore: Vec<String>,
    pub sep: u8,
}

/// Where learning ends.
#[derive(Debug, Clone, Copy)]
pub enum Train {
    /// The first N rows learn.
    Rows(usize),
    /// Rows before this time learn.
    Until(i64),
}

/// Point-wise counts over test rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub tn: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.tp += o.tp;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.tn += o.tn;
    }
    pub fn f1(&self) -> f64 {
        let d = self.tp as f64 + (self.fn_ + self.fp) as f64 / 2.0;
        if d == 0.0 {
            0.0
        } else {
            self.tp as f64 / d
        }
    }
    /// False-alarm rate, percent.
    pub fn far(&self) -> f64 {
        pct(self.fp, self.fp + self.tn)
    }
    /// Missed-alarm rate, percent.
    pub fn mar(&self) -> f64 {
        pct(self.fn_, self.fn_ + self.tp)
    }
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// Episode-level figures over test rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Episodes {
    /// Labelled episodes (maximal runs of anomalous test rows).
    pub labelled: u64,
    /// Labelled episodes with at least one row covered by an alert episode.
    pub detected: u64,
    /// Seconds from each detected episode's start to its first covered row.
    pub delays_s: Vec<f64>,
    /// Alert episodes covering no labelled row.
    pub unmatched_alerts: u64,
    /// Alert episodes in all.
    pub alerts: u64,
}

impl Episodes {
    pub fn add(&mut self, o: &Episodes) {
        self.labelled += o.labelled;
        self.detected += o.detected;
        self.delays_s.extend_from_slice(&o.delays_s);
        self.unmatched_alerts += o.unmatched_alerts;
        self.alerts += o.alerts;
    }
    pub fn mean_delay(&self) -> Option<f64> {
        (!self.delays_s.is_empty())
            .then(|| self.delays_s.iter().sum::<f64>() / self.delays_s.len() as f64)
    }
    pub fn median_delay(&self) -> Option<f64> {
        if self.delays_s.is_empty() {
            return None;
        }
        let mut v = self.delays_s.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }
}

/// The result for one recording.
#[derive(Debug, Clone)]
pub struct FileResult {
    pub name: String,
    pub counts: Counts,
    pub episodes: Episodes,
    /// Predicted anomalous, per row (training rows are `false`).
    pub predicted: Vec<bool>,
    /// Alerts of the other models (not point-scored).
    pub other_alerts: u64,
    /// Messages of the process alerts, in order.
    pub messages: Vec<String>,
    /// The same rows scored by the plain PCA T²+Q ([`baseline`]).
    pub baseline: Counts,
}

/// Reads a CSV recording. Line endings may be LF or CRLF.
pub fn read_csv(path: &Path, format: &CsvFormat) -> anyhow::Result<Recording> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(format.sep)
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("cannot read the header of {}", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let find = |name: &str| -> anyhow::Result<usize> {
        header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column {name:?} (columns: {})",
                path.display(),
                header.join(", ")
            )
        })
    };
    let time = find(&format.time_col)?;
    let label = format.label_col.as_deref().map(find).transpose()?;
    for c in &format.ignore {
        find(c)?;
    }
    let tag_cols: Vec<usize> = (0..header.len())
        .filter(|&i| i != time && Some(i) != label && !format.ignore.contains(&header[i]))
        .collect();
    ensure!(
        !tag_cols.is_empty(),
        "{}: no tag columns besides time and label",
        path.display()
    );
    let mut rec = Recording {
        name: path.display().to_string(),
        ts_ns: Vec::new(),
        tags: tag_cols.iter().map(|&i| header[i].clone()).collect(),
        values: vec![Vec::new(); tag_cols.len()],
        labels: label.map(|_| Vec::new()),
    };
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: bad CSV", path.display()))?;
        let at = || format!("{} line {}", path.display(), line + 2);
        let t = parse_time(record.get(time).unwrap_or("")).with_context(at)?;
        if let Some(&prev) = rec.ts_ns.last() {
            ensure!(
                t > prev,
                "{}: time does not increase (rows with equal times would be one observation)",
                at()
            );
        }
        rec.ts_ns.push(t);
        for (k, &c) in tag_cols.iter().enumerate() {
            let cell = record.get(c).unwrap_or("");
            let v = if cell.is_empty() {
                f64::NAN
            } else {
                cell.parse::<f64>().with_context(|| {
                    format!(
                        "{}: column {:?} is not a number ({cell:?}); pass --ignore-col for columns that are not tags",
                        at(),
                        header[c]
                    )
                })?
            };
            rec.values[k].push(v);
        }
        if let (Some(l), Some(labels)) = (label, rec.labels.as_mut()) {
            let cell = record.get(l).unwrap_or("");
            let v: f64 = cell
                .parse()
                .with_context(|| format!("{}: label {cell:?} is not 0 or 1", at()))?;
            labels.push(v != 0.0);
        }
    }
    ensure!(!rec.ts_ns.is_empty(), "{}: no rows", path.display());
    Ok(rec)
}

/// Parses RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) or Unix seconds.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    let ns = |t: chrono::DateTime<chrono::Utc>| {
        t.timestamp_nanos_opt()
            .context("time out of range (years 1677..2262)")
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return ns(t.with_timezone(&chrono::Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return ns(t.and_utc());
        }
    }
    if let Ok(x) = s.parse::<f64>() {
        if x.is_finite() {
            return Ok((x * 1e9) as i64);
        }
    }
    bail!("cannot read time {s:?} (expected RFC 3339, YYYY-MM-DD HH:MM:SS or Unix seconds)")
}

/// Runs one recording through the detector and scores it.
pub fn run_recording(
    rec: &Recording,
    train: Train,
    config: &DetectorConfig,
    progress: &ProgressBar,
) -> anyhow::Result<FileResult> {
    let n = rec.ts_ns.len();
    let first_test = match train {
        Train::Rows(k) => k,
        Train::Until(t) => rec.ts_ns.partition_point(|&x| x < t),
    };
    ensure!(
        first_test >= 2 && first_test < n,
        "{}: {} training rows of {n}: need at least 2 and at least one test row",
        rec.name,
        first_test
    );
    // The asset learns until the first test row's time.
    let mut config = config.clone();
    let learn_ns = rec.ts_ns[first_test] - rec.ts_ns[0];
    config.learn = Duration::from_nanos(learn_ns as u64);
    config.validate()?;
    let mut detector = Detector::new(config)?;
    detector.record_episode_ends(true);
    let asset = Path::new(&rec.name)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| rec.name.clone());
    let (site, agent) = ("eval", "eval");
    let mut alerts = Vec::new();
    let mut ends = Vec::new();
    let mut events = Vec::with_capacity(BATCH_EVENTS + rec.tags.len());
    let mut seq = 0u64;
    let mut flush = |events: &mut Vec<ControllerEvent>, d: &mut Detector| -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let batch = otwatch_proto::arrow::events_to_batch(site, agent, events, 0)?;
        alerts.extend(d.process(&batch)?);
        ends.extend(d.take_episode_ends());
        events.clear();
        Ok(())
    };
    for row in 0..n {
        for (k, tag) in rec.tags.iter().enumerate() {
            let v = rec.values[k][row];
            if !v.is_finite() {
                continue;
            }
            seq += 1;
            events.push(ControllerEvent {
                seq,
                ts_ns: rec.ts_ns[row],
                asset: asset.clone(),
                kind: EventKind::Sample as i32,
                name: tag.clone(),
                value: Some(v),
                ..Default::default()
            });
        }
        if events.len() >= BATCH_EVENTS {
            flush(&mut events, &mut detector)?;
        }
        progress.inc(1);
    }
    flush(&mut events, &mut detector)?;
    // Alert episodes: [open, end) in event time, then in rows.
    let mut episodes: Vec<(usize, usize)> = Vec::new();
    let mut messages = Vec::new();
    let mut other_alerts = 0;
    for a in &alerts {
        if a.detector != "process" {
            other_alerts += 1;
            continue;
        }
        let end = ends
            .iter()
            .find(|e| e.alert_id == a.id)
            .map_or(i64::MAX, |e| e.ts_ns);
        let from = rec.ts_ns.partition_point(|&t| t < a.ts_ns).max(first_test);
        let to = rec.ts_ns.partition_point(|&t| t < end);
        episodes.push((from, to.max(from)));
        messages.push(a.message.clone());
    }
    let mut predicted = vec![false; n];
    for &(a, b) in &episodes {
        predicted[a..b].fill(true);
    }
    let (counts, ep) = score(rec, first_test, &predicted, &episodes);
    let baseline = baseline::predict(rec, first_test).unwrap_or_else(|| vec![false; n]);
    let (baseline, _) = score(rec, first_test, &baseline, &runs(&baseline));
    Ok(FileResult {
        name: rec.name.clone(),
        counts,
        episodes: ep,
        predicted,
        other_alerts,
        messages,
        baseline,
    })
}

/// The maximal runs of flagged rows, as `[from, to)`.
fn runs(predicted: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < predicted.len() {
        if predicted[i] {
            let from = i;
            while i < predicted.len() && predicted[i] {
                i += 1;
            }
            out.push((from, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Point-wise counts and episode figures of the test rows of `rec`, given
/// the rows flagged and the alert episodes (`[from, to)` rows) behind them.
fn score(
    rec: &Recording,
    first_test: usize,
    predicted: &[bool],
    episodes: &[(usize, usize)],
) -> (Counts, Episodes) {
    let n = rec.ts_ns.len();
    let mut counts = Counts::default();
    let mut ep = Episodes {
        alerts: episodes.len() as u64,
        ..Default::default()
    };
    let Some(labels) = &rec.labels else {
        for &p in &predicted[first_test..] {
            if p {
                counts.fp += 1;
            } else {
                counts.tn += 1;
            }
        }
        ep.unmatched_alerts = ep.alerts;
        return (counts, ep);
    };
    for i in first_test..n {
        match (predicted[i], labels[i]) {
            (true, true) => counts.tp += 1,
            (true, false) => counts.fp += 1,
            (false, true) => counts.fn_ += 1,
            (false, false) => counts.tn += 1,
        }
    }
    let mut i = first_test;
    while i < n {
        if !labels[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && labels[i] {
            i += 1;
        }
        ep.labelled += 1;
        if let Some(hit) = (start..i).find(|&j| predicted[j]) {
            ep.detected += 1;
            ep.delays_s
                .push((rec.ts_ns[hit] - rec.ts_ns[start]) as f64 / 1e9);
        }
    }
    for &(a, b) in episodes {
        if !(a..b).any(|j| labels[j]) {
            ep.unmatched_alerts += 1;
        }
    }
    (counts, ep)
}

/// A group of results (a folder, or everything).
#[derive(Debug, Clone, Default)]
pub struct Pooled {
    pub name: String,
    pub files: usize,
    pub counts: Counts,
    pub episodes: Episodes,
    /// The plain PCA T²+Q on the same rows ([`baseline`]).
    pub baseline: Counts,
}

impl Pooled {
    pub fn add(&mut self, r: &FileResult) {
        self.files += 1;
        self.baseline.add(&r.baseline);
        self.counts.add(&r.counts);
        self.episodes.add(&r.episodes);
    }

    /// The one-line JSON summary.
    pub fn json(&self, extra: &[(&str, serde_json::Value)]) -> String {
        let c = &self.counts;
        let e = &self.episodes;
        let round = |x: f64| (x * 1e4).round() / 1e4;
        let mut m = serde_json::Map::new();
        m.insert("f1".into(), round(c.f1()).into());
        m.insert("far".into(), round(c.far()).into());
        m.insert("mar".into(), round(c.mar()).into());
        m.insert("tp".into(), c.tp.into());
        m.insert("fp".into(), c.fp.into());
        m.insert("fn".into(), c.fn_.into());
        m.insert("tn".into(), c.tn.into());
        m.insert("files".into(), self.files.into());
        m.insert("episodes".into(), e.labelled.into());
        m.insert("episodes_detected".into(), e.detected.into());
        m.insert("delay_mean_s".into(), e.mean_delay().map(round).into());
        m.insert("delay_median_s".into(), e.median_delay().map(round).into());
        m.insert("alert_episodes".into(), e.alerts.into());
        m.insert("unmatched_alert_episodes".into(), e.unmatched_alerts.into());
        let b = &self.baseline;
        m.insert("baseline_f1".into(), round(b.f1()).into());
        m.insert("baseline_far".into(), round(b.far()).into());
        m.insert("baseline_mar".into(), round(b.mar()).into());
        for (k, v) in extra {
            m.insert((*k).into(), v.clone());
        }
        serde_json::Value::Object(m).to_string()
    }
}

fn opt_s(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0} s"))
}

/// The per-group table.
pub fn table(groups: &[Pooled]) -> String {
    let mut s = format!(
        "{:<12} {:>5} {:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>9}\n",
        "",
        "files",
        "F1",
        "FAR %",
        "MAR %",
        "TP",
        "FP",
        "FN",
        "TN",
        "episodes",
        "mean",
        "median",
        "unmatched"
    );
    for g in groups {
        let (c, e) = (&g.counts, &g.episodes);
        s += &format!(
            "{:<12} {:>5} {:>6.3} {:>7.2} {:>7.2} {:>6} {:>6} {:>6} {:>6} {:>9} {:>8} {:>8} {:>9}\n",
            g.name,
            g.files,
            c.f1(),
            c.far(),
            c.mar(),
            c.tp,
            c.fp,
            c.fn_,
            c.tn,
            format!("{}/{}", e.detected, e.labelled),
            opt_s(e.mean_delay()),
            opt_s(e.median_delay()),
            e.unmatched_alerts
        );
    }
    s += "(episodes: labelled episodes with an alert / all; mean and median detection delay;\n unmatched: alert episodes covering no labelled row)\n";
    s
}

/// otwatch beside the plain PCA T²+Q of [`baseline`], group by group.
pub fn beside_baseline(groups: &[Pooled]) -> String {
    let mut s = format!(
        "beside the textbook: a plain PCA T²+Q on the same rows and protocol (standardised on the\n\
         learning rows, components for {:.0} % of the variance, {:.0} % limits, no smoothing)\n",
        100.0 * baseline::VARIANCE,
        100.0 * baseline::QUANTILE
    );
    s += &format!(
        "{:<12} {:>8} {:>7} {:>7}   {:>10} {:>7} {:>7}\n",
        "", "otwatch", "FAR %", "MAR %", "plain PCA", "FAR %", "MAR %"
    );
    for g in groups {
        let (c, b) = (&g.counts, &g.baseline);
        s += &format!(
            "{:<12} {:>8.3} {:>7.2} {:>7.2}   {:>10.3} {:>7.2} {:>7.2}\n",
            g.name,
            c.f1(),
            c.far(),
            c.mar(),
            b.f1(),
            b.far(),
            b.mar()
        );
    }
    s
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:30}] {pos}/{len} rows ({eta} left)")
            .expect("template")
            .progress_chars("=> "),
    );
    bar
}

/// Keeps every `every`-th row of `rec` (the first, the `every+1`-th, ...): the
/// same process sampled `every` times more slowly.
pub fn subsample(rec: &Recording, every: usize) -> Recording {
    let every = every.max(1);
    let keep = |v: &[f64]| v.iter().step_by(every).copied().collect::<Vec<_>>();
    Recording {
        name: rec.name.clone(),
        ts_ns: rec.ts_ns.iter().step_by(every).copied().collect(),
        tags: rec.tags.clone(),
        values: rec.values.iter().map(|v| keep(v)).collect(),
        labels: rec
            .labels
            .as_ref()
            .map(|l| l.iter().step_by(every).copied().collect()),
    }
}

/// The SKAB protocol's training part of `rec` (its first 400 rows), as
/// the time it ends: with `--every N` the learning rows are those of the
/// same 400-row span, sampled N times more slowly.
fn skab_train(rec: &Recording) -> Train {
    Train::Until(rec.ts_ns[SKAB_TRAIN_ROWS.min(rec.ts_ns.len() - 1)])
}

/// Training rows of each SKAB file, by the published protocol.
pub const SKAB_TRAIN_ROWS: usize = 400;

/// `otwatch eval skab`.
pub fn skab(data: &Path, every: usize, json: bool, verbose: bool) -> anyhow::Result<Vec<Pooled>> {
    let config = DetectorConfig::default();
    let format = CsvFormat {
        time_col: "datetime".into(),
        label_col: Some("anomaly".into()),
        ignore: vec!["changepoint".into()],
        sep: b';',
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for folder in ["valve1", "valve2", "other"] {
        let dir = data.join(folder);
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "cannot read {} (is --data the SKAB data folder, with valve1/, valve2/, other/?)",
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "csv"))
            .filter_map(|p| {
                let k = p.file_stem()?.to_str()?.parse().ok()?;
                Some((k, p))
            })
            .collect();
        found.sort();
        files.extend(found.into_iter().map(|(_, p)| (folder.to_string(), p)));
    }
    ensure!(!files.is_empty(), "no SKAB files under {}", data.display());
    let recordings: Vec<(String, Recording, Train)> = files
        .iter()
        .map(|(f, p)| {
            let rec = read_csv(p, &format)?;
            let train = skab_train(&rec);
            Ok((f.clone(), subsample(&rec, every), train))
        })
        .collect::<anyhow::Result<_>>()?;
    let free_path = data.join("anomaly-free").join("anomaly-free.csv");
    let free = if free_path.exists() {
        let f = CsvFormat {
            label_col: None,
            ignore: vec![],
            ..format.clone()
        };
        let rec = read_csv(&free_path, &f)?;
        let train = skab_train(&rec);
        Some((subsample(&rec, every), train))
    } else {
        None
    };
    let total = recordings
        .iter()
        .map(|(_, r, _)| r.ts_ns.len())
        .sum::<usize>()
        + free.as_ref().map_or(0, |(r, _)| r.ts_ns.len());
    let bar = progress_bar(total as u64);
    let mut groups: Vec<Pooled> = ["valve1", "valve2", "other"]
        .iter()
        .map(|n| Pooled {
            name: n.to_string(),
            ..Default::default()
        })
        .collect();
    let mut pooled = Pooled {
        name: "pooled".into(),
        ..Default::default()
    };
    let mut lines = Vec::new();
    for (folder, rec, train) in &recordings {
        bar.set_message(format!("{folder}/{}", short(&rec.name)));
        let r = run_recording(rec, *train, &config, &bar)?;
        if let Some(g) = groups.iter_mut().find(|g| &g.name == folder) {
            g.add(&r);
        }
        pooled.add(&r);
        lines.push(file_line(
            &format!("{folder}/{}", short(&rec.name)),
            &r,
            verbose,
        ));
    }
    let free_result = match &free {
        Some((rec, train)) => {
            bar.set_message("anomaly-free");
            Some(run_recording(rec, *train, &config, &bar)?)
        }
        None => None,
    };
    bar.finish_and_clear();
    groups.push(pooled.clone());
    if verbose {
        for l in &lines {
            print!("{l}");
        }
        println!();
    }
    println!(
        "SKAB ({} files; learn on the first 400 rows of each, predict the rest; TP/FP/FN/TN pooled)\n",
        pooled.files
    );
    print!("{}", table(&groups));
    print!("\n{}", beside_baseline(&groups));
    println!("\npublished leaderboard (SKAB, outlier detection, test part):");
    println!(
        "  {:<20} {:>6} {:>7} {:>7}",
        "algorithm", "F1", "FAR %", "MAR %"
    );
    println!(
        "  {:<20} {:>6.2} {:>7.2} {:>7.2}   <- this run",
        "otwatch process",
        pooled.counts.f1(),
        pooled.counts.far(),
        pooled.counts.mar()
    );
    for (name, f1, far, mar) in SKAB_LEADERBOARD {
        println!("  {name:<20} {f1:>6.2} {far:>7.2} {mar:>7.2}");
    }
    let mut extra = Vec::new();
    if let Some(r) = &free_result {
        let rows = r.counts.fp + r.counts.tn;
        println!(
            "\nanomaly-free.csv (not pooled above; learn on its first 400 rows, watch the other {rows}):\n  \
             false-alarm rate {:.2} % ({} of {rows} rows flagged), {} alert episode(s); plain PCA T²+Q {:.2} %",
            r.counts.far(),
            r.counts.fp,
            r.episodes.alerts,
            r.baseline.far(),
        );
        if verbose {
            for m in &r.messages {
                println!("    {m}");
            }
        }
        extra.push((
            "anomaly_free_far",
            serde_json::json!((r.counts.far() * 1e4).round() / 1e4),
        ));
        extra.push(("anomaly_free_flagged", serde_json::json!(r.counts.fp)));
        extra.push(("anomaly_free_rows", serde_json::json!(rows)));
        extra.push((
            "anomaly_free_episodes",
            serde_json::json!(r.episodes.alerts),
        ));
        extra.push((
            "anomaly_free_baseline_far",
            serde_json::json!((r.baseline.far() * 1e4).round() / 1e4),
        ));
    }
    if json {
        println!("{}", pooled.json(&extra));
    }
    Ok(groups)
}

fn short(name: &str) -> String {
    Path::new(name)
        .file_name()
        .map_or(name.to_string(), |s| s.to_string_lossy().to_string())
}

fn file_line(label: &str, r: &FileResult, verbose: bool) -> String {
    let c = &r.counts;
    let mut s = format!(
        "{label:<20} F1 {:.3} FAR {:>6.2} % MAR {:>6.2} %  alert episodes {}  (plain PCA F1 {:.3} FAR {:.2} %)\n",
        c.f1(),
        c.far(),
        c.mar(),
        r.episodes.alerts,
        r.baseline.f1(),
        r.baseline.far(),
    );
    if verbose {
        for m in &r.messages {
            s += &format!("    {m}\n");
        }
    }
    s
}

/// `otwatch eval csv`.
pub fn csv_files(
    files: &[PathBuf],
    format: &CsvFormat,
    train: Train,
    json: bool,
    verbose: bool,
) -> anyhow::Result<Pooled> {
    let config = DetectorConfig::default();
    let recordings: Vec<Recording> = files
        .iter()
        .map(|p| read_csv(p, format))
        .collect::<anyhow::Result<_>>()?;
    let total = recordings.iter().map(|r| r.ts_ns.len()).sum::<usize>();
    let bar = progress_bar(total as u64);
    let mut pooled = Pooled {
        name: "pooled".into(),
        ..Default::default()
    };
    let mut groups = Vec::new();
    for rec in &recordings {
        bar.set_message(short(&rec.name));
        let r = run_recording(rec, train, &config, &bar)?;
        pooled.add(&r);
        let mut g = Pooled {
            name: short(&rec.name),
            ..Default::default()
        };
        g.add(&r);
        groups.push(g);
        if verbose {
            bar.suspend(|| print!("{}", file_line(&short(&rec.name), &r, true)));
        }
    }
    bar.finish_and_clear();
    if groups.len() > 1 {
        groups.push(pooled.clone());
    }
    print!("{}", table(&groups));
    print!("\n{}", beside_baseline(&groups));
    if json {
        println!("{}", pooled.json(&[]));
    }
    Ok(pooled)
}
