use super::server::user_name;
use super::*;

#[test]
fn requests_read_as_documented() {
    let r: Request =
        serde_json::from_str(r#"{"command":"model.status","site":"plant-a","asset":null}"#)
            .unwrap();
    assert_eq!(
        r,
        Request::ModelStatus {
            site: Some("plant-a".into()),
            asset: None
        }
    );
    assert_eq!(r.command(), None);
    let r: Request =
        serde_json::from_str(r#"{"command":"model.relearn","site":"s","from_ns":1,"to_ns":2}"#)
            .unwrap();
    assert_eq!(r.command(), Some("model.relearn"));
    // An unknown command or field is refused, naming it.
    let e = serde_json::from_str::<Request>(r#"{"command":"alert.frobnicate"}"#).unwrap_err();
    assert!(e.to_string().contains("alert.frobnicate"), "{e}");
    let e = serde_json::from_str::<Request>(r#"{"command":"model.accept","alert_id":"a","x":1}"#)
        .unwrap_err();
    assert!(e.to_string().contains('x'), "{e}");
}

#[test]
fn users_are_named_from_passwd() {
    assert_eq!(user_name(0), "root");
    assert_eq!(user_name(4_000_000_000), "uid:4000000000");
}

#[tokio::test]
async fn a_missing_service_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = ask(
        dir.path(),
        &Request::ModelAccept {
            alert_id: "a".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
    assert!(
        e.to_string().contains("no otwatch service is running"),
        "{e}"
    );
}

mod lifecycle {
    use super::super::alerts::*;
    use super::super::Request;
    use otwatch_history::{Table, TableWriter};
    use otwatch_proto::arrow::{
        alerts_to_batch, control_to_batch, state, ControlRecord, GENESIS_HASH,
    };
    use otwatch_proto::{Alert, Severity};

    fn alert(id: &str) -> Alert {
        Alert {
            id: id.into(),
            ts_ns: 1_714_557_600_123_456_789,
            site: "plant-a".into(),
            asset: "line1/plc-01".into(),
            detector: "access".into(),
            name: "write_single_register".into(),
            severity: Severity::High as i32,
            score: 1.5,
            observed: 1.0,
            expected_low: 0.0,
            expected_high: 0.0,
            message: "10.0.0.5 wrote, which it never did".into(),
            agent: "gw-1".into(),
            first_seq: 74,
            last_seq: 74,
            event_count: 1,
            technique: "T0855".into(),
            state: state::OPEN.into(),
            ..Alert::default()
        }
    }

    #[test]
    fn alert_requests_read_as_documented() {
        let r: Request =
            serde_json::from_str(r#"{"command":"alert.ack","alert_id":"a1","comment":"on it"}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::AlertAck {
                alert_id: "a1".into(),
                comment: Some("on it".into())
            }
        );
        assert_eq!(r.command(), Some("alert.ack"));
        let r: Request = serde_json::from_str(
            r#"{"command":"alert.suppress","site":"plant-a","for_secs":7200,"reason":"die change"}"#,
        )
        .unwrap();
        assert_eq!(r.command(), Some("alert.suppress"));
        // A suppression without a duration or reason is not understood.
        let e = serde_json::from_str::<Request>(
            r#"{"command":"alert.suppress","site":"plant-a","reason":"x"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("for_secs"), "{e}");
    }

    #[test]
    fn suppressions_are_checked_naming_the_problem() {
        fn ok(
            asset: Option<&str>,
            detector: Option<&str>,
            secs: u64,
            reason: &str,
        ) -> Result<(), String> {
            check_suppress("plant-a", asset, detector, secs, reason)
        }
        assert_eq!(ok(None, None, 7200, "die change"), Ok(()));
        assert_eq!(ok(Some("line1/press-01"), Some("cycle"), 60, "x"), Ok(()));
        let err = |r: Result<(), String>| r.unwrap_err();
        assert!(err(ok(None, None, 0, "x")).contains("zero"));
        assert!(err(ok(None, None, MAX_SUPPRESSION_SECS + 1, "x")).contains("longer than"));
        assert!(err(ok(None, None, 60, "  ")).contains("reason"));
        assert!(err(ok(None, Some("cycles"), 60, "x")).contains("not a detector"));
        assert!(err(ok(Some(""), None, 60, "x")).contains("asset is empty"));
        assert!(err(ok(None, None, 60, &"x".repeat(MAX_COMMENT_CHARS + 1))).contains("at most"));
        assert!(err(ok(None, None, 60, "a\u{1b}[2Jb")).contains("control characters"));
        assert!(err(check_suppress(" ", None, None, 60, "x")).contains("site"));
    }

    #[test]
    fn suppressions_match_their_site_asset_detector_and_window() {
        let r = ControlRecord {
            id: "ctl-1".into(),
            ts_ns: 1_000,
            user: "alice".into(),
            host: "soc-1".into(),
            command: "alert.suppress".into(),
            site: "plant-a".into(),
            asset: "line1/plc-01".into(),
            alert_id: None,
            args: r#"{"detector":"access","for_secs":2,"reason":"work"}"#.into(),
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(GENESIS_HASH);
        let s = Suppression::from_record(&r).unwrap();
        assert_eq!((s.from_ns, s.until_ns), (1_000, 2_000_001_000));
        let at = |ts_ns| Alert {
            ts_ns,
            ..alert("a1")
        };
        assert!(s.matches(&at(1_000)));
        assert!(s.matches(&at(2_000_000_999)));
        assert!(!s.matches(&at(999)), "before the window");
        assert!(!s.matches(&at(2_000_001_000)), "after the window");
        assert!(!s.matches(&Alert {
            site: "plant-b".into(),
            ..at(1_500)
        }));
        assert!(!s.matches(&Alert {
            asset: "line1/plc-02".into(),
            ..at(1_500)
        }));
        assert!(!s.matches(&Alert {
            detector: "cycle".into(),
            ..at(1_500)
        }));
        let mut marked = at(1_500);
        s.mark(&mut marked);
        assert_eq!(
            (
                marked.state.as_str(),
                marked.state_by.as_str(),
                marked.comment.as_str()
            ),
            (state::SUPPRESSED, "alice", "work")
        );
    }

    #[tokio::test]
    async fn acks_and_resolves_name_an_alert_of_the_history_and_carry_it() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        // No history yet: unknown.
        let e = latest(&history, "00000000000000a1").await.unwrap_err();
        assert!(e.contains("not in the alerts history"), "{e}");
        let raised = alert("00000000000000a1");
        let acked = Alert {
            state: state::ACKED.into(),
            state_by: "bob".into(),
            state_at_ns: raised.ts_ns + 5_000_000_000,
            comment: "looking".into(),
            ..raised.clone()
        };
        TableWriter::open(&history, Table::Alerts)
            .unwrap()
            .write(
                &[alerts_to_batch(&[raised.clone(), alert("00000000000000b2")]).unwrap()],
                1,
            )
            .unwrap();

        let e = latest(&history, "00000000000000ff").await.unwrap_err();
        assert!(
            e.contains("00000000000000ff is not in the alerts history"),
            "{e}"
        );
        let e = latest(&history, "x' OR '1'='1").await.unwrap_err();
        assert!(e.contains("is not an alert id"), "{e}");
        assert_eq!(latest(&history, &raised.id).await.unwrap(), raised);

        // The ack carries the alert as the history holds it.
        let ack = Request::AlertAck {
            alert_id: raised.id.clone(),
            comment: Some("looking".into()),
        };
        let Decision {
            site,
            asset,
            alert_id,
            args,
        } = decision(&ack, &history).await.unwrap();
        assert_eq!((site.as_str(), asset.as_str()), ("plant-a", "line1/plc-01"));
        assert_eq!(alert_id.as_deref(), Some(raised.id.as_str()));
        let record = ControlRecord {
            id: "ctl-2".into(),
            ts_ns: acked.state_at_ns,
            user: "bob".into(),
            host: "soc-1".into(),
            command: "alert.ack".into(),
            site,
            asset,
            alert_id,
            args: args.to_string(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert_eq!(update_from_record(&record).unwrap(), acked);

        // Once the update is in the history, it is the latest state: a
        // second ack is refused, a resolve is not; resolved is final.
        TableWriter::open(&history, Table::Alerts)
            .unwrap()
            .write(&[alerts_to_batch(std::slice::from_ref(&acked)).unwrap()], 2)
            .unwrap();
        assert_eq!(latest(&history, &raised.id).await.unwrap(), acked);
        let e = decision(&ack, &history).await.unwrap_err();
        assert!(e.contains("already acked by bob"), "{e}");
        let resolve = Request::AlertResolve {
            alert_id: raised.id.clone(),
            comment: None,
        };
        assert!(decision(&resolve, &history).await.is_ok());
        let resolved = Alert {
            state: state::RESOLVED.into(),
            state_at_ns: acked.state_at_ns + 1,
            ..acked.clone()
        };
        assert!(check_transition(&resolve, &resolved)
            .unwrap_err()
            .contains("already resolved"));
        // A comment with terminal escapes is refused.
        let bad = Request::AlertAck {
            alert_id: "00000000000000b2".into(),
            comment: Some("\u{1b}[31mred".into()),
        };
        assert!(decision(&bad, &history)
            .await
            .unwrap_err()
            .contains("control characters"));
    }

    #[tokio::test]
    async fn suppressions_are_read_from_the_audit_and_lifted_once() {
        let dir = tempfile::tempdir().unwrap();
        let history = dir.path().join("history");
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
        let hour = 3_600_000_000_000i64;
        let control = |id: &str, ts_ns: i64, command: &str, args: &str| ControlRecord {
            id: id.into(),
            ts_ns,
            user: "alice".into(),
            host: "soc-1".into(),
            command: command.into(),
            site: "plant-a".into(),
            asset: String::new(),
            alert_id: None,
            args: args.into(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let unsuppress = |id: &str| Request::AlertUnsuppress {
            id: id.into(),
            reason: "work done".into(),
        };
        // No history: nothing to lift.
        assert!(suppressions(&history).await.unwrap().is_empty());
        let e = decision(&unsuppress("ctl-1"), &history).await.unwrap_err();
        assert!(e.contains("no suppression has the id"), "{e}");
        // Three suppressions: one in force, one over, one lifted.
        let records = [
            control(
                "ctl-1",
                now - hour,
                "alert.suppress",
                r#"{"detector":null,"for_secs":7200,"reason":"die change"}"#,
            ),
            control(
                "ctl-2",
                now - 3 * hour,
                "alert.suppress",
                r#"{"detector":"cycle","for_secs":3600,"reason":"trial"}"#,
            ),
            control(
                "ctl-3",
                now - 2 * hour,
                "alert.suppress",
                r#"{"detector":null,"for_secs":36000,"reason":"commissioning"}"#,
            ),
            control(
                "ctl-4",
                now - hour / 2,
                "alert.unsuppress",
                r#"{"suppression":"ctl-3","reason":"done"}"#,
            ),
        ];
        TableWriter::open(&history, Table::Audit)
            .unwrap()
            .write(&[control_to_batch(&records).unwrap()], 1)
            .unwrap();
        let all = suppressions(&history).await.unwrap();
        let status: Vec<(&str, &str)> = all
            .iter()
            .map(|s| (s.suppression.id.as_str(), s.status(now)))
            .collect();
        assert_eq!(
            status,
            [
                ("ctl-2", "over"),
                ("ctl-3", "lifted"),
                ("ctl-1", "in force")
            ]
        );
        let lifted = &all[1];
        assert_eq!(lifted.suppression.until_ns, now - hour / 2);
        assert_eq!(lifted.set_until_ns, now - 2 * hour + 36_000_000_000_000);
        assert_eq!(
            lifted.lifted,
            Some((now - hour / 2, "alice".to_string(), "done".to_string()))
        );

        let Decision { site, args, .. } = decision(&unsuppress("ctl-1"), &history).await.unwrap();
        assert_eq!(site, "plant-a");
        assert_eq!(
            args,
            serde_json::json!({"suppression": "ctl-1", "reason": "work done"})
        );
        let e = decision(&unsuppress("ctl-3"), &history).await.unwrap_err();
        assert!(e.contains("already lifted by alice"), "{e}");
        let e = decision(&unsuppress("ctl-2"), &history).await.unwrap_err();
        assert!(e.contains("is over"), "{e}");
        let e = decision(&unsuppress("ctl-9"), &history).await.unwrap_err();
        assert!(e.contains("no suppression has the id"), "{e}");
        let blank = Request::AlertUnsuppress {
            id: "ctl-1".into(),
            reason: " ".into(),
        };
        let e = decision(&blank, &history).await.unwrap_err();
        assert!(e.contains("give the reason"), "{e}");
    }
}
