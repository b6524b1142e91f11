//! A real `redis-server` (the Debian package `redis-server`) on 127.0.0.1, one per test:
//! a free port, a temporary directory, no persistence. Besides its URL it offers the
//! faults a shared-cache test needs (kill, restart on the same port, pause, a changed
//! password, dropped connections) and a small blocking RESP2 client to look inside
//! (every key and value, to check that nothing is stored in clear).
//!
//! Everything here is blocking (std::process, std::net): it works from plain and
//! `#[tokio::test]` tests alike. On a current-thread runtime a call holds the runtime's
//! thread while it runs (milliseconds; a start or restart up to a few hundred), so
//! claimsmith, started on that runtime, does not serve meanwhile. Tests import these
//! by name (`use support::redis::{...}`).

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// How long a start or restart may take before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command of the inspection client may wait for its reply.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a start tries to bind (a new port each time for [`RedisServer::start`],
/// the same one for [`RedisServer::restart`]).
const BIND_ATTEMPTS: usize = 5;

/// What the server requires of its clients.
#[derive(Clone, Debug, Default)]
pub struct RedisOpts {
    /// `requirepass`: the default user's password.
    pub password: Option<String>,
    /// An ACL user (name, password) allowed everything (`on >pass ~* &* +@all`). The
    /// default user is switched off, unless `password` is set too.
    pub user: Option<(String, String)>,
}

impl RedisOpts {
    /// A password for the default user (`requirepass`).
    pub fn password(mut self, password: &str) -> RedisOpts {
        self.password = Some(password.to_string());
        self
    }

    /// An ACL user with every permission.
    pub fn user(mut self, name: &str, password: &str) -> RedisOpts {
        self.user = Some((name.to_string(), password.to_string()));
        self
    }

    /// The `AUTH` arguments the fixture itself uses: the ACL user if there is one.
    fn auth(&self) -> Option<Vec<String>> {
        match (&self.user, &self.password) {
            (Some((name, pass)), _) => Some(vec!["AUTH".into(), name.clone(), pass.clone()]),
            (None, Some(pass)) => Some(vec!["AUTH".into(), pass.clone()]),
            (None, None) => None,
        }
    }
}

