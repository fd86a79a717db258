//! The endpoint itself: the accept loop, each connection's login (TLS
//! check, SCRAM-SHA-256), its session and cancel requests.
//!
//! A connection goes through:
//!
//! 1. admission: at most `sql.max_connections` connections at once
//!    (handshakes and idle pooled connections included); one more is told
//!    `53300 too many connections` and closed (a few such refusals are
//!    answered at once; beyond them a connection is closed unanswered);
//! 2. TLS, when the client asks for it (`SSLRequest`, or TLS at once with
//!    ALPN `postgresql`); with `require_tls` a client that did not is
//!    refused at its startup message (`28000`, naming `sslmode=require`);
//! 3. SCRAM-SHA-256 against the user's verifier ([`crate::scram`]). A
//!    wrong password and an unknown user get the same answer
//!    (`28P01 password authentication failed for user …`), logged at warn
//!    with the peer address; the whole startup has 60 s (pgwire's limit);
//! 4. a session of its own ([`crate::session`]) and a process id and
//!    secret for cancel requests; then queries ([`crate::handler`]).
//!
//! Stopping ([`SqlEndpoint::serve`]'s `stop`) closes the listener and every
//! open connection at once: nothing is written here, so nothing is lost;
//! clients see the connection closed and reconnect.

use crate::config::SqlEndpointConfig;
use crate::handler::{Limits, Queries};
use crate::session::{connection_context, ConnSession};
use crate::users::{Access, Users};
use crate::{scram, SqlError};
use datafusion::prelude::SessionContext;
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use ring::rand::SecureRandom;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Connections over `max_connections` that are still told why they are
/// refused; more are closed without a word.
const REFUSALS_ANSWERED: usize = 16;
/// Longest an over-the-limit connection is kept to be told so.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The Postgres wire endpoint, opened and ready to serve.
pub struct SqlEndpoint {
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
}

/// What every connection shares.
struct Shared {
    users: Users,
    /// The history session every connection's context derives from.
    base: SessionContext,
    queries: Arc<Queries>,
    cancels: Arc<Cancels>,
    require_tls: bool,
    /// Per-endpoint secret that makes unknown users' SCRAM salts stable.
    mock_key: [u8; 32],
    pids: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
}

impl SqlEndpoint {
    /// Loads the TLS certificate and key and the users, and opens the
    /// history at `history_root`: any file that cannot be used is an error
    /// naming it, and nothing listens. `config` should have passed
    /// [`SqlEndpointConfig::validate`].
    pub async fn open(
        config: &SqlEndpointConfig,
        history_root: &Path,
    ) -> Result<SqlEndpoint, SqlError> {
        config.validate(None)?;
        let tls = config.tls.as_ref().map(|t| t.acceptor()).transpose()?;
        let users = Users::load(&config.users, config.users_file.as_deref())?;
        if users.is_empty() {
            return Err(SqlError::Config {
                key: "sql.users".into(),
                detail:
                    "is empty: nobody could connect; add [[sql.users]] or entries to sql.users_file"
                        .into(),
            });
        }
        let base = otwatch_history::session_with(history_root, &config.history_limits()).await?;
        let mut mock_key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut mock_key)
            .expect("the system's random generator works");
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        let shared = Shared {
            users,
            base,
            queries: Arc::new(Queries::new(Limits {
                query_timeout: config.query_timeout,
                max_rows: config.max_rows,
                memory_limit: config.memory_limit,
            })),
            cancels: Arc::default(),
            require_tls: config.requires_tls(),
            mock_key,
            pids: RandomPidSecretKeyGenerator::default(),
            parameters,
        };
        Ok(SqlEndpoint {
            shared: Arc::new(shared),
            tls,
            max_connections: config.max_connections,
        })
    }

    /// Whether the endpoint speaks TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether it refuses plaintext connections.
    pub fn requires_tls(&self) -> bool {
        self.shared.require_tls
    }

    /// How many users may log in.
    pub fn users(&self) -> usize {
        self.shared.users.len()
    }

    /// Serves connections from `listener` until `stop` completes, then
    /// closes every connection and returns.
    pub async fn serve(self, listener: TcpListener, stop: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let refusals = Arc::new(Semaphore::new(REFUSALS_ANSWERED));
        let mut connections = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors, a connection reset
                            // before it was taken: pause, keep serving.
                            tracing::warn!(error = %e, "the SQL endpoint could not accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if let Ok(permit) = permits.clone().try_acquire_owned() {
                        let handlers = ConnectionHandlers {
                            startup: Arc::new(Login::new(self.shared.clone(), peer)),
                            queries: self.shared.queries.clone(),
                            cancels: self.shared.cancels.clone(),
                        };
                        let tls = self.tls.clone();
                        connections.spawn(async move {
                            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                                tracing::debug!(%peer, error = %e, "SQL connection ended with an error");
                            }
                            drop(permit);
                        });
                    } else if let Ok(slot) = refusals.clone().try_acquire_owned() {
                        tracing::warn!(%peer, max_connections = self.max_connections, "SQL connection refused: sql.max_connections are open");
                        let refusal = Refusal { max_connections: self.max_connections };
                        let tls = self.tls.clone();
                        connections.spawn(async move {
                            let _ = tokio::time::timeout(
                                REFUSAL_TIMEOUT,
                                pgwire::tokio::process_socket(socket, tls, refusal),
                            )
                            .await;
                            drop(slot);
                        });
                    } else {
                        tracing::debug!(%peer, "SQL connection closed unanswered: too many connections and refusals at once");
                        drop(socket);
                    }
                }
            }
        }
        connections.shutdown().await;
    }
}

