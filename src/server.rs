//! Listeners and connections: the proxy listener (HTTP/1.1 and h2c, or TLS with ALPN)
//! and the admin listener; graceful shutdown on SIGTERM/SIGINT and reload on SIGHUP
//! (docs/operations.md). Both listeners serve from an `ArcSwap<App>`: a reload builds a new
//! `App` and swaps it in, while requests in flight keep the `Arc<App>` they started with.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::{App, System};
use crate::config::{Config, TlsFiles};
use crate::h1;
use crate::host::Host;
use crate::proxy::{self, Conn};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// How long a reload waits for the new configuration's issuer keys before giving up
/// and keeping the running configuration.
pub const RELOAD_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Build(#[from] crate::app::BuildError),
    #[error("cannot listen on {addr} ({what}): {err}")]
    Bind { what: &'static str, addr: SocketAddr, err: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot start a worker thread: {0}")]
    Runtime(std::io::Error),
    #[error("no listening socket")]
    NoSocket,
}

/// Why a reload was refused. The running configuration stays in use.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration was not read from a file")]
    NoFile,
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("{0} cannot change on reload (restart instead)")]
    Fixed(&'static str),
    #[error("{0}")]
    Tls(String),
    #[error("the new configuration's issuer keys could not be fetched within {0:?}")]
    NotReady(Duration),
    #[error("shutting down")]
    ShuttingDown,
}

/// What the listeners serve from; a reload swaps both.
struct Shared {
    app: ArcSwap<App>,
    tls: ArcSwapOption<TlsAcceptor>,
    stopping: AtomicBool,
}

/// A started server: its bound addresses, state, and the handle to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The forward-auth listener's address, with `[forward_auth]`.
    pub forward_auth_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    /// Stops with the proxy listener (the same signal).
    forward_auth_task: Option<JoinHandle<()>>,
    /// The background tasks of the state now served.
    background: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Running {
    /// The state now served. A request keeps the state it started with, so hold the
    /// returned `Arc` only as long as needed.
    pub fn app(&self) -> Arc<App> {
        self.shared.app.load_full()
    }

    /// Waits until readiness (every issuer's keys held) or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.app().ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.app().ready()
    }

    /// Re-reads the configuration file (and with it key files, metadata files, CA and
    /// TLS files), builds new state, waits for its issuer keys, and swaps it in.
    /// Requests in flight finish on the old state. On any error the running
    /// configuration stays and the error says why.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let r = self.try_reload().await;
        let m = &self.app().metrics;
        match &r {
            Ok(()) => m.reloads_ok.fetch_add(1, Relaxed),
            Err(_) => m.reloads_failed.fetch_add(1, Relaxed),
        };
        r
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let _one = self.reloading.lock().await;
        if self.shared.stopping.load(Relaxed) {
            return Err(ReloadError::ShuttingDown);
        }
        let old = self.app();
        let path = old.config.path.clone().ok_or(ReloadError::NoFile)?;
        // Reading the file and every file it names is blocking I/O: not on a thread
        // that serves requests.
        let config = tokio::task::spawn_blocking(move || crate::app::load_config(&path))
            .await
            .map_err(|_| ReloadError::Invalid("reading the configuration failed".into()))?
            .map_err(|e| ReloadError::Invalid(e.to_string()))?;
        if config.listen.addr != old.config.listen.addr {
            return Err(ReloadError::Fixed("listen.addr"));
        }
        if config.admin.addr != old.config.admin.addr {
            return Err(ReloadError::Fixed("admin.addr"));
        }
        if config.forward_auth.as_ref().map(|f| f.addr) != old.config.forward_auth.as_ref().map(|f| f.addr) {
            return Err(ReloadError::Fixed("forward_auth.addr"));
        }
        if config.listen.tls.is_some() != old.config.listen.tls.is_some() {
            return Err(ReloadError::Fixed("TLS on or off (listen.tls_cert_file, listen.tls_key_file)"));
        }
        let tls = match &config.listen.tls {
            Some(files) => Some(Arc::new(tls_acceptor(files).map_err(|e| ReloadError::Tls(e.to_string()))?)),
            None => None,
        };
        let app = Arc::new(App::rebuild(config, &old).map_err(|e| ReloadError::Invalid(e.to_string()))?);
        let tasks = app.spawn_background();
        let deadline = tokio::time::Instant::now() + RELOAD_READY_TIMEOUT;
        while !app.verifier.ready() {
            if tokio::time::Instant::now() >= deadline || self.shared.stopping.load(Relaxed) {
                tasks.iter().for_each(JoinHandle::abort);
                return Err(ReloadError::NotReady(RELOAD_READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.tls.store(tls);
        self.shared.app.store(app.clone());
        let old_tasks = std::mem::replace(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()), tasks);
        old_tasks.iter().for_each(JoinHandle::abort);
        tracing::info!(routes = app.routes.len(), issuers = app.config.issuers.len(), "configuration reloaded");
        Ok(())
    }

    /// Graceful stop: readiness turns 503, listeners close, in-flight requests finish
    /// (up to `grace`).
    pub async fn shutdown(self, grace: Duration) {
        self.shared.stopping.store(true, Relaxed);
        // A reload in progress gives up; take its lock so none swaps state from here on.
        let _no_reload = self.reloading.lock().await;
        self.app().draining.store(true, Relaxed);
        let _ = self.stop_proxy.send(true);
        // The admin listener stays up while the proxy drains, so probes see 503.
        let forward_auth = async {
            if let Some(t) = self.forward_auth_task {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, async { tokio::join!(self.proxy_task, forward_auth) }).await.is_err() {
            tracing::warn!("grace time over; closing the remaining connections");
        }
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_task).await;
        for b in self.background.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            b.abort();
        }
    }
}

