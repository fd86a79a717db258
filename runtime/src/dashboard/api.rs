//! The dashboard's JSON API; `docs/dashboard-api.yaml` (OpenAPI 3) is its
//! reference, and the suite checks the server against it.
//!
//! Reads are SQL over the history (the tables `otwatch sql` shows) and the
//! detector's model status; decisions are control-plane requests, the same
//! `alert.ack`, `alert.suppress`, `model.accept`, … the CLI sends over the
//! admin socket. Alerts travel in their JSON form
//! ([`crate::outputs::alert_json`]), as every output sends them.
//!
//! Errors are `{"error": "..."}` with 400 (a parameter is wrong, named),
//! 401 (not signed in), 403 (not allowed: role, site or CSRF token), 404,
//! 409 (the decision was refused, with the reason), 429 (sign-in locked
//! out) or 500/503.

use super::assets;
use super::auth::{self, Session, SigninRefused, CSRF_HEADER};
use super::{Peer, Shared, MAX_BODY_BYTES, QUERY_TIMEOUT};
use crate::admin::{Answer, Request};
use arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

type AppState = Arc<Shared>;

/// The longest text parameter (site, asset, tag name, comment) accepted.
const MAX_PARAM_CHARS: usize = 1000;
/// The largest `limit` taken (the server's `max_rows` applies below it).
const MAX_LIMIT: usize = 1_000_000_000;
/// Events of an alert's evidence returned at most.
const MAX_EVIDENCE: usize = 500;

/// The routes.
pub fn router(shared: AppState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/api/signin", post(sign_in))
        .route("/api/signout", post(sign_out))
        .route("/api/session", get(session))
        .route("/api/alerts", get(alerts))
        .route("/api/alerts/{id}", get(alert))
        .route("/api/alerts/{id}/ack", post(ack))
        .route("/api/alerts/{id}/resolve", post(resolve))
        .route("/api/alerts/{id}/accept", post(accept))
        .route("/api/alerts/{id}/comment", post(comment))
        .route("/api/suppressions", post(suppress))
        .route("/api/assets", get(assets_list))
        .route("/api/asset", get(asset))
        .route("/api/series", get(series))
        .route("/api/relearn", post(relearn))
        .route("/api/fleet", get(fleet))
        .route("/api/overview", get(overview))
        .route("/api/live", get(live))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or API call") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(shared)
}

/// Headers on every answer: the page runs only its own scripts and styles,
/// cannot be framed, and API answers are never cached.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %e, "dashboard: a request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad(format!("query parameters: {}", e.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        // A missing content type is a bad request like any other.
        let status = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, format!("request body: {}", e.body_text()))
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// A signed-in user.
pub struct Me(pub Session);

impl FromRequestParts<AppState> for Me {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Me, ApiError> {
        let token = session_token(&parts.headers)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"))?;
        state.auth.session(token).map(Me).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the session has ended: sign in again",
            )
        })
    }
}

/// A signed-in analyst whose request carries the session's CSRF token:
/// what every state change needs.
pub struct Analyst(pub Session);

impl FromRequestParts<AppState> for Analyst {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Analyst, ApiError> {
        let Me(session) = Me::from_request_parts(parts, state).await?;
        check_csrf(&parts.headers, &session)?;
        if session.role != super::Role::Analyst {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} is a viewer: only analysts change alerts and models",
                    session.user
                ),
            ));
        }
        Ok(Analyst(session))
    }
}

fn check_csrf(headers: &HeaderMap, session: &Session) -> Result<(), ApiError> {
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth::same_token(sent, &session.csrf) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token header (GET /api/session gives it)",
        ))
    }
}

fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::token_from_cookies)
}

fn me_json(session: &Session) -> Value {
    json!({
        "user": session.user,
        "role": session.role,
        "sites": session.sites,
        "csrf": session.csrf,
    })
}

// ---------------------------------------------------------------- sign-in

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signin {
    user: String,
    password: String,
}