/// One connection's handlers: its own login state, the shared rest.
struct ConnectionHandlers {
    startup: Arc<Login>,
    queries: Arc<Queries>,
    cancels: Arc<Cancels>,
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancels.clone()
    }
}

/// Where a connection's login stands.
enum LoginState {
    /// Waiting for the startup message.
    Startup,
    /// SASL offered; waiting for the client-first message.
    ClientFirst { user: String },
    /// Waiting for the client-final message.
    ClientFinal {
        user: String,
        exchange: Box<scram::ServerFirstSent>,
    },
    /// Logged in (or refused).
    Done,
}

/// The startup handler of one connection.
struct Login {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: tokio::sync::Mutex<LoginState>,
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

impl Login {
    fn new(shared: Arc<Shared>, peer: SocketAddr) -> Login {
        Login {
            shared,
            peer,
            state: tokio::sync::Mutex::new(LoginState::Startup),
        }
    }

    /// Opens the session of a user who proved their password.
    async fn open_session<C: ClientInfo>(
        &self,
        client: &mut C,
        access: Access,
    ) -> PgWireResult<()> {
        let ctx = connection_context(&self.shared.base, &access)
            .await
            .map_err(|e| fatal("XX000", format!("cannot open a SQL session: {e}")))?;
        let (pid, secret) = self.shared.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (cancel, cancel_guard) = self.shared.cancels.register(pid, secret);
        tracing::info!(
            user = %access.user,
            peer = %self.peer,
            tls = client.is_secure(),
            sites = ?access.sites.as_deref(),
            "SQL client logged in"
        );
        client.session_extensions().insert(ConnSession {
            access,
            peer: self.peer,
            ctx,
            cancel,
            _cancel_guard: cancel_guard,
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut state = self.state.lock().await;
        match (std::mem::replace(&mut *state, LoginState::Done), message) {
            (LoginState::Startup, PgWireFrontendMessage::Startup(startup)) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                if self.shared.require_tls && !client.is_secure() {
                    tracing::info!(peer = %self.peer, "SQL connection refused: it did not use TLS (sql.require_tls)");
                    return Err(fatal(
                        "28000",
                        "the otwatch SQL endpoint requires TLS: connect with sslmode=require (or verify-full with the endpoint's CA)",
                    ));
                }
                let Some(user) = client.metadata().get(METADATA_USER).cloned() else {
                    return Err(fatal("28000", "no user name in the startup message"));
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![scram::MECHANISM.to_owned()],
                    )))
                    .await?;
                *state = LoginState::ClientFirst { user };
                Ok(())
            }
            (
                LoginState::ClientFirst { user },
                PgWireFrontendMessage::PasswordMessageFamily(msg),
            ) => {
                let initial = msg.into_sasl_initial_response()?;
                if initial.auth_method != scram::MECHANISM {
                    return Err(fatal(
                        "28000",
                        format!(
                            "SASL mechanism {:?} is not offered; use SCRAM-SHA-256",
                            initial.auth_method
                        ),
                    ));
                }
                let data = initial.data.unwrap_or_default();
                let verifier = self.shared.users.get(&user).map(|(v, _)| v);
                let (server_first, exchange) =
                    scram::server_first(&data, &user, verifier, &self.shared.mock_key)
                        .map_err(|e| self.refused(&user, e))?;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(server_first.into_bytes().into()),
                    ))
                    .await?;
                *state = LoginState::ClientFinal {
                    user,
                    exchange: Box::new(exchange),
                };
                Ok(())
            }
            (
                LoginState::ClientFinal { user, exchange },
                PgWireFrontendMessage::PasswordMessageFamily(msg),
            ) => {
                let response = msg.into_sasl_response()?;
                let server_final = exchange
                    .client_final(&response.data)
                    .map_err(|e| self.refused(&user, e))?;
                client
                    .feed(PgWireBackendMessage::Authentication(
                        Authentication::SASLFinal(server_final.into_bytes().into()),
                    ))
                    .await?;
                let (_, access) = self
                    .shared
                    .users
                    .get(&user)
                    .expect("a proof only succeeds for a configured user");
                self.open_session(client, access.clone()).await?;
                finish_authentication(client, &self.shared.parameters).await
            }
            (_, _) => Err(fatal("08P01", "unexpected message during login")),
        }
    }
}

