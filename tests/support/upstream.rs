//! A backend on loopback that records every request it receives and answers as a
//! test tells it to.

use super::*;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the upstream answers.
#[derive(Clone, Default)]
pub struct Behavior {
    pub delay: Option<Duration>,
    pub status: Option<StatusCode>,
    pub extra_headers: Vec<(String, String)>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behavior: Arc<Mutex<Behavior>>,
    pub count: Arc<AtomicU64>,
    /// TCP connections accepted (to observe connection reuse).
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let behavior: Arc<Mutex<Behavior>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let (addr, connections) = serve_counting({
            let (seen, behavior, count) = (seen.clone(), behavior.clone(), count.clone());
            move |req: Request<Incoming>| {
                let (seen, behavior, count) = (seen.clone(), behavior.clone(), count.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let n = count.fetch_add(1, SeqCst) + 1;
                    seen.lock().unwrap().push(Seen {
                        method: parts.method.clone(),
                        uri: parts.uri.to_string(),
                        headers: parts.headers.clone(),
                        body: body.clone(),
                    });
                    let b = behavior.lock().unwrap().clone();
                    if let Some(d) = b.delay {
                        tokio::time::sleep(d).await;
                    }
                    let mut r = json_response(
                        b.status.unwrap_or(StatusCode::OK),
                        &json!({"upstream": "ok", "n": n, "path": parts.uri.path(), "body_len": body.len()}),
                    );
                    for (k, v) in b.extra_headers {
                        r.headers_mut()
                            .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
                    }
                    r
                }
            }
        })
        .await;
        Upstream { addr, seen, behavior, count, connections }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw no request")
    }

    pub fn saw_nothing(&self) -> bool {
        self.seen.lock().unwrap().is_empty()
    }
}
