//! The dashboard against a running service, over real HTTP: sign-in and
//! its lockout, site limits on every read, roles and CSRF on every state
//! change, decisions recorded under the user, live alerts.

use super::auth::{hash_password, token_from_cookies, Auth, SigninRefused};
use super::config::{DashboardConfig, DashboardUser, Role};
use crate::{ServerConfig, Service};
use otwatch_eventlog::EventLog;
use otwatch_proto::{Alert, ControllerEvent, EventKind, Severity};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn user(name: &str, password: &str, role: Role, sites: Option<&[&str]>) -> DashboardUser {
    DashboardUser {
        name: name.into(),
        password_hash: hash_password(password).unwrap(),
        role,
        sites: sites.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn the_configuration_is_checked_naming_the_key() {
    let ok = DashboardConfig {
        users: vec![user("ana", "pw", Role::Analyst, None)],
        ..Default::default()
    };
    let loopback = Some("127.0.0.1:8080".parse().unwrap());
    ok.validate(loopback).unwrap();
    // Off: nothing is required.
    DashboardConfig::default().validate(None).unwrap();
    let refused = |c: &DashboardConfig, listen: &str| {
        c.validate(Some(listen.parse().unwrap()))
            .unwrap_err()
            .to_string()
    };
    let e = refused(&ok, "0.0.0.0:8443");
    assert!(
        e.contains("dashboard_listen") && e.contains("[dashboard.tls]"),
        "{e}"
    );
    let e = refused(&DashboardConfig::default(), "127.0.0.1:1");
    assert!(
        e.contains("dashboard.users") && e.contains("dashboard-user hash"),
        "{e}"
    );
    let mut plain = ok.clone();
    plain.users[0].password_hash = "hunter2".into();
    let e = refused(&plain, "127.0.0.1:1");
    assert!(e.contains("argon2") && !e.contains("hunter2"), "{e}");
    let mut twice = ok.clone();
    twice.users.push(twice.users[0].clone());
    assert!(refused(&twice, "127.0.0.1:1").contains("listed twice"));
    let mut no_sites = ok.clone();
    no_sites.users[0].sites = Some(Vec::new());
    assert!(refused(&no_sites, "127.0.0.1:1").contains("sites = []"));
    let mut bad_site = ok.clone();
    bad_site.users[0].sites = Some(vec!["../etc".into()]);
    assert!(refused(&bad_site, "127.0.0.1:1").contains("sites"));
    // Unknown keys are refused by name.
    let e = toml::from_str::<DashboardConfig>("session_tl = \"1h\"").unwrap_err();
    assert!(e.to_string().contains("session_tl"), "{e}");
    // A users file that cannot be read or parsed is named, its content is not quoted.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users.toml");
    std::fs::write(
        &file,
        "[[users]]\nname = \"x\"\npassword_hash = \"secret-pw\nrole = \"viewer\"\n",
    )
    .unwrap();
    let with_file = DashboardConfig {
        users_file: Some(file.clone()),
        ..ok.clone()
    };
    let e = with_file.all_users().unwrap_err().to_string();
    assert!(e.contains("users.toml") && !e.contains("secret-pw"), "{e}");
    std::fs::write(
        &file,
        format!(
            "[[users]]\nname = \"vic\"\npassword_hash = \"{}\"\nrole = \"viewer\"\nsites = [\"plant-b\"]\n",
            hash_password("pw").unwrap()
        ),
    )
    .unwrap();
    let users = with_file.all_users().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(
        users[1].sites.as_deref(),
        Some(&["plant-b".to_string()][..])
    );
}

#[tokio::test]
async fn sign_in_locks_out_after_failures_and_tokens_are_cookies() {
    let config = DashboardConfig {
        max_failed_signins: 3,
        ..Default::default()
    };
    let auth = Auth::new(&config, vec![user("ana", "right", Role::Analyst, None)]).unwrap();
    let peer = "10.0.0.9".parse().unwrap();
    let (token, session) = auth.sign_in("ana", "right", peer).await.unwrap();
    assert_eq!(auth.session(&token), Some(session.clone()));
    assert_eq!(session.audit_name(), "dashboard:ana");
    assert_eq!(
        token_from_cookies(&format!("a=b; otwatch_session={token}; c=d")),
        Some(token.as_str())
    );
    assert_eq!(token_from_cookies("otwatch_session=../../x"), None);
    // An unknown name and a wrong password get the same answer.
    assert_eq!(
        auth.sign_in("nobody", "x", peer).await.unwrap_err(),
        SigninRefused::BadCredentials
    );
    for _ in 0..2 {
        assert_eq!(
            auth.sign_in("ana", "wrong", peer).await.unwrap_err(),
            SigninRefused::BadCredentials
        );
    }
    // Three failures from this address: even the right password waits.
    assert!(matches!(
        auth.sign_in("ana", "right", peer).await.unwrap_err(),
        SigninRefused::Locked { .. }
    ));
    // Another address may still sign in as ana? No: the name is locked too
    // only after its own three failures (two so far), so yes.
    let other = "10.0.0.10".parse().unwrap();
    assert!(auth.sign_in("ana", "right", other).await.is_ok());
    auth.sign_out(&token);
    assert_eq!(auth.session(&token), None);
}

const T0: i64 = 1_764_000_000_000_000_000;

fn alert(id: &str, site: &str, asset: &str, ts_ns: i64, first_seq: u64) -> Alert {
    Alert {
        id: id.into(),
        ts_ns,
        site: site.into(),
        asset: asset.into(),
        detector: "cycle".into(),
        name: "cycle".into(),
        severity: Severity::High as i32,
        score: 9.0,
        observed: 15_000.0,
        expected_low: 9_000.0,
        expected_high: 11_000.0,
        message: format!("{asset} cycle time 15 s, expected 9–11 s"),
        agent: "gw-1".into(),
        first_seq,
        last_seq: first_seq,
        event_count: 1,
        technique: "T0836".into(),
        ..Default::default()
    }
}

async fn append_cycles(log: &dyn EventLog, site: &str, asset: &str, n: u64) {
    let events: Vec<ControllerEvent> = (1..=n)
        .map(|seq| ControllerEvent {
            seq,
            ts_ns: T0 + seq as i64 * 10_000_000_000,
            asset: asset.into(),
            kind: EventKind::Cycle as i32,
            name: "cycle".into(),
            value: Some(if seq == n {
                15_000.0
            } else {
                10_000.0 + (seq % 7) as f64
            }),
            ..Default::default()
        })
        .collect();
    let received = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    otwatch_testkit::append_events(log, site, "gw-1", &events, received).await;
}

/// A client of the dashboard: one session's cookie and CSRF token.
struct Client {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.into(),
            cookie: None,
            csrf: None,
        }
    }

    async fn sign_in(base: &str, name: &str, password: &str) -> Client {
        let mut c = Client::new(base);
        let (status, body) = c
            .send(
                "POST",
                "/api/signin",
                Some(json!({"user": name, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        c.csrf = body["csrf"].as_str().map(str::to_string);
        c
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(csrf) = &self.csrf {
            request = request.header("x-csrf-token", csrf);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        if let Some(set) = response.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap().to_string();
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Strict"),
                "{set}"
            );
            self.cookie = Some(pair);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&mut self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_api_limits_each_user_to_their_sites_and_role_and_audits_their_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure_loopback: true,
        outputs: Vec::new(),
        dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    config.history.flush_interval = Duration::from_millis(200);
    config.dashboard.max_failed_signins = 3;
    config.dashboard.users = vec![
        user("ana", "ana-pw", Role::Analyst, None),
        user("vic", "vic-pw", Role::Viewer, Some(&["plant-b"])),
        user("bob", "bob-pw", Role::Analyst, Some(&["plant-b"])),
    ];
    let service = Service::start(config).await.unwrap();
    let base = format!("http://{}", service.dashboard_addr.unwrap());
    let log: &dyn EventLog = service.log.as_ref();
    append_cycles(log, "plant-a", "line1/press-01", 30).await;
    append_cycles(log, "plant-b", "line2/mill-07", 30).await;
    let a1 = alert(
        "00000000000000a1",
        "plant-a",
        "line1/press-01",
        T0 + 300_000_000_000,
        30,
    );
    let b1 = alert(
        "00000000000000b1",
        "plant-b",
        "line2/mill-07",
        T0 + 300_000_000_000,
        30,
    );
    otwatch_testkit::append_alerts(log, &[a1.clone(), b1.clone()]).await;

    // The page and its files, with a policy that runs only them.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let vendored = reqwest::get(format!("{base}/assets/uPlot.iife.min.js"))
        .await
        .unwrap();
    assert_eq!(vendored.status(), 200);

    // Nothing without a session.
    let mut anonymous = Client::new(&base);
    let (status, body) = anonymous.get("/api/alerts").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not signed in"));

    let mut ana = Client::sign_in(&base, "ana", "ana-pw").await;
    let mut vic = Client::sign_in(&base, "vic", "vic-pw").await;
    let mut bob = Client::sign_in(&base, "bob", "bob-pw").await;
    let list = eventually("both alerts in the history", async || {
        let (_, body) = ana.get("/api/alerts").await;
        let alerts = body["alerts"].as_array()?.clone();
        (alerts.len() == 2).then_some(alerts)
    })
    .await;
    assert!(list.iter().all(|a| a["state"] == "open"), "{list:?}");

    // vic sees plant-b only, everywhere.
    let (_, body) = vic.get("/api/alerts").await;
    let ids: Vec<&str> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["00000000000000b1"]);
    let (status, _) = vic.get(&format!("/api/alerts/{}", a1.id)).await;
    assert_eq!(status, 404);
    let (status, body) = vic.get("/api/alerts?site=plant-a").await;
    assert_eq!((status, body["alerts"].as_array().unwrap().len()), (200, 0));
    let (status, body) = vic.get("/api/series?site=plant-a&asset=line1/press-01&kind=CYCLE&name=cycle&from_ms=0&to_ms=9999999999999").await;
    assert_eq!(status, 403, "{body}");
    let fleet = eventually("vic's fleet", async || {
        let (_, body) = vic.get("/api/fleet").await;
        let agents = body["agents"].as_array()?.clone();
        (!agents.is_empty()).then_some(agents)
    })
    .await;
    assert!(fleet.iter().all(|a| a["site"] == "plant-b"), "{fleet:?}");
    let (_, body) = ana.get("/api/fleet").await;
    assert_eq!(body["agents"].as_array().unwrap().len(), 2, "{body}");

    // The alert's page: evidence from the events, the technique named.
    let (status, body) = ana.get(&format!("/api/alerts/{}", a1.id)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["evidence"][0]["seq"], 30);
    assert_eq!(body["evidence"][0]["value"], 15_000.0);
    assert_eq!(body["technique"]["id"], "T0836");

    // The series of the asset, oldest first.
    let (status, body) = ana
        .get(&format!(
            "/api/series?site=plant-a&asset=line1/press-01&kind=CYCLE&name=cycle&from_ms={}&to_ms={}",
            T0 / 1_000_000,
            T0 / 1_000_000 + 3_600_000
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let t = body["t"].as_array().unwrap();
    assert_eq!(t.len(), 30);
    assert!(t[0].as_i64() < t[29].as_i64());
    let (status, body) = ana
        .get("/api/series?site=plant-a&asset=x&kind=DROP&name=c&from_ms=0&to_ms=1")
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("kind"), "{body}");
    let (status, body) = ana.get("/api/alerts?colour=red").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");

    // Changes: a viewer cannot; a request without the CSRF token cannot;
    // an analyst of another site cannot even see the alert.
    let ack = format!("/api/alerts/{}/ack", b1.id);
    let (status, body) = vic.send("POST", &ack, Some(json!({"comment": "x"}))).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("viewer"), "{body}");
    let csrf = ana.csrf.take();
    let (status, body) = ana.send("POST", &ack, None).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("CSRF"), "{body}");
    ana.csrf = csrf;
    let (status, _) = bob
        .send("POST", &format!("/api/alerts/{}/ack", a1.id), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = bob
        .send(
            "POST",
            "/api/suppressions",
            Some(json!({"site": "plant-a", "for_secs": 60, "reason": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = ana
        .send("POST", &ack, Some(json!({"comment": "on it"})))
        .await;
    assert_eq!(status, 200, "{body}");
    let acked = eventually("the ack in the alerts history", async || {
        let (_, body) = vic.get(&format!("/api/alerts/{}", b1.id)).await;
        (body["alert"]["state"] == "acked").then_some(body)
    })
    .await;
    assert_eq!(acked["alert"]["state_by"], "dashboard:ana");
    assert_eq!(acked["alert"]["comment"], "on it");
    assert_eq!(acked["changes"].as_array().unwrap().len(), 2);
    // A comment alone changes no state; the alert's page shows it.
    let (status, body) = ana
        .send(
            "POST",
            &format!("/api/alerts/{}/comment", b1.id),
            Some(json!({"comment": "vendor called back"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let commented = eventually("the comment in the audit", async || {
        let (_, body) = vic.get(&format!("/api/alerts/{}", b1.id)).await;
        let changes = body["changes"].as_array()?.clone();
        changes
            .iter()
            .any(|c| c["state"] == "comment" && c["comment"] == "vendor called back")
            .then_some(body)
    })
    .await;
    assert_eq!(commented["alert"]["state"], "acked");
    let (status, _) = vic
        .send(
            "POST",
            &format!("/api/alerts/{}/comment", b1.id),
            Some(json!({"comment": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    // A second ack is refused with the reason.
    let (status, body) = ana.send("POST", &ack, None).await;
    assert_eq!(status, 409);
    assert!(
        body["error"].as_str().unwrap().contains("already acked"),
        "{body}"
    );

    // Live: vic's stream carries plant-b's new alert, not plant-a's.
    let mut live = reqwest::Client::new()
        .get(format!("{base}/api/live"))
        .header("cookie", vic.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a2 = alert(
        "00000000000000a2",
        "plant-a",
        "line1/press-01",
        T0 + 400_000_000_000,
        30,
    );
    let b2 = alert(
        "00000000000000b2",
        "plant-b",
        "line2/mill-07",
        T0 + 400_000_000_000,
        30,
    );
    otwatch_testkit::append_alerts(log, &[a2, b2]).await;
    let mut received = String::new();
    while !received.contains("00000000000000b2") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), live.chunk())
            .await
            .expect("a live alert within 20 s")
            .unwrap()
            .expect("the stream stays open");
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(received.contains("event: alert"), "{received}");
    assert!(!received.contains("00000000000000a2"), "{received}");

    // Failed sign-ins: refused alike, locked out, and audited.
    for _ in 0..3 {
        let (status, _) = Client::new(&base)
            .send(
                "POST",
                "/api/signin",
                Some(json!({"user": "ana", "password": "guess"})),
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, body) = Client::new(&base)
        .send(
            "POST",
            "/api/signin",
            Some(json!({"user": "ana", "password": "ana-pw"})),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let audited = eventually("the failed sign-ins in the audit", async || {
        let rows = otwatch_history::query(
            &crate::history_dir(dir.path()),
            "SELECT count(*) AS n FROM audit WHERE command = 'dashboard.signin_failed'",
        )
        .await
        .ok()?;
        let n = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(
            rows[0].column(0),
        )
        .value(0);
        (n == 3).then_some(n)
    })
    .await;
    assert_eq!(audited, 3);

    // Signing out ends the session.
    let (status, _) = ana.send("POST", "/api/signout", None).await;
    assert_eq!(status, 204);
    let (status, _) = ana.get("/api/session").await;
    assert_eq!(status, 401);
    drop(live);
    service.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn over_tls_with_the_collector_certificate_the_cookie_is_secure_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    otwatch_pki::init(&pki).unwrap();
    otwatch_pki::issue(
        &pki,
        &otwatch_pki::Subject::Collector {
            hosts: vec!["127.0.0.1".into()],
        },
        otwatch_pki::LEAF_VALIDITY,
    )
    .unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        insecure_loopback: true,
        outputs: Vec::new(),
        dashboard_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    config.dashboard.users = vec![user("ana", "ana-pw", Role::Analyst, None)];
    config.dashboard.tls = Some(super::DashboardTlsConfig {
        cert: pki.join(otwatch_pki::COLLECTOR_CERT),
        key: pki.join(otwatch_pki::COLLECTOR_KEY),
    });
    let service = Service::start(config.clone()).await.unwrap();
    let addr = service.dashboard_addr.unwrap();
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(pki.join(otwatch_pki::CA_CERT)).unwrap())
            .unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let answer = https
        .post(format!("https://{addr}/api/signin"))
        .header("content-type", "application/json")
        .body(r#"{"user":"ana","password":"ana-pw"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plaintext HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/api/session"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    service.stop(Duration::from_secs(5)).await.unwrap();

    // A key that does not go with the certificate stops the start, named.
    config.dashboard.tls.as_mut().unwrap().key = pki.join(otwatch_pki::CA_KEY);
    config.data_dir = dir.path().join("data2");
    let e = format!("{:#}", Service::start(config).await.err().unwrap());
    assert!(
        e.contains("[dashboard.tls]") && e.contains("ca-key.pem"),
        "{e}"
    );
}