impl Login {
    /// Logs a failed login and makes the client's error; a wrong password
    /// and an unknown user read the same.
    fn refused(&self, user: &str, why: scram::ScramError) -> PgWireError {
        match why {
            scram::ScramError::WrongPassword => {
                tracing::warn!(user, peer = %self.peer, "SQL login refused: wrong password or unknown user");
                fatal(
                    "28P01",
                    format!("password authentication failed for user {user:?}"),
                )
            }
            scram::ScramError::Protocol(detail) => {
                tracing::info!(user, peer = %self.peer, detail, "SQL login refused: SCRAM protocol error");
                fatal(
                    "08P01",
                    format!("SCRAM-SHA-256 authentication failed: {detail}"),
                )
            }
        }
    }
}

/// Answers a connection beyond `max_connections` and closes it.
struct Refusal {
    max_connections: usize,
}

struct RefusalStartup {
    max_connections: usize,
}

impl PgWireServerHandlers for Refusal {
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(RefusalStartup {
            max_connections: self.max_connections,
        })
    }
}

#[async_trait::async_trait]
impl StartupHandler for RefusalStartup {
    async fn on_startup<C>(
        &self,
        _client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(fatal(
            "53300",
            format!(
                "too many connections: the otwatch SQL endpoint serves sql.max_connections = {} at once; close idle ones or try again",
                self.max_connections
            ),
        ))
    }
}

/// Cancel requests: each logged-in connection's process id and secret, and
/// the signal its running statement watches.
#[derive(Default)]
pub(crate) struct Cancels {
    connections: Mutex<HashMap<i32, (SecretKey, watch::Sender<u64>)>>,
}

/// Removes a connection from [`Cancels`] when its session ends.
pub(crate) struct CancelGuard {
    cancels: Arc<Cancels>,
    pid: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.cancels.connections.lock().unwrap().remove(&self.pid);
    }
}

impl Cancels {
    fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: SecretKey,
    ) -> (watch::Receiver<u64>, CancelGuard) {
        let (tx, rx) = watch::channel(0);
        self.connections.lock().unwrap().insert(pid, (secret, tx));
        (
            rx,
            CancelGuard {
                cancels: self.clone(),
                pid,
            },
        )
    }
}

#[async_trait::async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let connections = self.connections.lock().unwrap();
        match connections.get(&request.pid) {
            Some((secret, signal)) if secret.eq_value(&request.secret_key) => {
                signal.send_modify(|n| *n += 1);
                tracing::info!(
                    pid = request.pid,
                    "SQL statement cancelled at the client's request"
                );
            }
            _ => tracing::debug!(
                pid = request.pid,
                "cancel request for no connection of ours"
            ),
        }
    }
}