/// Connections the kernel queues for a listener before accept takes them (capped by
/// `net.core.somaxconn`). The default of `std` and tokio is 128: a burst of new
/// clients (a deploy, a reconnect storm) overflows that in a moment, and each
/// overflowed connection waits out a SYN retransmission (1 s, then 3 s) before it is
/// even seen. nginx asks for 511 by default; a gateway asks for more.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr`, with address reuse (a restart need not wait out TIME_WAIT)
/// and [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = bind_sockets(addr, 1)?.pop().ok_or_else(|| std::io::Error::other("no socket"))?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds both listeners, builds the state and starts serving, all on the calling
/// task's runtime: [`start_with`] one worker.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, 1).await
}

/// Binds the listeners, builds the state and starts serving with `workers` worker
/// threads for the proxy and forward-auth listeners.
///
/// One worker serves on the calling task's runtime. More than one: each worker is a
/// thread with a single-threaded runtime of its own and its own listening socket on
/// the same address (`SO_REUSEPORT`: the kernel spreads new connections over them),
/// as nginx runs one process per core. A connection stays on the thread that
/// accepted it, with its upstream connections (`proxy::pool`), so no request moves
/// between threads, and nothing is shared between them but the caches. The admin
/// listener, signals, reloads and background refreshes stay on the calling runtime.
/// Why not tokio's work-stealing runtime: on a machine whose cores the proxy shares
/// with others (a sidecar, the load script's `unpinned` set) its cross-thread wakeups
/// cost about 4 µs of CPU per request (docs/performance.md).
pub async fn start_with(config: Config, workers: usize) -> Result<Running, StartError> {
    let workers = workers.max(1);
    let tls = match &config.listen.tls {
        Some(files) => Some(Arc::new(tls_acceptor(files)?)),
        None => None,
    };
    let proxy_bind = |err| StartError::Bind { what: "listen.addr", addr: config.listen.addr, err };
    let proxy_sockets = bind_sockets(config.listen.addr, workers).map_err(proxy_bind)?;
    let proxy_addr = proxy_sockets[0].local_addr().map_err(proxy_bind)?;
    let admin_listener =
        bind(config.admin.addr).map_err(|err| StartError::Bind { what: "admin.addr", addr: config.admin.addr, err })?;
    let admin_addr = admin_listener.local_addr().map_err(|err| StartError::Bind {
        what: "admin.addr",
        addr: config.admin.addr,
        err,
    })?;
    let forward_auth_sockets = match &config.forward_auth {
        Some(f) => {
            let bind_error = |err| StartError::Bind { what: "forward_auth.addr", addr: f.addr, err };
            let sockets = bind_sockets(f.addr, workers).map_err(bind_error)?;
            let addr = sockets[0].local_addr().map_err(bind_error)?;
            Some((sockets, addr))
        }
        None => None,
    };
    let forward_auth_addr = forward_auth_sockets.as_ref().map(|(_, a)| *a);
    let app = Arc::new(App::build(config)?);
    let background = app.spawn_background();
    let routes = app.routes.len();
    let shared =
        Arc::new(Shared { app: ArcSwap::new(app), tls: ArcSwapOption::new(tls), stopping: AtomicBool::new(false) });
    let (stop_proxy, rx_proxy) = watch::channel(false);
    let (stop_admin, rx_admin) = watch::channel(false);
    let (proxy_task, forward_auth_task) = if workers == 1 {
        let listen = |socket: tokio::net::TcpSocket, addr| {
            socket.listen(LISTEN_BACKLOG).map_err(|err| StartError::Bind { what: "listen", addr, err })
        };
        let fa = match forward_auth_sockets {
            Some((mut s, addr)) => Some(listen(s.remove(0), addr)?),
            None => None,
        };
        let proxy_listener = listen(proxy_sockets.into_iter().next().ok_or(StartError::NoSocket)?, proxy_addr)?;
        let fa_task = fa.map(|l| tokio::spawn(serve_forward_auth(l, shared.clone(), rx_proxy.clone())));
        (tokio::spawn(serve_proxy(proxy_listener, shared.clone(), rx_proxy)), fa_task)
    } else {
        let mut fa_sockets = forward_auth_sockets.map(|(s, _)| s.into_iter());
        let mut done = Vec::with_capacity(workers);
        for (i, socket) in proxy_sockets.into_iter().enumerate() {
            let fa_socket = fa_sockets.as_mut().and_then(Iterator::next);
            done.push(spawn_worker(i, socket, fa_socket, shared.clone(), rx_proxy.clone())?);
        }
        // Resolves once every worker has drained.
        let all_done = tokio::spawn(async move {
            for d in done {
                let _ = d.await;
            }
        });
        (all_done, None)
    };
    let admin_task = tokio::spawn(serve_admin(admin_listener, shared.clone(), rx_admin));
    tracing::info!(%proxy_addr, %admin_addr, forward_auth_addr = forward_auth_addr.map(tracing::field::display), routes, workers, "claimsmith listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        forward_auth_addr,
        shared,
        stop_proxy,
        stop_admin,
        proxy_task,
        admin_task,
        forward_auth_task,
        background: std::sync::Mutex::new(background),
        reloading: tokio::sync::Mutex::new(()),
    })
}

