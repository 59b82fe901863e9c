//! Connection limits the HTTP server lacks on its own: a cap on open connections, and closing
//! connections (HTTP/2 above all) that have had no request in flight for the idle timeout.
//!
//! hyper closes an idle HTTP/1 connection through its header-read timer, but has no idle
//! timeout for HTTP/2: its keep-alive pings only find dead peers, and a live client could hold
//! a connection open forever with one request. So each connection's service is wrapped: it
//! counts the requests in flight and, from the first request on, a small task asks the
//! connection (through axum-server's per-connection handle) to shut down gracefully once it
//! has been idle long enough; an HTTP/2 client then gets a GOAWAY, never a cut stream.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::Request;
use axum_server::ConnectionShutdown;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;

use crate::config::ConnectionSettings;
use crate::metrics::ConnectionGauges;

/// Wraps the make-service of one listener: every accepted connection takes a permit or is
/// refused, and its service tracks how long it has been idle.
#[derive(Clone)]
pub struct LimitConnections<M> {
    inner: M,
    shared: Arc<Shared>,
}

struct Shared {
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    gauges: ConnectionGauges,
    /// Set while the cap is reached, so that the warning is logged once per episode, not
    /// once per refused connection of a flood.
    at_cap: AtomicBool,
    /// The zero of every connection's activity clock.
    epoch: Instant,
}

impl<M> LimitConnections<M> {
    pub fn new(inner: M, settings: ConnectionSettings, gauges: ConnectionGauges) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(settings.max_connections as usize)),
                idle_timeout: settings.idle_timeout,
                gauges,
                at_cap: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        }
    }
}

/// The error that makes axum-server drop a connection over the cap.
#[derive(Debug, thiserror::Error)]
#[error("the connection cap (--max-connections) is reached; connection closed")]
pub struct OverCap;

impl<M, Target> Service<Target> for LimitConnections<M>
where
    M: Service<Target, Error = Infallible>,
    M::Future: Send + 'static,
    M::Response: Send + 'static,
{
    type Response = Tracked<M::Response>;
    type Error = OverCap;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OverCap>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OverCap>> {
        self.inner.poll_ready(cx).map(|ready| match ready {
            Ok(()) => Ok(()),
            Err(never) => match never {},
        })
    }

    fn call(&mut self, target: Target) -> Self::Future {
        let shared = self.shared.clone();
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                shared.at_cap.store(false, Ordering::Relaxed);
                permit
            }
            Err(_) => {
                shared.gauges.refused.inc();
                if !shared.at_cap.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "the connection cap (--max-connections) is reached: new connections are \
                         closed until others end"
                    );
                }
                return Box::pin(std::future::ready(Err(OverCap)));
            }
        };
        let made = self.inner.call(target);
        Box::pin(async move {
            let service = match made.await {
                Ok(service) => service,
                Err(never) => match never {},
            };
            Ok(Tracked {
                inner: service,
                connection: Arc::new(Connection::open(shared, permit)),
            })
        })
    }
}

/// One open connection: its permit, its requests in flight and when it was last busy.
struct Connection {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    in_flight: AtomicUsize,
    /// Milliseconds after the epoch when a request last started or ended.
    last_active_ms: AtomicU64,
    watched: AtomicBool,
}

impl Connection {
    fn open(shared: Arc<Shared>, permit: OwnedSemaphorePermit) -> Self {
        shared.gauges.open.inc();
        let now = shared.now_ms();
        Self {
            shared,
            _permit: permit,
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now),
            watched: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.last_active_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
    }

    /// How long to wait before looking again, or `None` when the connection has been idle
    /// for the whole timeout.
    fn idle_wait(&self) -> Option<Duration> {
        let timeout = self.shared.idle_timeout;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(timeout);
        }
        let idle = Duration::from_millis(
            self.shared
                .now_ms()
                .saturating_sub(self.last_active_ms.load(Ordering::Relaxed)),
        );
        timeout.checked_sub(idle).filter(|left| !left.is_zero())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.gauges.open.dec();
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A connection's service: every clone (hyper clones it per request) shares the connection.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S, B> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let connection = self.connection.clone();
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        connection.touch();
        if !connection.watched.swap(true, Ordering::Relaxed)
            && let Some(shutdown) = req.extensions().get::<ConnectionShutdown>().cloned()
        {
            tokio::spawn(close_when_idle(Arc::downgrade(&connection), shutdown));
        }
        let in_flight = InFlight(connection);
        let answered = self.inner.call(req);
        Box::pin(async move {
            let _in_flight = in_flight;
            answered.await
        })
    }
}

/// Ends a request's time in flight when its response is ready, or when it is dropped
/// (the client went away).
struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Asks the connection to shut down gracefully once it has been idle for the timeout; ends
/// by itself when the connection is gone.
async fn close_when_idle(connection: Weak<Connection>, shutdown: ConnectionShutdown) {
    let Some(mut wait) = connection.upgrade().map(|c| c.shared.idle_timeout) else {
        return;
    };
    loop {
        tokio::time::sleep(wait).await;
        let Some(open) = connection.upgrade() else {
            return;
        };
        match open.idle_wait() {
            Some(left) => wait = left,
            None => {
                tracing::debug!("closing a connection idle for the idle timeout");
                shutdown.graceful_shutdown();
                return;
            }
        }
    }
}
