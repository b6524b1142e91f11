//! The load clients of `benches/load.sh` that wrk and h2load cannot be, because every
//! request must carry the ID token of the next of many users (a header, which
//! neither oha nor h2load can rotate):
//!
//! - `fixed`: **fixed-rate (open-loop) HTTP/1.1 load, free of coordinated omission.**
//!   `--conns` keep-alive connections, each with its own schedule: connection `i` of
//!   `c` is meant to send its request `k` at `t0 + (i + k * c) / rate`, so together
//!   they send `--rate` requests per second, evenly spread. A pacer thread releases
//!   each request at its time (a `nanosleep` away, ~50-100 µs of slack, where tokio's
//!   timers would round to 1 ms and send in bursts); one single-threaded tokio loop
//!   (epoll, as wrk's) does the I/O of every connection. When an answer comes back
//!   after the connection's next intended time, the next request goes at once and
//!   its latency counts **from its intended time**, as wrk2 and oha's
//!   `--latency-correction` do: a server that stalls is charged for every request the
//!   stall delayed, not only for the one it held. When the connection was idle at the
//!   intended time, latency counts from the actual send, so the client's own wake-up
//!   lateness is not charged to the server. The first `--warmup` seconds are sent but
//!   not recorded.
//! - `burst`: sends one request per token in `--tokens`, up to `--conns` at once, each
//!   on a new connection (a crowd of users arriving together), and reports how they
//!   were answered.
//! - `warm`: sends each token's request until it is answered 200 (`--conns` at a
//!   time, retrying others), so every user is cached before a measurement; fails
//!   after `--max-secs`.
//!
//! Each mode prints one line `RESULT {json}` in the shape of benches/rotate_tokens.lua's
//! (requests, seconds, rps, non2xx, socket_errors, mean_ms, max_ms, pct{50..99.99});
//! `fixed` adds the rate asked, the rate answers came back at (from the start of the
//! recorded window to the last recorded answer), the client's CPU time and how many
//! sends went out more than 1 ms late (its own health: if it is high, the load
//! machine was short, not the server).
//!
//! With `--slow-log FILE`, `fixed` also writes one line per recorded request that took
//! over 2 ms: when it was meant to go (ms since the recorded window began), its
//! latency (ms) and its connection, to see when a tail happened, not only how long.
//!
//! ```text
//! bench_client fixed --url http://127.0.0.1:18100/api/orders --tokens tokens.txt \
//!     --rate 30000 [--conns 64] [--duration 12] [--warmup 3] [--slow-log slow.txt]
//! bench_client burst --url URL --tokens tokens-new-1.txt [--conns 10000]
//! bench_client warm --url URL --tokens tokens.txt [--conns 20] [--max-secs 600]
//! ```
//! Plain `http://IP:PORT/path` URLs only (loopback benchmarks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for one answer (wrk's `--timeout 5s` in load.sh is for a cache hit;
/// a burst request may wait out claimsmith's 5 s metadata timeout, and more).
const FIXED_TIMEOUT: Duration = Duration::from_secs(5);
const BURST_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage("a mode is required"));
    let mut o = Opts {
        conns: 0,
        rate: 0.0,
        duration: 12.0,
        warmup: 3.0,
        max_secs: 600.0,
        url: None,
        tokens: None,
        slow_log: None,
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let num = |v: String| v.parse::<f64>().unwrap_or_else(|_| usage(&format!("{a} takes a number")));
        match a.as_str() {
            "--url" => o.url = Some(val()),
            "--tokens" => o.tokens = Some(val()),
            "--conns" => o.conns = num(val()) as usize,
            "--rate" => o.rate = num(val()),
            "--duration" => o.duration = num(val()),
            "--warmup" => o.warmup = num(val()),
            "--max-secs" => o.max_secs = num(val()),
            "--slow-log" => o.slow_log = Some(val()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let target = Target::parse(o.url.as_deref().unwrap_or_else(|| usage("--url is required")));
    let path = o.tokens.as_deref().unwrap_or_else(|| usage("--tokens is required"));
    let tokens: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_else(|e| usage(&format!("cannot read {path}: {e}")))
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if tokens.is_empty() {
        usage("no tokens in --tokens");
    }
    let reqs: Arc<Vec<Vec<u8>>> = Arc::new(tokens.iter().map(|t| target.request(t)).collect());
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = match mode.as_str() {
        "fixed" => {
            if o.rate <= 0.0 {
                usage("fixed needs --rate");
            }
            let conns = if o.conns == 0 { 64 } else { o.conns };
            fixed(target.addr, reqs, o.rate, conns, (o.warmup, o.duration), o.slow_log.as_deref())
        }
        "burst" => {
            let conns = if o.conns == 0 { reqs.len() } else { o.conns };
            rt().block_on(burst(target.addr, reqs, conns))
        }
        "warm" => {
            let conns = if o.conns == 0 { 20 } else { o.conns };
            rt().block_on(warm(target.addr, reqs, conns, Duration::from_secs_f64(o.max_secs)))
        }
        _ => usage("the mode is fixed, burst or warm"),
    };
    println!("RESULT {result}");
}

struct Opts {
    conns: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    max_secs: f64,
    url: Option<String>,
    tokens: Option<String>,
    slow_log: Option<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "bench_client: {msg}\nusage: bench_client fixed|burst|warm --url http://IP:PORT/PATH --tokens FILE \
         [--rate N] [--conns N] [--duration S] [--warmup S] [--max-secs S]"
    );
    std::process::exit(2)
}

struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Target {
        let rest = url.strip_prefix("http://").unwrap_or_else(|| usage("only http:// URLs"));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = authority.parse().unwrap_or_else(|_| usage("the URL's host must be IP:PORT"));
        Target { addr, authority: authority.to_string(), path: if path.is_empty() { "/" } else { path }.to_string() }
    }

    /// The whole request, formatted once (as rotate_tokens.lua does in `init`).
    fn request(&self, token: &str) -> Vec<u8> {
        format!("GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n", self.path, self.authority)
            .into_bytes()
    }
}

