//! Listeners and connections: the proxy listener (HTTP/1.1 and h2c, or TLS with ALPN)
//! and the admin listener; graceful shutdown on SIGTERM/SIGINT (SPEC §8).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::config::{Config, TlsFiles};
use crate::proxy::{self, Conn};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Build(#[from] crate::app::BuildError),
    #[error("cannot listen on {addr} ({what}): {err}")]
    Bind { what: &'static str, addr: SocketAddr, err: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
}

/// A started server: its bound addresses, state, and the handle to stop it.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until readiness (every issuer's keys held) or `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.app.ready() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.app.ready()
    }

    /// Graceful stop: readiness turns 503, listeners close, in-flight requests finish
    /// (up to `grace`).
    pub async fn shutdown(self, grace: Duration) {
        self.app.draining.store(true, Relaxed);
        let _ = self.stop_proxy.send(true);
        // The admin listener stays up while the proxy drains, so probes see 503.
        if tokio::time::timeout(grace, self.proxy_task).await.is_err() {
            tracing::warn!("grace time over; closing the remaining connections");
        }
        let _ = self.stop_admin.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_task).await;
        for b in self.background {
            b.abort();
        }
    }
}

/// Binds both listeners, builds the state and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let tls = match &config.listen.tls {
        Some(files) => Some(tls_acceptor(files)?),
        None => None,
    };
    let proxy_listener = TcpListener::bind(config.listen.addr).await.map_err(|err| StartError::Bind {
        what: "listen.addr",
        addr: config.listen.addr,
        err,
    })?;
    let admin_listener = TcpListener::bind(config.admin.addr).await.map_err(|err| StartError::Bind {
        what: "admin.addr",
        addr: config.admin.addr,
        err,
    })?;
    let proxy_addr = proxy_listener.local_addr().map_err(|err| StartError::Bind {
        what: "listen.addr",
        addr: config.listen.addr,
        err,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|err| StartError::Bind {
        what: "admin.addr",
        addr: config.admin.addr,
        err,
    })?;
    let app = Arc::new(App::build(config)?);
    let background = app.spawn_background();
    let (stop_proxy, rx_proxy) = watch::channel(false);
    let (stop_admin, rx_admin) = watch::channel(false);
    let proxy_task = tokio::spawn(serve_proxy(proxy_listener, tls, app.clone(), rx_proxy));
    let admin_task = tokio::spawn(serve_admin(admin_listener, app.clone(), rx_admin));
    tracing::info!(%proxy_addr, %admin_addr, routes = app.routes.len(), "claimsmith listening");
    Ok(Running { proxy_addr, admin_addr, app, stop_proxy, stop_admin, proxy_task, admin_task, background })
}

/// Serves until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), StartError> {
    let running = start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutdown signal received; draining");
    running.shutdown(DRAIN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    let cert_pem = std::fs::read(&files.cert_file).map_err(|e| {
        StartError::Tls(format!("listen.tls_cert_file: cannot read {}: {e}", files.cert_file.display()))
    })?;
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| StartError::Tls(format!("listen.tls_key_file: cannot read {}: {e}", files.key_file.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice()).flatten().collect();
    if certs.is_empty() {
        return Err(StartError::Tls("listen.tls_cert_file: no certificate found".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
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

async fn serve_proxy(listener: TcpListener, tls: Option<TlsAcceptor>, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&app));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn { peer, tls: tls.is_some() };
        let app = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(serve_one(&app, req, conn).await) }
        });
        match &tls {
            None => {
                let fut = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let fut = graceful.watch(fut);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let timeout = Duration::from_secs(10);
                tokio::spawn(async move {
                    let Ok(Ok(tls_stream)) = tokio::time::timeout(timeout, acceptor.accept(stream)).await else {
                        return;
                    };
                    let fut = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned();
                    let _ = watcher.watch(fut).await;
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_one(app: &App, req: hyper::Request<Incoming>, conn: Conn) -> hyper::Response<crate::error::Body> {
    let start = tokio::time::Instant::now();
    let method = req.method().clone();
    let (resp, outcome) = proxy::handle(app, req, conn).await;
    let elapsed = start.elapsed();
    let route = outcome.route.clone().unwrap_or_else(|| Arc::from("none"));
    app.metrics.record(&route, resp.status().as_u16(), elapsed);
    // The access log names the route, never the path's query or any header value.
    tracing::info!(
        target: "claimsmith::access",
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        upstream_ms = outcome.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        error = outcome.error,
        "request"
    );
    resp
}

async fn serve_admin(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream: TcpStream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let app = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let app = app.clone();
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
