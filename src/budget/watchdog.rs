//! One connection served within the budget: HTTP/1.1 or HTTP/2, with a watchdog that
//! closes it when no request comes in time or a request stops moving bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::{ConnectionBudget, Stats};

/// Why [`serve`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed, or the exchange failed.
    Closed,
    /// No request in flight for too long.
    Idle,
    /// A request in flight stopped moving bytes.
    Stalled,
    /// Shutdown.
    Shutdown,
}

/// Serves HTTP/1.1 or HTTP/2 (by what the client sends) on one connection within `budget`,
/// until it ends (see [`Ended`]); at `shutdown` the requests in flight get `drain` to finish.
pub async fn serve<I, S, B>(
    io: I,
    service: S,
    budget: &ConnectionBudget,
    stats: &Stats,
    shutdown: &CancellationToken,
    drain: Duration,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        > + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let io = Metered {
        inner: io,
        activity: activity.clone(),
    };
    let service = Tracked {
        inner: Arc::new(service),
        activity: activity.clone(),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(budget.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(budget.h2_streams)
        // Pings find a peer that vanished while a stream waits on it.
        .keep_alive_interval(Some(budget.progress_window))
        .keep_alive_timeout(budget.handshake);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        served = connection.as_mut() => match served {
            // hyper's own header timeout: the same phase as the watchdog's idle one.
            Err(error) if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) => Ended::Idle,
            _ => Ended::Closed,
        },
        ended = watchdog(&activity, budget) => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain, connection).await;
            return Ended::Shutdown;
        }
    };
    match ended {
        Ended::Idle => stats.closed_idle.fetch_add(1, Ordering::Relaxed),
        Ended::Stalled => stats.closed_stalled.fetch_add(1, Ordering::Relaxed),
        Ended::Closed | Ended::Shutdown => 0,
    };
    ended
}

/// What a connection's watchdog reads: bytes moved and requests in flight.
#[derive(Debug)]
struct Activity {
    start: Instant,
    bytes: AtomicU64,
    in_flight: AtomicUsize,
    started: AtomicU64,
    /// Milliseconds from `start` to when the last request in flight ended.
    idle_since: AtomicU64,
    /// Requests in flight that wait on purpose (a long poll, see [`Park`]).
    parked: AtomicUsize,
    /// Signalled when a parked request is unparked (a permit is kept if nobody waits).
    unparked: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            bytes: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            parked: AtomicUsize::new(0),
            unparked: tokio::sync::Notify::new(),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Ends with the reason to close the connection, if it ever has one.
async fn watchdog(activity: &Activity, budget: &ConnectionBudget) -> Ended {
    let tick = budget.tick();
    let mut window_start = Instant::now();
    let mut window_bytes = 0;
    let mut busy_throughout = false;
    loop {
        // While a request is parked there is nothing to check: the watchdog sleeps until it
        // is unparked instead of ticking (a thousand connections held open by their agents
        // would otherwise cost the server a wake-up each every tick).
        if activity.parked.load(Ordering::Acquire) > 0 {
            activity.unparked.notified().await;
            busy_throughout = false;
            continue;
        }
        tokio::time::sleep(tick).await;
        let in_flight = activity.in_flight.load(Ordering::Acquire) > 0;
        if !in_flight {
            let limit = if activity.started.load(Ordering::Relaxed) == 0 {
                budget.first_request
            } else {
                budget.keep_alive
            };
            let idle = activity
                .millis()
                .saturating_sub(activity.idle_since.load(Ordering::Acquire));
            if Duration::from_millis(idle) >= limit {
                return Ended::Idle;
            }
        }
        // A parked request moves nothing on purpose: its window never counts as stalled.
        let moving = in_flight && activity.parked.load(Ordering::Acquire) == 0;
        busy_throughout &= moving;
        if window_start.elapsed() >= budget.progress_window {
            let bytes = activity.bytes.load(Ordering::Relaxed);
            if busy_throughout && bytes - window_bytes < budget.min_progress {
                return Ended::Stalled;
            }
            window_start = Instant::now();
            window_bytes = bytes;
            busy_throughout = moving;
        }
    }
}

/// The connection's stream, counting the bytes that move.
struct Metered<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Metered<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.activity
            .bytes
            .fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Metered<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.activity
                .bytes
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = polled {
            self.activity
                .bytes
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request in flight, from its headers to the end of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The idle clock restarts first, so the watchdog never sees an old one with nothing
        // in flight.
        self.0.idle_since.store(self.0.millis(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// In every request's extensions: lets its handler say that it waits on purpose (a long
/// poll that answers when something happens), so the progress check leaves the connection
/// alone while it does. The handler bounds the wait itself; only handlers that have already
/// authenticated the caller should park, so a stranger still meets every bound.
#[derive(Clone, Debug)]
pub struct Park(Arc<Activity>);

impl Park {
    /// Parks the request until the guard is dropped.
    pub fn hold(&self) -> Parked {
        self.0.parked.fetch_add(1, Ordering::AcqRel);
        Parked(self.0.clone())
    }
}

/// A parked request (see [`Park`]); unparked when dropped.
#[derive(Debug)]
pub struct Parked(Arc<Activity>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::AcqRel);
        self.0.unparked.notify_one();
    }
}

/// The service, counting the requests in flight.
struct Tracked<S> {
    inner: Arc<S>,
    activity: Arc<Activity>,
}

impl<S> Clone for Tracked<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            activity: self.activity.clone(),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = hyper::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = InFlight::new(self.activity.clone());
        request.extensions_mut().insert(Park(self.activity.clone()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is sent (or dropped).
pub struct TrackedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request over an in-memory connection served within a budget whose progress
    /// check closes a quiet request after 200 ms; the handler takes 1 s, parked or not.
    /// Whether the answer came, and how the connection ended.
    async fn quiet_request(parked: bool) -> (bool, Ended) {
        let (client, server) = tokio::io::duplex(4096);
        let budget = ConnectionBudget {
            progress_window: Duration::from_millis(200),
            ..ConnectionBudget::test(Duration::from_secs(5), 10, 10)
        };
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let park = request.extensions().get::<Park>().cloned();
            async move {
                let _parked = park.filter(|_| parked).map(|p| p.hold());
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    hyper::body::Bytes::from_static(b"ok"),
                )))
            }
        });
        let stats = Stats::default();
        let served = tokio::spawn(async move {
            serve(
                server,
                service,
                &budget,
                &stats,
                &CancellationToken::new(),
                Duration::ZERO,
            )
            .await
        });
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(TokioIo::new(client))
        .await
        .unwrap();
        tokio::spawn(connection);
        let answered = sender
            .send_request(hyper::Request::new(http_body_util::Empty::new()))
            .await
            .is_ok();
        drop(sender);
        (answered, served.await.unwrap())
    }

    #[tokio::test]
    async fn a_parked_request_outlives_the_progress_check_and_a_quiet_one_does_not() {
        assert_eq!(quiet_request(true).await, (true, Ended::Closed));
        assert_eq!(quiet_request(false).await, (false, Ended::Stalled));
    }
}