/// `n` sockets bound to `addr` (the first decides the port when `addr` asks for any),
/// with `SO_REUSEPORT` when there is more than one; not yet listening, so a worker
/// can listen on its own runtime.
fn bind_sockets(addr: SocketAddr, n: usize) -> std::io::Result<Vec<tokio::net::TcpSocket>> {
    let mut sockets = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n {
        let socket = if at.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        if n > 1 {
            socket.set_reuseport(true)?;
        }
        socket.bind(at)?;
        at = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Worker `i`: a thread with a single-threaded runtime of its own serving the proxy
/// listener's socket `proxy` (and the forward-auth listener's, with `[forward_auth]`)
/// until `stop`. The returned receiver resolves when it has drained.
fn spawn_worker(
    i: usize,
    proxy: tokio::net::TcpSocket,
    forward_auth: Option<tokio::net::TcpSocket>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::sync::oneshot::Receiver<()>, StartError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
    let addr = proxy.local_addr().map_err(StartError::Runtime)?;
    let listen = |socket: tokio::net::TcpSocket| {
        // Registered with this worker's runtime, which then watches it.
        let _on = rt.enter();
        socket.listen(LISTEN_BACKLOG).map_err(|err| StartError::Bind { what: "listen", addr, err })
    };
    let proxy = listen(proxy)?;
    let forward_auth = forward_auth.map(listen).transpose()?;
    let (done, drained) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("claimsmith-worker-{i}"))
        .spawn(move || {
            crate::proxy::pool::serve_as_worker(i);
            rt.block_on(async move {
                let fa = forward_auth.map(|l| tokio::spawn(serve_forward_auth(l, shared.clone(), stop.clone())));
                serve_proxy(proxy, shared, stop).await;
                if let Some(fa) = fa {
                    let _ = fa.await;
                }
            });
            let _ = done.send(());
        })
        .map_err(StartError::Runtime)?;
    Ok(drained)
}

/// How often [`watch_turns`] samples its runtime's event loop.
const TURN_SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// Samples how long this runtime's event loop takes to come back to a task
/// (`claimsmith_event_loop_turn_seconds`, docs/operations.md, "Metrics"): what a
/// connection that has just become readable waits before it is read, which no
/// request's own duration shows. Like Envoy's dispatcher loop-duration statistic, it
/// tells a saturated worker from a slow upstream. Each sample is two waits:
/// - how late the sampling timer fired, less the timer's own 1 ms resolution: a stall
///   that held the loop when the timer came due shows here, and would be missed by a
///   sampler that only starts measuring once its timer has fired;
/// - how long the loop took to come back after the sampler yielded: a yielded task runs
///   again only after the loop has polled the reactor, so that is one turn (the tasks
///   already queued, then the new I/O).
async fn watch_turns(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    const TIMER_RESOLUTION: Duration = Duration::from_millis(1);
    let mut every = tokio::time::interval(TURN_SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = tokio::select! {
            due = every.tick() => due,
            _ = stop.changed() => return,
        };
        let late = due.elapsed().saturating_sub(TIMER_RESOLUTION);
        let yielded = tokio::time::Instant::now();
        tokio::task::yield_now().await;
        shared.app.load().metrics.turn(late + yielded.elapsed());
    }
}

/// Serves until SIGTERM or SIGINT, then drains; SIGHUP, or (with `watch`) a change to
/// a file the configuration was read from, reloads.
/// `workers`: see [`start_with`].
pub async fn run(config: Config, watch_files: bool, workers: usize) -> Result<(), StartError> {
    // Handlers go in before anything listens, so an early SIGHUP cannot kill us.
    let mut signals = Signals::new();
    let running = start_with(config, workers).await?;
    let mut watch = FileWatch::new(&running.app().config).await;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            s = signals.next() => match s {
                Signal::Stop => break,
                Signal::Reload => "SIGHUP received",
            },
            _ = tick.tick(), if watch_files => match watch.changed(&running.app().config).await {
                true => "a file of the configuration changed",
                false => continue,
            },
        };
        tracing::info!("{why}; reloading the configuration");
        if let Err(e) = running.reload().await {
            tracing::error!(error = %e, "reload failed; the running configuration stays in use");
        }
    }
    tracing::info!("shutdown signal received; draining");
    running.shutdown(DRAIN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

/// How often the watched files are looked at. A change is acted on once two looks in
/// a row agree, so a file still being written is not reloaded half-way, and a change
/// is picked up within about two of these.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The files of the running configuration (`Config::watched_files`) and what they
/// held when last looked at. Kubernetes updates a mounted ConfigMap or Secret by
/// swapping a `..data` symlink and sends no signal; contents are compared (read
/// through symlinks), so a swap, an in-place edit or a rename over the file are all
/// seen, and a touch is not.
struct FileWatch {
    paths: Vec<std::path::PathBuf>,
    seen: Vec<Option<[u8; 32]>>,
    pending: Option<Vec<Option<[u8; 32]>>>,
}

impl FileWatch {
    async fn new(config: &Config) -> FileWatch {
        let paths = config.watched_files();
        let seen = fingerprint(paths.clone()).await;
        FileWatch { paths, seen, pending: None }
    }

    /// Whether the files changed since the last reload and stayed so for one look.
    async fn changed(&mut self, config: &Config) -> bool {
        let paths = config.watched_files();
        if paths != self.paths {
            // A reload named other files: what they hold now is the baseline.
            *self = FileWatch::new(config).await;
            return false;
        }
        let now = fingerprint(paths).await;
        if now == self.seen {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.seen = now;
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

/// A SHA-256 of each file's content (`None`: unreadable for now), read on a blocking
/// thread: a large file must not stall the requests of a single-threaded runtime.
async fn fingerprint(paths: Vec<std::path::PathBuf>) -> Vec<Option<[u8; 32]>> {
    use sha2::Digest;
    let read = move || paths.iter().map(|p| System.read(p).ok().map(|b| sha2::Sha256::digest(&b).into())).collect();
    tokio::task::spawn_blocking(read).await.unwrap_or_default()
}

pub(crate) enum Signal {
    Stop,
    Reload,
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload), caught from creation on: the
/// default action of each would end the process at once, without draining.
pub(crate) struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    pub(crate) fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(t), Ok(i), Ok(h)) => Some((t, i, h)),
                _ => {
                    tracing::warn!("cannot install signal handlers; only Ctrl-C stops the process");
                    None
                }
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    pub(crate) async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((term, int, hup)) = &mut self.unix {
            return tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}

/// The listener's TLS settings from the certificate and key the configuration read.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&files.cert_pem).flatten().collect();
    if certs.is_empty() {
        return Err(StartError::Tls("listen.tls_cert_file: no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(files.key_pem.expose().as_bytes())
        .ok()
        .ok_or_else(|| StartError::Tls("listen.tls_key_file: no private key found".into()))?;
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(format!("listen.tls_cert_file: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn builder(app: &App) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.listen.header_read_timeout)
        .max_buf_size(app.config.listen.max_header_bytes.max(8192) + 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(app.config.listen.max_header_bytes as u32)
        .max_concurrent_streams(256);
    b
}

/// The listener's next connection, or `None` once `stop` fires. A failed accept (out
/// of file descriptors and the like) pauses instead of spinning.
///
/// One connection per turn of the scheduler, as nginx's `multi_accept off`: every
/// other runnable task (the requests of connections already open) goes before the
/// next accept. Without it a crowd of new clients arriving at once (a reconnect storm,
/// thousands of new users) is accepted in one go, and their first requests (each a
/// signature check, and for a new user a metadata lookup) all run before the next
/// request of a user already served: 10,000 at once held those up for 0.75 s
/// (docs/performance.md, the `burst` set).
async fn next_connection(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    which: &'static str,
) -> Option<(TcpStream, SocketAddr)> {
    tokio::task::yield_now().await;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => return Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, listener = which, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

async fn serve_proxy(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    // One per runtime that serves the proxy listener, so one per worker.
    let turns = tokio::spawn(watch_turns(shared.clone(), stop.clone()));
    // Every plain connection's task holds a sender; shutdown waits until all are gone.
    let (alive, mut all_gone) = tokio::sync::mpsc::channel::<()>(1);
    while let Some((stream, peer)) = next_connection(&listener, &mut stop, "proxy").await {
        let _ = stream.set_nodelay(true);
        let tls = shared.tls.load_full();
        let conn = Conn::new(peer, tls.is_some());
        let state = shared.clone();
        match tls {
            None => {
                // The fast path serves plain HTTP/1.1 and hands anything else to hyper.
                let watcher = graceful.watcher();
                let (alive, stop) = (alive.clone(), stop.clone());
                let fast_path = state.app.load().config.listen.fast_path;
                tokio::spawn(async move {
                    let _alive = alive;
                    let io = match fast_path {
                        true => match h1::serve(stream, conn.clone(), &state.app, stop).await {
                            h1::Served::HandOver(io) => io,
                            h1::Served::Done => return,
                        },
                        // Off: hyper serves the whole connection (same pipeline).
                        false => h1::Rewind::new(bytes::Bytes::new(), stream),
                    };
                    let (fut, first_request, head_timeout) = hyper_connection(&state, io, conn);
                    drop_if_no_request(watcher.watch(fut), first_request, head_timeout).await;
                });
            }
            Some(acceptor) => {
                let watcher = graceful.watcher();
                let timeout = Duration::from_secs(10);
                let (alive, stop) = (alive.clone(), stop.clone());
                let fast_path = state.app.load().config.listen.fast_path;
                tokio::spawn(async move {
                    let _alive = alive;
                    let Ok(Ok(tls_stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await else {
                        return;
                    };
                    // HTTP/1.1 over TLS takes the fast path as plain HTTP/1.1 does; a
                    // client that chose HTTP/2 by ALPN goes to hyper at once.
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = match fast_path && !h2 {
                        true => match h1::serve(tls_stream, conn.clone(), &state.app, stop).await {
                            h1::Served::HandOver(io) => io,
                            h1::Served::Done => return,
                        },
                        false => h1::Rewind::new(bytes::Bytes::new(), tls_stream),
                    };
                    let (fut, first_request, head_timeout) = hyper_connection(&state, io, conn);
                    drop_if_no_request(watcher.watch(fut), first_request, head_timeout).await;
                });
            }
        }
    }
    drop(listener);
    drop(alive);
    tokio::join!(graceful.shutdown(), all_gone.recv());
    turns.abort();
}

/// A connection served by hyper (HTTP/1.1 and h2c, or TLS with ALPN): settings from
/// the state current now; each request takes the state current when it arrives and
/// keeps it to the end. Also returns the flag set by the first request, and the
/// header read timeout, for [`drop_if_no_request`].
fn hyper_connection<I>(
    shared: &Arc<Shared>,
    io: I,
    conn: Conn,
) -> (impl hyper_util::server::graceful::GracefulConnection + Send + use<I>, Arc<AtomicBool>, Duration)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = shared.app.load();
    let builder = builder(&app);
    let head_timeout = app.config.listen.header_read_timeout;
    let state = shared.clone();
    let first_request = Arc::new(AtomicBool::new(false));
    let seen = first_request.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        seen.store(true, Relaxed);
        let app = state.app.load_full();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(serve_one(&app, req, conn).await) }
    });
    (builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned(), first_request, head_timeout)
}

/// Serves a connection, but drops it when no request has begun within `timeout`.
/// hyper's `header_read_timeout` only runs once its HTTP/1 parser does; while the
/// auto builder still sniffs for the h2 preface (a client that sends nothing, or a
/// partial `PRI * HTTP/2.0` trickled in) no timer runs, so without this such
/// connections would be held forever.
async fn drop_if_no_request<F: std::future::Future>(conn: F, first_request: Arc<AtomicBool>, timeout: Duration) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = &mut conn => return,
        _ = tokio::time::sleep(timeout) => {}
    }
    if first_request.load(Relaxed) {
        conn.await;
    } else {
        tracing::debug!("no request within the header read timeout; closing the connection");
    }
}

async fn serve_one(app: &App, req: hyper::Request<Incoming>, conn: Conn) -> hyper::Response<crate::error::Body> {
    let start = tokio::time::Instant::now();
    let method = req.method().clone();
    let (resp, outcome) = proxy::handle(app, req, conn).await;
    proxy::record(app, &method, &outcome, resp.status().as_u16(), start.elapsed());
    resp
}

/// The forward-auth listener (docs/forward-auth.md): plain HTTP/1.1 or h2c from the
/// ingress, every request a check, nothing forwarded. It drains with the proxy
/// listener.
async fn serve_forward_auth(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    while let Some((stream, _peer)) = next_connection(&listener, &mut stop, "forward_auth").await {
        let _ = stream.set_nodelay(true);
        let app = shared.app.load();
        let builder = builder(&app);
        let head_timeout = app.config.listen.header_read_timeout;
        let state = shared.clone();
        let first_request = Arc::new(AtomicBool::new(false));
        let seen = first_request.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            seen.store(true, Relaxed);
            let app = state.app.load_full();
            async move {
                let start = tokio::time::Instant::now();
                let (resp, outcome, method) = proxy::check::check(&app, req).await;
                proxy::record(&app, &method, &outcome, resp.status().as_u16(), start.elapsed());
                Ok::<_, Infallible>(resp)
            }
        });
        let fut = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(drop_if_no_request(fut, first_request, head_timeout));
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Some((stream, _peer)) = next_connection(&listener, &mut stop, "admin").await {
        let state = shared.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let app = state.app.load_full();
            async move { Ok::<_, Infallible>(crate::admin::handle(&app, req).await) }
        });
        let fut = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            let _ = fut.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_share_one_port() {
        // The first socket picks the port; the others join it (SO_REUSEPORT), and all listen.
        let sockets = bind_sockets("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = sockets.iter().map(|s| s.local_addr().unwrap().port()).collect();
        assert!(ports[0] != 0 && ports.iter().all(|p| *p == ports[0]), "{ports:?}");
        let listeners: Vec<TcpListener> = sockets.into_iter().map(|s| s.listen(16).unwrap()).collect();
        assert_eq!(listeners.len(), 3);
        // One socket alone takes no SO_REUSEPORT: a second bind to its port fails.
        let one = bind_sockets("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0);
        let port = one.local_addr().unwrap().port();
        let _listening = one.listen(16).unwrap();
        assert!(bind_sockets(SocketAddr::from(([127, 0, 0, 1], port)), 2).is_err());
    }

    #[tokio::test]
    async fn a_fingerprint_follows_a_file_s_content() {
        let dir = std::env::temp_dir().join(format!("claimsmith-fingerprint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (file, missing) = (dir.join("keys.pem"), dir.join("absent.pem"));
        std::fs::write(&file, "one").unwrap();
        let first = fingerprint(vec![file.clone(), missing.clone()]).await;
        assert!(first[0].is_some() && first[1].is_none(), "{first:?}");
        assert_eq!(fingerprint(vec![file.clone()]).await[0], first[0], "same content, same fingerprint");
        std::fs::write(&file, "two").unwrap();
        assert_ne!(fingerprint(vec![file.clone()]).await[0], first[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