/// A reply, as RESP2 has them.
#[derive(Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`, `-NOAUTH ...`, `-WRONGPASS ...`
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo`, binary-safe.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Bulk(b) => Some(b),
            RespValue::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// A bulk or simple string as UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The message of an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            RespValue::Error(e) => Some(e),
            _ => None,
        }
    }

    /// Every string and integer inside, depth first (an array's elements in order).
    pub fn flatten(&self, out: &mut Vec<Vec<u8>>) {
        match self {
            RespValue::Simple(s) | RespValue::Error(s) => out.push(s.as_bytes().to_vec()),
            RespValue::Integer(i) => out.push(i.to_string().into_bytes()),
            RespValue::Bulk(b) => out.push(b.clone()),
            RespValue::Nil => {}
            RespValue::Array(a) => a.iter().for_each(|v| v.flatten(out)),
        }
    }
}

impl fmt::Debug for RespValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespValue::Simple(s) => write!(f, "+{s}"),
            RespValue::Error(e) => write!(f, "-{e}"),
            RespValue::Integer(i) => write!(f, ":{i}"),
            RespValue::Bulk(b) => write!(f, "${:?}", String::from_utf8_lossy(b)),
            RespValue::Nil => f.write_str("nil"),
            RespValue::Array(a) => f.debug_list().entries(a).finish(),
        }
    }
}

/// One RESP2 connection, blocking, with a read and write timeout.
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connects to 127.0.0.1:`port`; reads and writes time out after `timeout`.
    pub fn open(port: u16, timeout: Duration) -> io::Result<RespConn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespConn { reader: BufReader::new(stream) })
    }

    /// Sends one command and reads its reply. An error reply is `Ok(RespValue::Error)`;
    /// `Err` is an I/O error, a timeout (`WouldBlock` or `TimedOut`) or a malformed reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<RespValue> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&req)?;
        read_value(&mut self.reader)
    }
}

fn malformed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !line.ends_with(b"\r\n") {
        return Err(malformed(format!("line without CRLF: {:?}", String::from_utf8_lossy(&line))));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| malformed(format!("line not UTF-8: {e}")))
}

fn parse_len(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| malformed(format!("bad length or integer {s:?}")))
}

fn read_value(r: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| malformed("empty reply line".into()))?;
    match kind {
        "+" => Ok(RespValue::Simple(rest.to_string())),
        "-" => Ok(RespValue::Error(rest.to_string())),
        ":" => Ok(RespValue::Integer(parse_len(rest)?)),
        "$" => {
            let Ok(len) = usize::try_from(parse_len(rest)?) else { return Ok(RespValue::Nil) };
            let mut body = vec![0; len + 2];
            r.read_exact(&mut body)?;
            if !body.ends_with(b"\r\n") {
                return Err(malformed("bulk string without CRLF".into()));
            }
            body.truncate(len);
            Ok(RespValue::Bulk(body))
        }
        "*" => {
            let Ok(n) = usize::try_from(parse_len(rest)?) else { return Ok(RespValue::Nil) };
            (0..n).map(|_| read_value(r)).collect::<io::Result<_>>().map(RespValue::Array)
        }
        _ => Err(malformed(format!("unknown reply type {line:?}"))),
    }
}

/// What may be percent-encoded in a URL's userinfo: all but the unreserved characters.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A free port on 127.0.0.1 (never 6379, where a packaged redis may listen).
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 to find a free port");
        let port = l.local_addr().expect("local address of a bound listener").port();
        if port != 6379 {
            return port;
        }
    }
}

/// Quotes a value for redis.conf (double quotes, backslash escapes).
fn conf_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

struct State {
    opts: RedisOpts,
    child: Option<Child>,
}

/// A running `redis-server` on 127.0.0.1, killed (SIGKILL) when dropped.
///
/// Every method takes `&self`, so a test may share the server (e.g. in an `Arc`) and
/// inject a fault from another task. Methods panic, with the server's log, when the
/// server does not do what they ask.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    state: Mutex<State>,
}

impl RedisServer {
    /// A server without a password.
    pub fn start() -> RedisServer {
        Self::start_with(RedisOpts::default())
    }

    /// A server with `opts`; returns once it answers PING.
    pub fn start_with(opts: RedisOpts) -> RedisServer {
        let mut failures = String::new();
        for _ in 0..BIND_ATTEMPTS {
            let dir =
                tempfile::Builder::new().prefix("claimsmith-redis").tempdir().expect("creating a temp dir for redis");
            let port = free_port();
            let state = Mutex::new(State { opts: opts.clone(), child: None });
            let server = RedisServer { port, dir, state };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => failures.push_str(&format!("port {port}: {e}\n")),
            }
        }
        panic!("redis-server did not start in {BIND_ATTEMPTS} attempts:\n{failures}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, with the credentials the server requires now:
    /// `redis://user:pass@…` for an ACL user, `redis://:pass@…` for `requirepass`.
    pub fn url(&self) -> String {
        let opts = self.state().opts.clone();
        match (&opts.user, &opts.password) {
            (Some((name, pass)), _) => self.url_with(name, pass),
            (None, Some(pass)) => self.url_with("", pass),
            (None, None) => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `redis://user:pass@127.0.0.1:PORT`, percent-encoded; an empty `user` stands for
    /// the default user (`redis://:pass@…`).
    pub fn url_with(&self, user: &str, pass: &str) -> String {
        let user = utf8_percent_encode(user, USERINFO);
        let pass = utf8_percent_encode(pass, USERINFO);
        format!("redis://{user}:{pass}@127.0.0.1:{}", self.port)
    }

    /// The temporary directory (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (every start, appended).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let out = std::fs::read_to_string(self.dir().join("stdout.log")).unwrap_or_default();
        if !out.trim().is_empty() {
            log.push_str("\n--- stdout/stderr ---\n");
            log.push_str(&out);
        }
        log
    }

    // -----------------------------------------------------------------------
    // Faults

    /// SIGKILL, and waits for the process to end: connections drop, the port closes.
    /// Nothing is kept (no persistence): a restart starts empty.
    pub fn kill(&self) {
        if let Some(mut child) = self.state().child.take() {
            let _ = child.kill();
            child.wait().expect("waiting for the killed redis-server");
        }
    }

    /// Starts the server again on the same port, with the options and credentials it
    /// has now (a password changed with [`Self::set_password`] stays changed), empty.
    /// Kills it first if it still runs. Returns once it answers PING.
    pub fn restart(&self) {
        self.kill();
        let mut failures = String::new();
        for attempt in 0..BIND_ATTEMPTS {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) => failures.push_str(&format!("attempt {attempt}: {e}\n")),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}:\n{failures}", self.port);
    }

    /// SIGSTOP: connections stay open and new ones are accepted by the kernel, but
    /// nothing is answered until [`Self::resume`] (a client sees timeouts).
    pub fn pause(&self) {
        let pid = self.state().child.as_ref().expect("pause: redis-server is not running").id();
        signal(pid, "STOP");
    }

    /// SIGCONT: what was sent meanwhile is answered now.
    pub fn resume(&self) {
        let pid = self.state().child.as_ref().expect("resume: redis-server is not running").id();
        signal(pid, "CONT");
    }

    /// Changes the password the server requires (the ACL user's if there is one, else
    /// `requirepass`), then drops every client connection ([`Self::kill_clients`]): a
    /// client that reconnects with the old password is refused (`WRONGPASS`).
    pub fn set_password(&self, new: &str) {
        let user = self.state().opts.user.clone();
        let reply = match &user {
            Some((name, _)) => self.command(&["ACL", "SETUSER", name, "resetpass", &format!(">{new}")]),
            None => self.command(&["CONFIG", "SET", "requirepass", new]),
        };
        assert_eq!(reply, RespValue::Simple("OK".into()), "changing the password");
        {
            let mut state = self.state();
            match &mut state.opts.user {
                Some((_, pass)) => *pass = new.to_string(),
                None => state.opts.password = Some(new.to_string()),
            }
        }
        self.kill_clients();
    }

    /// Closes every client connection but the fixture's own (`CLIENT KILL TYPE normal`);
    /// returns how many were closed.
    pub fn kill_clients(&self) -> i64 {
        let reply = self.command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
        reply.as_int().unwrap_or_else(|| panic!("CLIENT KILL answered {reply:?}"))
    }

    // -----------------------------------------------------------------------
    // Inspection

    /// One command on a new connection, after `AUTH` with the server's credentials.
    /// Panics on an I/O error or timeout, or if `AUTH` is refused; an error reply to
    /// the command itself is returned.
    pub fn command<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        self.try_command(args, COMMAND_TIMEOUT).unwrap_or_else(|e| {
            let name = args.first().map(|a| String::from_utf8_lossy(a.as_ref()).into_owned()).unwrap_or_default();
            panic!("redis command {name} failed: {e}\n--- redis log ---\n{}", self.log())
        })
    }

    /// [`Self::command`], returning I/O errors, timeouts and a refused `AUTH`
    /// (`PermissionDenied`) instead of panicking.
    pub fn try_command<A: AsRef<[u8]>>(&self, args: &[A], timeout: Duration) -> io::Result<RespValue> {
        let auth = self.state().opts.auth();
        let mut conn = RespConn::open(self.port, timeout)?;
        if let Some(auth) = auth {
            match conn.call(&auth)? {
                RespValue::Simple(ok) if ok == "OK" => {}
                other => return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("AUTH: {other:?}"))),
            }
        }
        conn.call(args)
    }

    /// A new connection without `AUTH`, for tests that speak to the server themselves.
    pub fn raw_conn(&self, timeout: Duration) -> io::Result<RespConn> {
        RespConn::open(self.port, timeout)
    }

    /// `PING` on a new connection without `AUTH`: `+PONG`, or `-NOAUTH …` when a
    /// password is required; both mean the server is up.
    pub fn ping(&self, timeout: Duration) -> io::Result<RespValue> {
        self.raw_conn(timeout)?.call(&["PING"])
    }

    /// Every key (`SCAN` to the end), sorted, each once.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let reply = self.command(&[&b"SCAN"[..], &cursor, b"MATCH", b"*", b"COUNT", b"1000"]);
            let [next, batch] = reply.as_array().unwrap_or_default() else { panic!("SCAN answered {reply:?}") };
            cursor = next.as_bytes().expect("SCAN cursor is a string").to_vec();
            for k in batch.as_array().expect("SCAN keys are an array") {
                keys.push(k.as_bytes().expect("a key is a string").to_vec());
            }
            if cursor == b"0" {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Every key with its contents: a string's bytes as they are; for a hash, set,
    /// list, sorted set or stream, its fields, members, scores and values joined with
    /// `\n`. Sorted by key. For a test to search everything stored, e.g. for a secret.
    pub fn dump_all(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for key in self.keys() {
            let kind = self.command(&[&b"TYPE"[..], &key]);
            let reply = match kind.as_str().unwrap_or_else(|| panic!("TYPE answered {kind:?}")) {
                "none" => continue, // expired since SCAN
                "string" => self.command(&[&b"GET"[..], &key]),
                "hash" => self.command(&[&b"HGETALL"[..], &key]),
                "set" => self.command(&[&b"SMEMBERS"[..], &key]),
                "list" => self.command(&[&b"LRANGE"[..], &key, b"0", b"-1"]),
                "zset" => self.command(&[&b"ZRANGE"[..], &key, b"0", b"-1", b"WITHSCORES"]),
                "stream" => self.command(&[&b"XRANGE"[..], &key, b"-", b"+"]),
                other => {
                    panic!("key {:?} has a type the fixture does not read: {other}", String::from_utf8_lossy(&key))
                }
            };
            if let RespValue::Error(e) = &reply {
                panic!("reading key {:?}: {e}", String::from_utf8_lossy(&key));
            }
            let value = match reply {
                RespValue::Bulk(b) => b,
                RespValue::Nil => continue, // expired since SCAN
                other => {
                    let mut parts = Vec::new();
                    other.flatten(&mut parts);
                    parts.join(&b'\n')
                }
            };
            out.push((key, value));
        }
        out
    }

    /// `FLUSHALL`: every key gone.
    pub fn flushall(&self) {
        let reply = self.command(&["FLUSHALL"]);
        assert_eq!(reply, RespValue::Simple("OK".into()), "FLUSHALL");
    }

    // -----------------------------------------------------------------------
    // The process

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("redis.log")
    }

    /// redis.conf for the current options (credentials are kept off the command line).
    fn write_config(&self, opts: &RedisOpts) -> PathBuf {
        let dir = self.dir().display().to_string();
        let mut conf = format!(
            "bind 127.0.0.1\nport {}\ndaemonize no\nsave \"\"\nappendonly no\ndir {}\nlogfile {}\n",
            self.port,
            conf_quote(&dir),
            conf_quote(&self.log_path().display().to_string()),
        );
        if let Some(pass) = &opts.password {
            conf.push_str(&format!("requirepass {}\n", conf_quote(pass)));
        }
        if let Some((name, pass)) = &opts.user {
            conf.push_str(&format!("user {} on {} ~* &* +@all\n", conf_quote(name), conf_quote(&format!(">{pass}"))));
            if opts.password.is_none() {
                conf.push_str("user default off\n");
            }
        }
        let path = self.dir().join("redis.conf");
        std::fs::write(&path, conf).expect("writing redis.conf");
        path
    }

    /// Spawns redis-server and waits until it is ready and answers PING; on failure the
    /// process is gone and the error holds the log of this attempt.
    fn spawn_and_wait(&self) -> Result<(), String> {
        let mut state = self.state();
        let conf = self.write_config(&state.opts);
        let log_start = std::fs::metadata(self.log_path()).map(|m| m.len() as usize).unwrap_or(0);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("stdout.log"))
            .expect("opening stdout.log for redis");
        let err = out.try_clone().expect("cloning the stdout.log handle");
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install the Debian package redis-server (.ci/run does)")
            });
        let deadline = Instant::now() + START_TIMEOUT;
        let this_log = || {
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            String::from_utf8_lossy(log.get(log_start..).unwrap_or_default()).into_owned()
        };
        let failure = loop {
            if let Some(status) = child.try_wait().expect("polling redis-server") {
                break format!("redis-server exited ({status})");
            }
            // "Ready to accept connections" is this process's own line: a PONG alone
            // could come from another server that took the port.
            if this_log().contains("Ready to accept connections")
                && let Ok(reply) = self.ping(Duration::from_millis(500))
            {
                match &reply {
                    RespValue::Simple(s) if s == "PONG" => {}
                    RespValue::Error(e) if e.starts_with("NOAUTH") => {}
                    other => break format!("PING answered {other:?}"),
                }
                state.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                break format!("no answer to PING within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        let out = std::fs::read_to_string(self.dir().join("stdout.log")).unwrap_or_default();
        Err(format!("{failure}\n--- redis log ---\n{}\n--- stdout/stderr ---\n{out}", this_log()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut child) = state.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGSTOP or SIGCONT with kill(1) (std has no way to).
fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("running kill -{sig}: {e}"));
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}