// ---------------------------------------------------------------------------------
// Responses

/// The status of the first response in `buf`, where it ends, and whether the server
/// closes the connection after it; `None` while it is incomplete.
fn response_end(buf: &[u8]) -> Result<Option<(u16, usize, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf).map_err(|e| format!("bad response: {e}"))? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = resp.code.unwrap_or(0);
    let (mut len, mut chunked, mut close) = (None, false, false);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some((status, head, close)));
    }
    if chunked {
        return Ok(chunked_len(&buf[head..])?.map(|n| (status, head + n, close)));
    }
    match len {
        Some(n) => Ok((buf.len() >= head + n).then_some((status, head + n, close))),
        None => Err("a response without Content-Length or chunked framing".into()),
    }
}

/// The length of a complete chunked body at the start of `b`, trailers included.
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let line_end = |from: usize| b[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p);
    let mut i = 0;
    loop {
        let Some(eol) = line_end(i) else { return Ok(None) };
        let size = std::str::from_utf8(&b[i..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or("bad chunk size")?;
        i = eol + 2;
        if size == 0 {
            loop {
                let Some(eol) = line_end(i) else { return Ok(None) };
                let empty = eol == i;
                i = eol + 2;
                if empty {
                    return Ok(Some(i));
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        i += size + 2;
    }
}

// ---------------------------------------------------------------------------------
// fixed

#[derive(Default)]
struct ConnStats {
    /// Latency of every recorded request, ns.
    lat: Vec<u64>,
    non2xx: u64,
    errors: u64,
    /// Errors by kind ("timed out", "connection closed", ...).
    kinds: std::collections::BTreeMap<String, u64>,
    /// Idle sends that went out more than 1 ms after their intended time.
    late: u64,
    /// When the last recorded answer arrived.
    last_done: Option<Instant>,
    /// Recorded requests over [`SLOW`]: (intended time after the window's start, latency, connection).
    slow: Vec<(Duration, Duration, usize)>,
}

/// What `--slow-log` lists.
const SLOW: Duration = Duration::from_millis(2);

/// The schedule every connection follows: request `k` of connection `i` is meant to
/// go at `t0 + (i + k * conns) / rate`, the `(i + k * conns)`-th tick of the rate.
struct Schedule {
    t0: Instant,
    rate: f64,
    conns: usize,
    record_from: Instant,
    end: Instant,
    /// Per connection: how many of its requests the pacer has released, and the
    /// wake-up of its task.
    released: Vec<AtomicUsize>,
    wake: Vec<tokio::sync::Notify>,
}

impl Schedule {
    fn at(&self, tick: usize) -> Instant {
        self.t0 + Duration::from_secs_f64(tick as f64 / self.rate)
    }
}

fn fixed(
    addr: SocketAddr,
    reqs: Arc<Vec<Vec<u8>>>,
    rate: f64,
    conns: usize,
    (warmup, duration): (f64, f64),
    slow_log: Option<&str>,
) -> String {
    // Connections are opened first; the schedule starts when they all could be.
    let t0 = Instant::now() + Duration::from_millis(200);
    let record_from = t0 + Duration::from_secs_f64(warmup);
    let sched = Arc::new(Schedule {
        t0,
        rate,
        conns,
        record_from,
        end: record_from + Duration::from_secs_f64(duration),
        released: (0..conns).map(|_| AtomicUsize::new(0)).collect(),
        wake: (0..conns).map(|_| tokio::sync::Notify::new()).collect(),
    });
    let cpu0 = cpu_seconds();
    // The pacer: a thread of its own, so sends are released at the rate's ticks to
    // within a sleep's slack (~50-100 µs), not to tokio's 1 ms timer wheel.
    let pacer = {
        let sched = sched.clone();
        std::thread::spawn(move || {
            let mut tick = 0;
            loop {
                let at = sched.at(tick);
                if at >= sched.end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let now = Instant::now();
                while sched.at(tick) <= now && sched.at(tick) < sched.end {
                    let i = tick % sched.conns;
                    sched.released[i].fetch_add(1, Release);
                    sched.wake[i].notify_one();
                    tick += 1;
                }
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let next = Arc::new(AtomicUsize::new(0));
    let mut all = rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..conns {
            tasks.spawn(fixed_conn(addr, reqs.clone(), next.clone(), sched.clone(), i));
        }
        let mut all = ConnStats::default();
        while let Some(s) = tasks.join_next().await {
            let s = s.expect("connection task");
            all.lat.extend(s.lat);
            all.non2xx += s.non2xx;
            all.errors += s.errors;
            for (k, n) in s.kinds {
                *all.kinds.entry(k).or_default() += n;
            }
            all.late += s.late;
            all.last_done = all.last_done.max(s.last_done);
            all.slow.extend(s.slow);
        }
        all
    });
    if let Some(path) = slow_log {
        all.slow.sort();
        let lines: String = all
            .slow
            .iter()
            .map(|(at, lat, conn)| format!("{:.3} {:.3} {conn}\n", at.as_secs_f64() * 1e3, lat.as_secs_f64() * 1e3))
            .collect();
        std::fs::write(path, format!("# intended_ms latency_ms connection\n{lines}"))
            .unwrap_or_else(|e| usage(&format!("cannot write {path}: {e}")));
    }
    pacer.join().expect("pacer");
    let cpu = cpu_seconds() - cpu0;
    // The rate answers actually came back at: the rate asked when the server kept up.
    let took = all.last_done.map_or(duration, |t| t.duration_since(record_from).as_secs_f64().max(duration));
    let kinds: Vec<String> = all.kinds.iter().map(|(k, n)| format!("{k:?}: {n}")).collect();
    let extra = format!(
        r#""target_rate": {rate:.1}, "done_rate": {:.1}, "client_cpu_s": {cpu:.3}, "late_sends": {}, "error_kinds": {{{}}}"#,
        all.lat.len() as f64 / took,
        all.late,
        kinds.join(", ")
    );
    summary(all.lat, duration, all.non2xx, all.errors, &extra)
}

async fn fixed_conn(
    addr: SocketAddr,
    reqs: Arc<Vec<Vec<u8>>>,
    next: Arc<AtomicUsize>,
    sched: Arc<Schedule>,
    i: usize,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok();
    if let Some(s) = &stream {
        let _ = s.set_nodelay(true);
    }
    let mut buf = Vec::with_capacity(16384);
    // When the previous answer arrived.
    let mut prev_done = sched.t0;
    // A server that never catches up must not keep the client going for ever.
    let give_up = sched.end + FIXED_TIMEOUT * 2;
    for k in 0.. {
        let intended = sched.at(i + k * sched.conns);
        if intended >= sched.end {
            break;
        }
        if Instant::now() > give_up {
            // Every request still owed counts as failed.
            let left = sched.end.saturating_duration_since(intended).as_secs_f64();
            let owed = (left * sched.rate / sched.conns as f64).ceil() as u64;
            st.errors += owed;
            *st.kinds.entry("never sent".into()).or_default() += owed;
            break;
        }
        while sched.released[i].load(Acquire) <= k {
            sched.wake[i].notified().await;
        }
        let sent = Instant::now();
        // Idle at the intended time: the time until the send is the client's own (a
        // late wake-up), not the server's, so it is not counted. Busy: the server held
        // the previous answer past this request's time, and that wait is counted.
        let idle = prev_done <= intended;
        let start = if idle { sent } else { intended };
        let record = intended >= sched.record_from;
        if record && idle && sent.duration_since(intended) > Duration::from_millis(1) {
            st.late += 1;
        }
        let req = &reqs[next.fetch_add(1, Relaxed) % reqs.len()];
        let result = one(addr, &mut stream, req, &mut buf, FIXED_TIMEOUT).await;
        prev_done = Instant::now();
        match result {
            Ok(status) if record => {
                let took = prev_done.duration_since(start);
                if took > SLOW {
                    st.slow.push((intended.duration_since(sched.record_from), took, i));
                }
                st.lat.push(took.as_nanos() as u64);
                st.last_done = Some(prev_done);
                st.non2xx += u64::from(!(200..300).contains(&status));
            }
            Err(e) if record => {
                st.errors += 1;
                *st.kinds.entry(e).or_default() += 1;
            }
            _ => {}
        }
    }
    st
}

/// This process's user + system CPU time, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), closed by ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The RESULT object: rotate_tokens.lua's fields, then `extra`.
fn summary(mut lat: Vec<u64>, seconds: f64, non2xx: u64, errors: u64, extra: &str) -> String {
    lat.sort_unstable();
    let n = lat.len();
    let ms = |ns: u64| ns as f64 / 1e6;
    let pct = |p: f64| if n == 0 { 0.0 } else { ms(lat[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1]) };
    let pcts: Vec<String> =
        [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99].iter().map(|&p| format!(r#""{p}": {:.4}"#, pct(p))).collect();
    let mean = if n == 0 { 0.0 } else { ms(lat.iter().sum::<u64>()) / n as f64 };
    let mut s = format!(
        r#"{{"requests": {n}, "seconds": {seconds:.3}, "rps": {:.1}, "non2xx": {non2xx}, "socket_errors": {errors}, "mean_ms": {mean:.4}, "max_ms": {:.4}, "pct": {{{}}}"#,
        n as f64 / seconds,
        lat.last().map_or(0.0, |&v| ms(v)),
        pcts.join(", ")
    );
    if !extra.is_empty() {
        s.push_str(", ");
        s.push_str(extra);
    }
    s.push('}');
    s
}

// ---------------------------------------------------------------------------------
// burst and warm

/// One request on `stream` (connecting first when there is none): its status.
async fn one(
    addr: SocketAddr,
    stream: &mut Option<tokio::net::TcpStream>,
    req: &[u8],
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<u16, String> {
    if stream.is_none() {
        let s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        *stream = Some(s);
    }
    let s = stream.as_mut().expect("connected");
    let exchange = async {
        s.write_all(req).await.map_err(|e| e.to_string())?;
        buf.clear();
        loop {
            if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed".to_string());
            }
            if let Some((status, _, close)) = response_end(buf)? {
                return Ok((status, close));
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, close))) => {
            if close {
                *stream = None;
            }
            Ok(status)
        }
        Ok(Err(e)) => {
            *stream = None;
            Err(e)
        }
        Err(_) => {
            *stream = None;
            Err("timed out".into())
        }
    }
}

async fn burst(addr: SocketAddr, reqs: Arc<Vec<Vec<u8>>>, conns: usize) -> String {
    let permits = Arc::new(tokio::sync::Semaphore::new(conns));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..reqs.len() {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let reqs = reqs.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let mut buf = Vec::with_capacity(4096);
            let status = one(addr, &mut None, &reqs[i], &mut buf, BURST_TIMEOUT).await;
            (status, start.elapsed())
        });
    }
    let (mut lat, mut non2xx, mut errors) = (Vec::new(), 0, 0);
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("burst task") {
            (Ok(status), took) => {
                *statuses.entry(status).or_default() += 1;
                non2xx += u64::from(!(200..300).contains(&status));
                lat.push(took.as_nanos() as u64);
            }
            (Err(_), _) => errors += 1,
        }
    }
    let took = t0.elapsed().as_secs_f64();
    let by_status: Vec<String> = statuses.iter().map(|(s, n)| format!(r#""{s}": {n}"#)).collect();
    summary(lat, took, non2xx, errors, &format!(r#""statuses": {{{}}}"#, by_status.join(", ")))
}

async fn warm(addr: SocketAddr, reqs: Arc<Vec<Vec<u8>>>, conns: usize, max: Duration) -> String {
    let next = Arc::new(AtomicUsize::new(0));
    let tries = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + max;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns.min(reqs.len()) {
        let (reqs, next, tries) = (reqs.clone(), next.clone(), tries.clone());
        tasks.spawn(async move {
            let (mut stream, mut buf, mut lat, mut failed) = (None, Vec::with_capacity(4096), Vec::new(), 0u64);
            loop {
                let i = next.fetch_add(1, Relaxed);
                let Some(req) = reqs.get(i) else { break };
                loop {
                    tries.fetch_add(1, Relaxed);
                    let start = Instant::now();
                    if let Ok(200) = one(addr, &mut stream, req, &mut buf, BURST_TIMEOUT).await {
                        lat.push(start.elapsed().as_nanos() as u64);
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        failed += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            (lat, failed)
        });
    }
    let (mut lat, mut failed) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r.expect("warm task");
        lat.extend(l);
        failed += f;
    }
    let took = t0.elapsed().as_secs_f64();
    let tries = tries.load(Relaxed);
    if failed > 0 {
        eprintln!("bench_client warm: {failed} user(s) never answered 200 within {max:?}");
    }
    let out = summary(lat, took, failed, 0, &format!(r#""tries": {tries}"#));
    if failed > 0 {
        println!("RESULT {out}");
        std::process::exit(1);
    }
    out
}