async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    body: Result<Json<Signin>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(signin) = body?;
    if signin.user.chars().count() > 63 || signin.password.len() > 1024 {
        return Err(ApiError::bad("user or password too long"));
    }
    match state
        .auth
        .sign_in(&signin.user, &signin.password, peer.ip())
        .await
    {
        Ok((token, session)) => {
            tracing::info!(user = %session.user, %peer, "dashboard: signed in");
            let cookie = auth::session_cookie(&token, state.config.session_ttl, state.secure);
            Ok(([(header::SET_COOKIE, cookie)], Json(me_json(&session))).into_response())
        }
        Err(SigninRefused::BadCredentials) => {
            tracing::warn!(user = %signin.user, %peer, "dashboard: sign-in failed");
            let args = json!({ "user": signin.user, "peer": peer.ip().to_string() });
            if let Err(e) = state
                .control
                .record("dashboard.signin_failed", "dashboard", args)
                .await
            {
                tracing::error!(error = %e, "dashboard: cannot audit a failed sign-in");
            }
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong user name or password",
            ))
        }
        Err(SigninRefused::Locked { retry_after }) => {
            let secs = retry_after.as_secs().max(1);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins: try again in {secs} s"),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            Ok(response)
        }
    }
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = session_token(&headers) {
        if let Some(session) = state.auth.session(token) {
            if check_csrf(&headers, &session).is_err() {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token header",
                )
                .into_response();
            }
        }
        state.auth.sign_out(token);
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::cleared_cookie(state.secure))],
    )
        .into_response()
}

async fn session(Me(me): Me) -> Json<Value> {
    Json(me_json(&me))
}

// ---------------------------------------------------------------- SQL helpers

/// A string as an SQL literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A text parameter, checked: not empty, not too long, no control
/// characters.
fn text<'a>(name: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.is_empty()
        || value.chars().count() > MAX_PARAM_CHARS
        || value.chars().any(char::is_control)
    {
        return Err(ApiError::bad(format!(
            "{name} must be 1 to {MAX_PARAM_CHARS} printable characters"
        )));
    }
    Ok(value)
}

