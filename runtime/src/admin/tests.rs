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
