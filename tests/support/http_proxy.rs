//! A forward proxy on loopback, as corporate egress proxies behave: `CONNECT
//! host:port` opens a tunnel (RFC 9110 §9.3.6) and splices bytes both ways; an
//! absolute-form `GET http://host:port/path` is forwarded to the origin in
//! origin-form. It records every request line, the `Proxy-Authorization` it saw and
//! the bytes the client sent through each tunnel; it can demand credentials (407)
//! or refuse every CONNECT (403). One request per connection.

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the proxy does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyMode {
    Open,
    /// Answers 407 unless `Proxy-Authorization` is exactly this value.
    RequireAuth(String),
    /// Answers 403 to CONNECT.
    RefuseConnect,
}

/// A body the proxy sends with a refusal: it must never show up anywhere.
pub const PROXY_REFUSAL_BODY: &str = "proxy-refusal-body-do-not-echo";

/// One request the proxy received.
#[derive(Clone, Debug)]
pub struct ProxySeen {
    /// `CONNECT 127.0.0.1:4433 HTTP/1.1` or `GET http://127.0.0.1:80/x HTTP/1.1`.
    pub line: String,
    pub proxy_authorization: Option<String>,
    /// For a CONNECT: every byte the client sent through the tunnel.
    pub tunneled: Arc<Mutex<Vec<u8>>>,
}

pub struct HttpProxy {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxySeen>>>,
}

impl HttpProxy {
    pub async fn start(mode: ProxyMode) -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<ProxySeen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (log, mode) = (log.clone(), mode.clone());
                tokio::spawn(async move {
                    let _ = handle(stream, &mode, &log).await;
                });
            }
        });
        HttpProxy { addr, seen }
    }

    /// `http://host:port` (with `user:pass@` when given).
    pub fn url(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(c) => format!("http://{c}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub fn seen(&self) -> Vec<ProxySeen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.line).collect()
    }
}

async fn handle(mut client: TcpStream, mode: &ProxyMode, log: &Mutex<Vec<ProxySeen>>) -> std::io::Result<()> {
    // Read the request head.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let proxy_authorization = headers.iter().find(|(k, _)| k == "proxy-authorization").map(|(_, v)| v.clone());
    let tunneled: Arc<Mutex<Vec<u8>>> = Arc::default();
    log.lock().unwrap().push(ProxySeen {
        line: line.clone(),
        proxy_authorization: proxy_authorization.clone(),
        tunneled: tunneled.clone(),
    });

    let refuse = |status: &str| {
        format!(
            "HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"test\"\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PROXY_REFUSAL_BODY}",
            PROXY_REFUSAL_BODY.len()
        )
    };
    if let ProxyMode::RequireAuth(want) = mode
        && proxy_authorization.as_deref() != Some(want.as_str())
    {
        client.write_all(refuse("407 Proxy Authentication Required").as_bytes()).await?;
        return Ok(());
    }
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method == "CONNECT" {
        if *mode == ProxyMode::RefuseConnect {
            client.write_all(refuse("403 Forbidden").as_bytes()).await?;
            return Ok(());
        }
        let Ok(mut origin) = TcpStream::connect(target).await else {
            client.write_all(refuse("502 Bad Gateway").as_bytes()).await?;
            return Ok(());
        };
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
        // Bytes the client sent after its head already belong to the tunnel.
        let early = buf[head_end..].to_vec();
        tunneled.lock().unwrap().extend_from_slice(&early);
        origin.write_all(&early).await?;
        let (mut cr, mut cw) = client.into_split();
        let (mut or, mut ow) = origin.into_split();
        let up = async {
            let mut chunk = [0u8; 16384];
            loop {
                let n = cr.read(&mut chunk).await?;
                if n == 0 {
                    return ow.shutdown().await;
                }
                tunneled.lock().unwrap().extend_from_slice(&chunk[..n]);
                ow.write_all(&chunk[..n]).await?;
            }
        };
        let down = tokio::io::copy(&mut or, &mut cw);
        let _ = tokio::join!(up, down);
        return Ok(());
    }
    // Absolute-form: forward to the origin in origin-form, without the proxy's
    // header, one request per connection.
    let Ok(uri) = target.parse::<http::Uri>() else {
        client.write_all(refuse("400 Bad Request").as_bytes()).await?;
        return Ok(());
    };
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16().or(Some(80))) else {
        client.write_all(refuse("400 Bad Request").as_bytes()).await?;
        return Ok(());
    };
    let Ok(mut origin) = TcpStream::connect((host, port)).await else {
        client.write_all(refuse("502 Bad Gateway").as_bytes()).await?;
        return Ok(());
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let version = parts.next().unwrap_or("HTTP/1.1");
    let mut out = format!("{method} {path} {version}\r\n");
    for (k, v) in &headers {
        if k != "proxy-authorization" && k != "connection" && k != "proxy-connection" {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("connection: close\r\n\r\n");
    origin.write_all(out.as_bytes()).await?;
    origin.write_all(&buf[head_end..]).await?;
    // The origin answers `connection: close` and closes: the answer ends there.
    tokio::io::copy(&mut origin, &mut client).await?;
    client.shutdown().await
}
