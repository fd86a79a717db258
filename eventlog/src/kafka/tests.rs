//! The Kafka log against librdkafka's in-process mock cluster.

use super::*;
use arrow::array::{StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use rdkafka::mocking::MockCluster;
use std::time::Instant;

fn config(cluster: &MockCluster<'_, impl ClientContext>) -> KafkaLogConfig {
    KafkaLogConfig {
        brokers: vec![cluster.bootstrap_servers()],
        partitions: 3,
        max_record_bytes: 1024,
        timeout: Duration::from_secs(10),
        // A group member that left shows up late in the mock broker: keep
        // the wait for it short.
        session_timeout: Duration::from_secs(6),
        ..KafkaLogConfig::default()
    }
}

use super::mock_cluster as cluster;

/// Events of `producer` (`site/agent`) with sequence numbers `seqs`, each
/// with `pad` bytes of text so that records can be made to need chunks.
fn events(producer: &str, seqs: std::ops::RangeInclusive<u64>, pad: usize) -> Record {
    let schema = Arc::new(Schema::new(vec![
        Field::new("site", DataType::Utf8, false),
        Field::new("seq", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let site = producer.split('/').next().unwrap();
    let seqs: Vec<u64> = seqs.collect();
    let last_seq = *seqs.last().unwrap();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![site; seqs.len()])),
            Arc::new(UInt64Array::from(seqs.clone())),
            Arc::new(StringArray::from(
                seqs.iter()
                    .map(|s| format!("{s:0>pad$}"))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    Record {
        batch,
        producer: Some(ProducerMark {
            producer: producer.to_string(),
            last_seq,
        }),
    }
}

/// Polls until `n` rows arrived (or 30 s passed), returning every
/// delivery.
async fn rows(consumer: &mut dyn Consumer, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got
        .iter()
        .map(|d: &Delivery| d.batch.num_rows())
        .sum::<usize>()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "only {} records arrived",
            got.len()
        );
        got.extend(
            consumer
                .poll(100, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

/// (producer, seq) of every row delivered.
fn seqs(deliveries: &[Delivery]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for d in deliveries {
        let producer = d.producer.as_ref().unwrap().producer.clone();
        let seq = d
            .batch
            .column_by_name("seq")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        out.extend(seq.values().iter().map(|s| (producer.clone(), *s)));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_in_chunks_partitioned_by_site() {
    let cluster = cluster();
    let log = KafkaLog::open(config(&cluster)).await.unwrap();
    let sent = vec![
        events("plant-a/gw-1", 1..=3, 10),
        // About 40 KB: 40 chunks of 1 KiB.
        events("plant-b/gw-1", 1..=200, 200),
        events("plant-a/gw-2", 1..=2, 10),
        events("plant-c/gw-1", 5..=5, 10),
    ];
    let offsets = log.append(Topic::Events, sent.clone()).await.unwrap();
    assert_eq!(offsets.len(), 4);

    let mut consumer = log.consumer(Topic::Events, "history").await.unwrap();
    let got = rows(consumer.as_mut(), 206).await;
    assert_eq!(got.len(), 4, "one delivery per record");
    for record in &sent {
        let mark = record.producer.as_ref().unwrap();
        let d = got
            .iter()
            .find(|d| d.producer.as_ref() == Some(mark))
            .unwrap();
        assert_eq!(d.batch, record.batch, "{} arrives whole", mark.producer);
        let site = mark.producer.split('/').next().unwrap();
        assert_eq!(d.partition, partition_of(site.as_bytes(), 3));
    }
    // One site, one partition: both agents of plant-a share it.
    let a: Vec<_> = got
        .iter()
        .filter(|d| {
            d.producer
                .as_ref()
                .unwrap()
                .producer
                .starts_with("plant-a/")
        })
        .map(|d| d.partition)
        .collect();
    assert_eq!(a[0], a[1]);

    // The group resumes after what it committed.
    let checkpoint = consumer.checkpoint();
    consumer.commit_checkpoint(&checkpoint).await.unwrap();
    drop(consumer);
    log.append(Topic::Events, vec![events("plant-a/gw-1", 4..=4, 10)])
        .await
        .unwrap();
    let mut consumer = log.consumer(Topic::Events, "history").await.unwrap();
    let got = rows(consumer.as_mut(), 1).await;
    assert_eq!(seqs(&got), vec![("plant-a/gw-1".to_string(), 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_through_another_collector_is_consumed_once() {
    let cluster = cluster();
    // Two collectors; the agent's batch 1..=10 is durable through the first,
    // the agent did not get the ack, reconnects to the second and resends
    // 6..=15 and, after a restart of its own, 1..=10 again.
    let first = KafkaLog::open(config(&cluster)).await.unwrap();
    let second = KafkaLog::open(config(&cluster)).await.unwrap();
    first
        .append(Topic::Events, vec![events("plant-a/gw-1", 1..=10, 10)])
        .await
        .unwrap();
    second
        .append(Topic::Events, vec![events("plant-a/gw-1", 6..=15, 10)])
        .await
        .unwrap();
    second
        .append(Topic::Events, vec![events("plant-a/gw-1", 1..=10, 10)])
        .await
        .unwrap();
    // The broker holds 30 rows ...
    let mut consumer = first.consumer(Topic::Events, "detector").await.unwrap();
    let got = rows(consumer.as_mut(), 15).await;
    // ... the consumer takes each (agent, seq) once.
    let want: Vec<_> = (1..=15).map(|s| ("plant-a/gw-1".to_string(), s)).collect();
    let more = consumer
        .poll(100, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(more.is_empty(), "the full resend is dropped whole");
    assert_eq!(seqs(&got), want);

    // The marks travel in the checkpoint: a consumer resuming from it
    // (another instance, after the partition moved) drops a later resend.
    let checkpoint = consumer.checkpoint();
    assert_eq!(
        checkpoint.producers.values().next().unwrap()["plant-a/gw-1"],
        15
    );
    drop(consumer);
    first
        .append(Topic::Events, vec![events("plant-a/gw-1", 12..=16, 10)])
        .await
        .unwrap();
    let mut resumed = second
        .consumer_from(Topic::Events, "detector", &checkpoint)
        .await
        .unwrap();
    let got = rows(resumed.as_mut(), 1).await;
    assert_eq!(seqs(&got), vec![("plant-a/gw-1".to_string(), 16)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_collector_reads_back_an_agents_high_water_mark() {
    let cluster = cluster();
    let log = KafkaLog::open(config(&cluster)).await.unwrap();
    assert_eq!(
        log.producer_seq(Topic::Events, "plant-a/gw-1")
            .await
            .unwrap(),
        None
    );
    log.append(
        Topic::Events,
        vec![
            events("plant-a/gw-1", 1..=40, 10),
            events("plant-b/gw-9", 1..=3, 10),
        ],
    )
    .await
    .unwrap();
    log.append(Topic::Events, vec![events("plant-a/gw-1", 41..=42, 10)])
        .await
        .unwrap();
    assert_eq!(
        log.producer_seq(Topic::Events, "plant-a/gw-1")
            .await
            .unwrap(),
        Some(42)
    );
    // A collector started afterwards (the agent's data_dir was wiped and it
    // reconnects elsewhere) gives the same answer.
    let other = KafkaLog::open(config(&cluster)).await.unwrap();
    assert_eq!(
        other
            .producer_seq(Topic::Events, "plant-a/gw-1")
            .await
            .unwrap(),
        Some(42)
    );
    assert_eq!(
        other
            .producer_seq(Topic::Events, "plant-b/gw-9")
            .await
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        other
            .producer_seq(Topic::Events, "plant-c/gw-1")
            .await
            .unwrap(),
        None
    );
    // And sees what the first writes later.
    log.append(Topic::Events, vec![events("plant-a/gw-1", 43..=50, 10)])
        .await
        .unwrap();
    assert_eq!(
        other
            .producer_seq(Topic::Events, "plant-a/gw-1")
            .await
            .unwrap(),
        Some(50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_records_reach_every_reader_from_an_offset() {
    let cluster = cluster();
    let log = KafkaLog::open(config(&cluster)).await.unwrap();
    let record = |n: u64| {
        let mut r = events("plant-a/gw-1", n..=n, 4);
        r.producer = None;
        r
    };
    let offsets = log
        .append(Topic::Control, vec![record(1), record(2), record(3)])
        .await
        .unwrap();
    assert_eq!(offsets, vec![0, 1, 2]);
    // Two collectors in one group each read the whole control topic.
    for _ in 0..2 {
        let mut c = log
            .consumer_at(Topic::Control, "collector", 1)
            .await
            .unwrap();
        let got = rows(c.as_mut(), 2).await;
        assert_eq!(got.iter().map(|d| d.offset).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(c.position(), 3);
    }
    assert!(matches!(
        log.consumer_at(Topic::Events, "history", 0).await,
        Err(LogError::Unsupported(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_refuses_to_create_topics_gives_a_clear_error() {
    // No topics, and librdkafka's mock broker does not create topics on
    // request: the same answer as a broker whose ACLs forbid it.
    let cluster = MockCluster::new(1).unwrap();
    let err = KafkaLog::open(config(&cluster)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LogError::TopicCreation { .. }), "{text}");
    assert!(text.contains("otwatch-events"), "{text}");
    assert!(text.contains("refused to create"), "{text}");
}

#[test]
fn configuration_errors_name_the_option() {
    let mut c = KafkaLogConfig::default();
    assert!(c.validate().unwrap_err().contains("brokers"));
    c.brokers = vec!["127.0.0.1:9092".into()];
    c.validate().unwrap();
    c.alerts_topic = c.events_topic.clone();
    assert!(c.validate().unwrap_err().contains("different"));
    c.alerts_topic = "bad topic".into();
    assert!(c.validate().unwrap_err().contains("alerts_topic"));
    c.alerts_topic = "otwatch-alerts".into();
    c.security.protocol = Some("sasl_ssl".into());
    assert!(c.validate().unwrap_err().contains("sasl_mechanism"));
    c.security.sasl_mechanism = Some("SCRAM-SHA-512".into());
    c.security.sasl_username = Some("otwatch".into());
    c.security.sasl_password = Some("hunter2".into());
    c.validate().unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

/// Figures on this machine: `cargo test -p otwatch-eventlog --release
/// kafka_figures -- --ignored --nocapture`. The mock broker is in-process,
/// so they show the client's own cost, not a network's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn kafka_figures() {
    let cluster = cluster();
    let mut c = config(&cluster);
    c.max_record_bytes = 900_000;
    let log = KafkaLog::open(c).await.unwrap();
    // About 3 MB: the mock broker keeps only the newest 5 MB of a partition.
    let rounds = 100u64;
    let started = Instant::now();
    for round in 0..rounds {
        let first = round * 500 + 1;
        log.append(
            Topic::Events,
            vec![events("plant-a/gw-1", first..=first + 499, 40)],
        )
        .await
        .unwrap();
    }
    let append = started.elapsed() / rounds as u32;
    let started = Instant::now();
    for _ in 0..rounds {
        log.producer_seq(Topic::Events, "plant-a/gw-1")
            .await
            .unwrap();
    }
    let seq = started.elapsed() / rounds as u32;
    let mut consumer = log.consumer(Topic::Events, "figures").await.unwrap();
    let started = Instant::now();
    let got = rows(consumer.as_mut(), (rounds * 500) as usize).await;
    let consumed = started.elapsed();
    eprintln!(
        "append of a 500-event batch (acks=all, delivery confirmed, mark written): {append:?}; \
         producer_seq: {seq:?}; consuming {} records of 500 rows: {consumed:?}",
        got.len()
    );
}