/// `AND site IN (…)` for a user limited to sites; empty otherwise.
fn site_clause(me: &Session) -> String {
    match &me.sites {
        None => String::new(),
        Some(sites) => format!(
            " AND site IN ({})",
            sites
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn forbidden_site(site: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("site {site} is not one of your sites"),
    )
}

/// The largest time in ms the API takes either way (about the year 2255;
/// nanosecond timestamps end in 2262).
const MAX_TIME_MS: i64 = 9_000_000_000_000;

fn ms_to_ns(name: &str, ms: i64) -> Result<i64, ApiError> {
    if ms.abs() > MAX_TIME_MS {
        return Err(ApiError::bad(format!(
            "{name} = {ms} is out of range: give milliseconds since 1970 between -{MAX_TIME_MS} and {MAX_TIME_MS}"
        )));
    }
    Ok(ms * 1_000_000)
}

async fn query(state: &Shared, sql: &str) -> Result<Vec<RecordBatch>, ApiError> {
    let config = otwatch_history::SqlConfig::default();
    match tokio::time::timeout(
        QUERY_TIMEOUT,
        otwatch_history::query_with(&state.history, sql, &config),
    )
    .await
    {
        Ok(Ok(batches)) => Ok(batches),
        Ok(Err(e)) => Err(ApiError::internal(format!("history query failed: {e}"))),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the history query took longer than {} s; narrow the time range",
                QUERY_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Rows as JSON objects, nulls included.
fn rows(batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for b in batches {
        writer.write(b).map_err(ApiError::internal)?;
    }
    writer.finish().map_err(ApiError::internal)?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(ApiError::internal)
}

fn alerts_json(batches: &[RecordBatch]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for b in batches {
        for alert in otwatch_proto::arrow::batch_to_alerts(b).map_err(ApiError::internal)? {
            out.push(crate::outputs::alert_json(&alert));
        }
    }
    Ok(out)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------- alerts

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertFilter {
    site: Option<String>,
    asset: Option<String>,
    detector: Option<String>,
    severity: Option<String>,
    /// open, acked, resolved, suppressed; several separated by commas.
    state: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<usize>,
}

async fn alerts(
    State(state): State<AppState>,
    Me(me): Me,
    filter: Result<Query<AlertFilter>, QueryRejection>,
) -> ApiResult {
    let Query(f) = filter?;
    let mut inner = vec!["TRUE".to_string()];
    if let Some(s) = &f.severity {
        if !["low", "medium", "high", "critical"].contains(&s.as_str()) {
            return Err(ApiError::bad(format!(
                "severity {s:?} is not one of low, medium, high, critical"
            )));
        }
    }
    for (column, value) in [
        ("site", &f.site),
        ("asset", &f.asset),
        ("detector", &f.detector),
        ("severity", &f.severity),
    ] {
        if let Some(v) = value {
            inner.push(format!("{column} = {}", quote(text(column, v)?)));
        }
    }
    if let Some(from) = f.from_ms {
        inner.push(format!(
            "ts >= to_timestamp_nanos({})",
            ms_to_ns("from_ms", from)?
        ));
    }
    if let Some(to) = f.to_ms {
        inner.push(format!(
            "ts < to_timestamp_nanos({})",
            ms_to_ns("to_ms", to)?
        ));
    }
    let mut outer = String::new();
    if let Some(states) = &f.state {
        let list: Vec<&str> = states.split(',').map(str::trim).collect();
        for s in &list {
            if ![
                otwatch_proto::arrow::state::OPEN,
                otwatch_proto::arrow::state::ACKED,
                otwatch_proto::arrow::state::RESOLVED,
                otwatch_proto::arrow::state::SUPPRESSED,
            ]
            .contains(s)
            {
                return Err(ApiError::bad(format!(
                    "state {s:?} is not one of open, acked, resolved, suppressed"
                )));
            }
        }
        outer = format!(
            " AND coalesce(state, 'open') IN ({})",
            list.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
        );
    }
    if f.limit.is_some_and(|l| l > MAX_LIMIT) {
        return Err(ApiError::bad(format!("limit must be at most {MAX_LIMIT}")));
    }
    let limit = f
        .limit
        .unwrap_or(state.config.max_rows)
        .clamp(1, state.config.max_rows);
    let sql = format!(
        "SELECT * FROM ({}) WHERE TRUE{outer} ORDER BY ts DESC, id LIMIT {}",
        crate::admin::alerts::latest_alerts_sql(&format!(
            "{}{}",
            inner.join(" AND "),
            site_clause(&me)
        )),
        limit + 1
    );
    let mut list = alerts_json(&query(&state, &sql).await?)?;
    let truncated = list.len() > limit;
    list.truncate(limit);
    Ok(Json(json!({ "alerts": list, "truncated": truncated })))
}

/// The alert `id` as the user may see it: its latest row.
async fn visible_alert(state: &Shared, me: &Session, id: &str) -> Result<Value, ApiError> {
    let id = text("id", id)?;
    let sql = format!(
        "SELECT * FROM ({}) LIMIT 1",
        crate::admin::alerts::latest_alerts_sql(&format!("id = {}{}", quote(id), site_clause(me)))
    );
    alerts_json(&query(state, &sql).await?)?
        .pop()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no alert {id}")))
}

async fn alert(State(state): State<AppState>, Me(me): Me, Path(id): Path<String>) -> ApiResult {
    let alert = visible_alert(&state, &me, &id).await?;
    let changes = rows(
        &query(
            &state,
            &format!(
                "SELECT coalesce(state, 'open') AS state, state_by, CAST(coalesce(state_at, ts) AS BIGINT) / 1000000 AS at_ms, comment \
                 FROM alerts WHERE id = {} ORDER BY coalesce(state_at, ts)",
                quote(&id)
            ),
        )
        .await?,
    )?;
    // Comments alone (`alert.comment`) live in the audit.
    let comments = rows(
        &query(
            &state,
            &format!(
                "SELECT CAST(ts AS BIGINT) / 1000000 AS at_ms, user AS state_by, args FROM audit \
                 WHERE command = 'alert.comment' AND alert_id = {} ORDER BY ts",
                quote(&id)
            ),
        )
        .await?,
    )?;
    let mut changes = changes;
    for c in comments {
        let text = serde_json::from_str::<Value>(c["args"].as_str().unwrap_or("{}"))
            .ok()
            .and_then(|a| a["comment"].as_str().map(str::to_string));
        changes.push(json!({
            "state": "comment",
            "state_by": c["state_by"],
            "at_ms": c["at_ms"],
            "comment": text,
        }));
    }
    changes.sort_by_key(|c| c["at_ms"].as_i64().unwrap_or(0));
    let (site, agent) = (
        alert["site"].as_str().unwrap_or_default(),
        alert["agent"].as_str().unwrap_or_default(),
    );
    let (first, last) = (
        alert["first_seq"].as_u64().unwrap_or(0),
        alert["last_seq"].as_u64().unwrap_or(0),
    );
    let evidence = rows(
        &query(
            &state,
            &format!(
                "SELECT seq, CAST(ts AS BIGINT) / 1000000 AS ts_ms, CAST(received AS BIGINT) / 1000000 AS received_ms, \
                   asset, kind, name, value, text, attrs \
                 FROM events WHERE site = {} AND agent = {} AND seq BETWEEN {first} AND {last} \
                 ORDER BY seq LIMIT {}",
                quote(site),
                quote(agent),
                MAX_EVIDENCE + 1
            ),
        )
        .await?,
    )?;
    let truncated = evidence.len() > MAX_EVIDENCE;
    let technique = alert["technique"].as_str().unwrap_or_default();
    let attack = crate::outputs::attack_ics(technique)
        .map(|(name, tactics)| json!({ "id": technique, "name": name, "tactics": tactics }));
    Ok(Json(json!({
        "alert": alert,
        "changes": changes,
        "evidence": evidence.into_iter().take(MAX_EVIDENCE).collect::<Vec<_>>(),
        "evidence_truncated": truncated,
        "technique": attack,
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Comment {
    comment: Option<String>,
}

/// Sends a decision to the control plane under the user's name.
async fn decide(state: &Shared, me: &Session, request: Request) -> ApiResult {
    let answer: Answer = state.control.answer(request, &me.audit_name()).await;
    if answer.ok {
        Ok(Json(json!({ "id": answer.id, "detail": answer.detail })))
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            answer.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

fn too_large(e: axum::extract::rejection::BytesRejection) -> ApiError {
    ApiError::new(e.status(), format!("request body: {}", e.body_text()))
}

/// The optional `{"comment": ...}` body of an ack or resolve.
fn comment_of(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let c: Comment =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))?;
    Ok(c.comment.filter(|c| !c.is_empty()))
}

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

async fn ack(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    change_state(&state, &me, id, body, |alert_id, comment| {
        Request::AlertAck { alert_id, comment }
    })
    .await
}

async fn resolve(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult {
    change_state(&state, &me, id, body, |alert_id, comment| {
        Request::AlertResolve { alert_id, comment }
    })
    .await
}

/// An ack or a resolve of an alert the user sees, with the body's comment.
async fn change_state(
    state: &Shared,
    me: &Session,
    id: String,
    body: Body,
    request: impl FnOnce(String, Option<String>) -> Request,
) -> ApiResult {
    visible_alert(state, me, &id).await?;
    let comment = comment_of(&body.map_err(too_large)?)?;
    decide(state, me, request(id, comment)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentText {
    comment: String,
}

async fn comment(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    Path(id): Path<String>,
    body: Result<Json<CommentText>, JsonRejection>,
) -> ApiResult {
    let Json(c) = body?;
    visible_alert(&state, &me, &id).await?;
    decide(
        &state,
        &me,
        Request::AlertComment {
            alert_id: id,
            comment: c.comment,
        },
    )
    .await
}

async fn accept(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    Path(id): Path<String>,
) -> ApiResult {
    visible_alert(&state, &me, &id).await?;
    decide(&state, &me, Request::ModelAccept { alert_id: id }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suppress {
    site: String,
    asset: Option<String>,
    detector: Option<String>,
    #[serde(deserialize_with = "whole_number")]
    for_secs: u64,
    reason: String,
}

/// A count that JSON may write as `7200` or `7200.0` (both are integers to
/// JSON Schema and to JavaScript).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number of seconds"
        ))),
    }
}

async fn suppress(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    body: Result<Json<Suppress>, JsonRejection>,
) -> ApiResult {
    let Json(s) = body?;
    if !me.sees(&s.site) {
        return Err(forbidden_site(&s.site));
    }
    decide(
        &state,
        &me,
        Request::AlertSuppress {
            site: s.site,
            asset: s.asset,
            detector: s.detector,
            for_secs: s.for_secs,
            reason: s.reason,
        },
    )
    .await
}

// ---------------------------------------------------------------- assets

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFilter {
    site: Option<String>,
}

/// The detector's model status of the assets the user sees.
async fn model_status(
    state: &Shared,
    me: &Session,
    site: Option<String>,
    asset: Option<String>,
) -> Result<Vec<otwatch_detector::AssetReport>, ApiError> {
    if let Some(site) = &site {
        if !me.sees(site) {
            return Err(forbidden_site(site));
        }
    }
    let answer = state
        .control
        .answer(Request::ModelStatus { site, asset }, &me.audit_name())
        .await;
    if !answer.ok {
        let error = answer.error.unwrap_or_default();
        let status = if error.contains("not one the detector has seen") || error.contains("unknown")
        {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Err(ApiError::new(status, error));
    }
    Ok(answer
        .assets
        .unwrap_or_default()
        .into_iter()
        .filter(|a| me.sees(&a.site))
        .collect())
}

async fn assets_list(
    State(state): State<AppState>,
    Me(me): Me,
    filter: Result<Query<SiteFilter>, QueryRejection>,
) -> ApiResult {
    let Query(f) = filter?;
    let assets = model_status(&state, &me, f.site, None).await?;
    Ok(Json(json!({ "assets": assets })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssetRef {
    site: String,
    asset: String,
}

async fn asset(
    State(state): State<AppState>,
    Me(me): Me,
    params: Result<Query<AssetRef>, QueryRejection>,
) -> ApiResult {
    let Query(a) = params?;
    let (site, name) = (text("site", &a.site)?, text("asset", &a.asset)?);
    let report = model_status(&state, &me, Some(site.into()), Some(name.into()))
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("no asset {name} at {site}"))
        })?;
    // The plottable series: cycle times and numeric tags, over the last
    // day of the asset's events.
    let until = report.at_ns.unwrap_or(now_ms() * 1_000_000);
    let series = rows(
        &query(
            &state,
            &format!(
                "SELECT kind, name, count(*) AS points FROM events \
                 WHERE site = {} AND asset = {} AND kind IN ('CYCLE', 'SAMPLE') AND value IS NOT NULL \
                   AND ts >= to_timestamp_nanos({}) \
                 GROUP BY kind, name ORDER BY kind, name",
                quote(site),
                quote(name),
                until.saturating_sub(24 * 3600 * 1_000_000_000)
            ),
        )
        .await?,
    )?;
    let alerts = alerts_json(
        &query(
            &state,
            &format!(
                "SELECT * FROM ({}) ORDER BY ts DESC LIMIT {}",
                crate::admin::alerts::latest_alerts_sql(&format!(
                    "site = {} AND asset = {}",
                    quote(site),
                    quote(name)
                )),
                state.config.max_rows
            ),
        )
        .await?,
    )?;
    Ok(Json(
        json!({ "asset": report, "series": series, "alerts": alerts }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    site: String,
    asset: String,
    /// CYCLE or SAMPLE.
    kind: String,
    name: String,
    from_ms: i64,
    to_ms: i64,
}

/// One series as two columns, `t` (ms) and `v`, oldest first; the newest
/// `max_points` of the range when it holds more.
async fn series(
    State(state): State<AppState>,
    Me(me): Me,
    params: Result<Query<SeriesParams>, QueryRejection>,
) -> ApiResult {
    let Query(p) = params?;
    let (site, asset, name) = (
        text("site", &p.site)?,
        text("asset", &p.asset)?,
        text("name", &p.name)?,
    );
    if !me.sees(site) {
        return Err(forbidden_site(site));
    }
    if p.kind != "CYCLE" && p.kind != "SAMPLE" {
        return Err(ApiError::bad("kind must be CYCLE or SAMPLE"));
    }
    let (from_ns, to_ns) = (ms_to_ns("from_ms", p.from_ms)?, ms_to_ns("to_ms", p.to_ms)?);
    if p.from_ms >= p.to_ms {
        // An empty range holds no points.
        return Ok(Json(json!({ "t": [], "v": [], "truncated": false })));
    }
    let max = state.config.max_points;
    let sql = format!(
        "SELECT CAST(ts AS BIGINT) / 1000000 AS t, value FROM events \
         WHERE site = {} AND asset = {} AND kind = {} AND name = {} AND value IS NOT NULL \
           AND ts >= to_timestamp_nanos({}) AND ts < to_timestamp_nanos({}) \
         ORDER BY ts DESC LIMIT {}",
        quote(site),
        quote(asset),
        quote(&p.kind),
        quote(name),
        from_ns,
        to_ns,
        max + 1
    );
    let batches = query(&state, &sql).await?;
    let mut t = Vec::new();
    let mut v = Vec::new();
    for b in &batches {
        let (ts, vs) = (
            b.column(0).as_any().downcast_ref::<Int64Array>(),
            b.column(1).as_any().downcast_ref::<Float64Array>(),
        );
        let (Some(ts), Some(vs)) = (ts, vs) else {
            return Err(ApiError::internal(
                "the series query returned unexpected types",
            ));
        };
        for i in 0..b.num_rows() {
            if vs.is_valid(i) && vs.value(i).is_finite() {
                t.push(ts.value(i));
                v.push(vs.value(i));
            }
        }
    }
    let truncated = t.len() > max;
    t.truncate(max);
    v.truncate(max);
    t.reverse();
    v.reverse();
    Ok(Json(json!({ "t": t, "v": v, "truncated": truncated })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Relearn {
    site: String,
    asset: Option<String>,
}

async fn relearn(
    State(state): State<AppState>,
    Analyst(me): Analyst,
    body: Result<Json<Relearn>, JsonRejection>,
) -> ApiResult {
    let Json(r) = body?;
    if !me.sees(&r.site) {
        return Err(forbidden_site(&r.site));
    }
    decide(
        &state,
        &me,
        Request::ModelRelearn {
            site: r.site,
            asset: r.asset,
            from_ns: None,
            to_ns: None,
        },
    )
    .await
}

// ---------------------------------------------------------------- fleet, overview

/// Each agent heard from in the last day: when last, how fast now, and
/// whether it is quiet for longer than its usual gap.
async fn fleet(State(state): State<AppState>, Me(me): Me) -> ApiResult {
    let now = now_ms();
    let day_ago = (now - 24 * 3600 * 1000) * 1_000_000;
    let hour_ago = (now - 3600 * 1000) * 1_000_000;
    let five_min_ago = (now - 300 * 1000) * 1_000_000;
    let sql = format!(
        "SELECT site, agent, CAST(max(received) AS BIGINT) / 1000000 AS last_seen_ms, \
           CAST(max(ts) AS BIGINT) / 1000000 AS last_event_ms, max(seq) AS last_seq, \
           count(DISTINCT asset) AS assets, \
           sum(CASE WHEN received >= to_timestamp_nanos({hour_ago}) THEN 1 ELSE 0 END) AS events_last_hour, \
           sum(CASE WHEN received >= to_timestamp_nanos({five_min_ago}) THEN 1 ELSE 0 END) AS events_last_5min \
         FROM events WHERE received >= to_timestamp_nanos({day_ago}){} \
         GROUP BY site, agent ORDER BY site, agent",
        site_clause(&me)
    );
    let mut agents = rows(&query(&state, &sql).await?)?;
    // What the collector knows of each agent now; an agent connected
    // without events in the last day is listed too.
    let live = state.collector.agents.snapshot();
    for status in live.iter().filter(|s| me.sees(&s.site)) {
        if !agents
            .iter()
            .any(|a| a["site"] == status.site.as_str() && a["agent"] == status.agent.as_str())
        {
            agents.push(json!({
                "site": status.site, "agent": status.agent, "last_seen_ms": null,
                "last_event_ms": null, "last_seq": null, "assets": 0,
                "events_last_hour": 0, "events_last_5min": 0,
            }));
        }
    }
    agents.sort_by(|a, b| {
        (a["site"].as_str(), a["agent"].as_str()).cmp(&(b["site"].as_str(), b["agent"].as_str()))
    });
    for a in &mut agents {
        let status = live
            .iter()
            .find(|s| a["site"] == s.site.as_str() && a["agent"] == s.agent.as_str());
        let ms = |ns: Option<i64>| ns.map(|ns| ns / 1_000_000);
        a["version"] = json!(status.and_then(|s| s.version.clone()));
        a["connected"] = json!(status.is_some_and(|s| s.connected));
        a["connected_since_ms"] = json!(ms(status.and_then(|s| s.connected_since_ns)));
        a["queue_backlog"] = json!(status.and_then(|s| s.queue_backlog));
        a["cert_not_after_ms"] = json!(ms(status.and_then(|s| s.cert_not_after_ns)));
        a["peer"] = json!(status.and_then(|s| s.peer.clone()));
        let last_seen = a["last_seen_ms"]
            .as_i64()
            .or(a["connected_since_ms"].as_i64())
            .unwrap_or(0);
        let hour = a["events_last_hour"].as_f64().unwrap_or(0.0);
        let eps = a["events_last_5min"].as_f64().unwrap_or(0.0) / 300.0;
        // Its usual gap: the mean over the last hour; quiet for five of
        // them (and at least 30 s) stands out.
        let usual_gap_ms = if hour > 0.0 {
            3_600_000.0 / hour
        } else {
            f64::INFINITY
        };
        let quiet_ms = (now - last_seen).max(0);
        let silent = quiet_ms as f64 > (5.0 * usual_gap_ms).max(30_000.0) || hour == 0.0;
        a["events_per_second"] = json!(eps);
        a["usual_gap_ms"] = if usual_gap_ms.is_finite() {
            json!(usual_gap_ms)
        } else {
            Value::Null
        };
        a["quiet_ms"] = json!(quiet_ms);
        a["silent"] = json!(silent);
    }
    Ok(Json(json!({ "now_ms": now, "agents": agents })))
}

/// Alerts per site and severity over the last day (up to now, or to the
/// newest alert when the history runs ahead of the clock), and the
/// components with their lag, slowest first.
async fn overview(State(state): State<AppState>, Me(me): Me) -> ApiResult {
    let newest = rows(
        &query(
            &state,
            &format!(
                "SELECT CAST(max(ts) AS BIGINT) / 1000000 AS newest_ms FROM alerts WHERE TRUE{}",
                site_clause(&me)
            ),
        )
        .await?,
    )?;
    let newest_ms = newest
        .first()
        .and_then(|r| r["newest_ms"].as_i64())
        .unwrap_or(0);
    let to_ms = now_ms().max(newest_ms);
    let from_ms = to_ms - 24 * 3600 * 1000;
    let counts = rows(
        &query(
            &state,
            &format!(
                "SELECT site, severity, count(DISTINCT id) AS alerts FROM alerts \
                 WHERE ts >= to_timestamp_nanos({}) AND ts <= to_timestamp_nanos({}){} \
                 GROUP BY site, severity ORDER BY site, severity",
                from_ms * 1_000_000,
                to_ms * 1_000_000,
                site_clause(&me)
            ),
        )
        .await?,
    )?;
    let mut components: Vec<Value> = state
        .health
        .view(state.log.as_ref())
        .into_iter()
        .map(|c| {
            json!({
                "name": c.name,
                "state": c.state.describe(),
                "healthy": c.state.healthy(),
                "topic": c.topic.map(|t| t.name()),
                "lag": c.lag,
                "failures": c.failures,
            })
        })
        .collect();
    components.sort_by_key(|c| std::cmp::Reverse(c["lag"].as_u64().unwrap_or(0)));
    Ok(Json(json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "alerts": counts,
        "components": components,
    })))
}

// ---------------------------------------------------------------- live

/// Alerts of the user's sites as server-sent events, the alert's JSON form
/// as data: `event: alert` for a new one, `event: update` for a change of
/// state; `event: reload` when the page fell behind and should fetch the
/// list again.
async fn live(State(state): State<AppState>, Me(me): Me) -> impl IntoResponse {
    let mut alerts = state.live.subscribe();
    let mut closing = state.closing.subscribe();
    let stream = async_stream(move |tx| async move {
        loop {
            let next = tokio::select! {
                _ = closing.wait_for(|&c| c) => return,
                next = alerts.recv() => next,
            };
            let event = match next {
                Ok(live) if me.sees(&live.site) => Event::default()
                    .event(if live.update { "update" } else { "alert" })
                    .data(live.json.to_string()),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    Event::default().event("reload").data("{}")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A stream fed by a task: `body` sends items into the channel it is
/// given; the stream ends when it returns or the client goes.
fn async_stream<F, Fut>(
    body: F,
) -> tokio_stream::wrappers::ReceiverStream<Result<Event, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
