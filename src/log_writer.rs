//! Where log lines go: a buffer in memory that a thread of its own writes out.
//!
//! The access log writes a line per request. Written straight to standard error that is
//! a `write` system call per request on the thread that serves requests, about as
//! costly as the request's own socket reads and writes (docs/performance.md, the `log`
//! set), and a destination that stalls (a full disk, a slow pipe to a log collector)
//! would stall every request behind it. So lines are appended to a buffer under a lock
//! held only for the copy, and one writer thread hands the buffer to the destination
//! in one write when it reaches [`FLUSH_AT`], every [`FLUSH_EVERY`], at once for a
//! warning or an error, and on exit (through [`Flusher`]'s `Drop`).
//!
//! What this costs: a line reaches the destination up to [`FLUSH_EVERY`] later, and a
//! process killed with SIGKILL loses at most that much. When the destination does not
//! keep up and [`MAX_PENDING`] bytes wait, new lines are dropped rather than blocking
//! requests; the count is reported once the destination takes writes again. nginx's
//! `access_log ... buffer= flush=` makes the same trade.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes that make the writer thread write at once.
pub const FLUSH_AT: usize = 64 * 1024;
/// The longest a line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Bytes waiting beyond which new lines are dropped (counted) instead of queued.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;

/// The lines waiting and what the writer thread should do about them.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines refused since the last report because `bytes` was full.
    dropped: u64,
    /// A warning or an error is waiting: write without waiting for more.
    urgent: bool,
    stop: bool,
    /// How many times the writer thread has taken `bytes`, and how many of those it
    /// has finished writing: [`LogWriter::flush`] waits for the next take's write.
    taken: u64,
    written: u64,
    /// The writer thread has returned: nothing will be written any more.
    gone: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Signalled after each write, for [`LogWriter::flush`].
    wrote: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A thread that panicked while appending left at worst a partial line.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands out the writers `tracing_subscriber` formats each event into
/// (`fmt().with_writer(..)`). Cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Owns the writer thread; dropping it writes what is left and waits for the thread.
/// Keep it alive for as long as anything may log (in `main`).
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `dest` (standard error, in `main`).
pub fn start(dest: Box<dyn Write + Send>) -> std::io::Result<(LogWriter, Flusher)> {
    start_with(dest, FLUSH_EVERY)
}

fn start_with(dest: Box<dyn Write + Send>, every: Duration) -> std::io::Result<(LogWriter, Flusher)> {
    let shared =
        Arc::new(Shared { pending: Mutex::new(Pending::default()), wake: Condvar::new(), wrote: Condvar::new() });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new().name("claimsmith-log".into()).spawn(move || write_out(&shared, dest, every))?
    };
    Ok((LogWriter { shared: shared.clone() }, Flusher { shared, thread: Some(thread) }))
}

/// The writer thread: waits for a reason to write, takes everything waiting, writes it
/// outside the lock.
fn write_out(shared: &Shared, mut dest: Box<dyn Write + Send>, every: Duration) {
    let mut spare = Vec::with_capacity(FLUSH_AT * 2);
    loop {
        let (stop, dropped, take) = {
            let mut p = shared.lock();
            if !(p.stop || p.urgent || p.bytes.len() >= FLUSH_AT) {
                p = shared.wake.wait_timeout(p, every).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            std::mem::swap(&mut p.bytes, &mut spare);
            p.urgent = false;
            p.taken += 1;
            (p.stop, std::mem::take(&mut p.dropped), p.taken)
        };
        // A destination that fails (closed pipe, full disk) loses these lines; there
        // is nowhere else to say so.
        if !spare.is_empty() {
            let _ = dest.write_all(&spare);
        }
        if dropped > 0 {
            let note = format!(
                "claimsmith: {dropped} log line(s) dropped: the log's destination did not keep up (more than {MAX_PENDING} bytes waited)\n"
            );
            let _ = dest.write_all(note.as_bytes());
        }
        let _ = dest.flush();
        {
            let mut p = shared.lock();
            p.written = take;
            p.gone = stop;
        }
        shared.wrote.notify_all();
        // Keep one buffer's worth of capacity, not the high-water mark of a stall.
        spare.clear();
        if spare.capacity() > FLUSH_AT * 4 {
            spare.shrink_to(FLUSH_AT * 2);
        }
        if stop {
            return;
        }
    }
}

impl LogWriter {
    /// Waits (at most `timeout`) until every line appended before the call is written:
    /// before a message that goes to standard error directly (a failure to start, a
    /// panic), so it comes after the lines that led to it.
    pub fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut p = self.shared.lock();
        // The next take holds everything appended so far.
        let want = p.taken + 1;
        p.urgent = true;
        self.shared.wake.notify_one();
        while p.written < want && !p.gone {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            p = self.shared.wrote.wait_timeout(p, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let mut p = self.shared.lock();
        if p.bytes.len() + line.len() > MAX_PENDING {
            p.dropped += 1;
            return;
        }
        let was_below = p.bytes.len() < FLUSH_AT;
        p.bytes.extend_from_slice(line);
        p.urgent |= urgent;
        // Wake the thread once per filled buffer, not once per line.
        let wake = urgent || (was_below && p.bytes.len() >= FLUSH_AT);
        drop(p);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

impl Flusher {
    /// Writes whatever waits now and returns once it is written.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One event's writer: `tracing_subscriber` formats the whole line first and writes it
/// with one `write_all`, so each `write` here is appended whole.
pub struct LineWriter<'a> {
    to: &'a LogWriter,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.to.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { to: self, urgent: false }
    }

    /// Warnings and errors are written at once: an operator watching the log sees a
    /// failure when it happens, and it is not lost if the process dies soon after.
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter<'a> {
        LineWriter { to: self, urgent: *meta.level() <= tracing::Level::WARN }
    }
}

/// The JSON access log, written without `tracing_subscriber`'s formatter: with the
/// access log on, building each line through its generic field visitor cost more than
/// the rest of the request's own work (docs/performance.md, the `log` set). The
/// line is the same, field for field and byte for byte, as the JSON formatter writes
/// (`tracing_subscriber::fmt().json().flatten_event(true)`); a test compares the two.
static JSON_LINES: OnceLock<LogWriter> = OnceLock::new();

/// From now on, lines built with [`JsonLine`] go straight to `writer` (`main` calls
/// this with `--log-format json`). Without it (text logs, tests, an embedding) the
/// access log goes through `tracing` as any other event.
pub fn write_json_lines_to(writer: LogWriter) {
    let _ = JSON_LINES.set(writer);
}

/// One JSON log line being built, in a buffer of the thread's own.
pub(crate) struct JsonLine {
    buf: String,
}

thread_local! {
    static LINE_BUF: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

impl JsonLine {
    /// A line at INFO with `message`, or `None` when JSON lines are not written
    /// directly ([`write_json_lines_to`]).
    pub(crate) fn info(message: &str) -> Option<JsonLine> {
        JSON_LINES.get()?;
        Some(JsonLine::begin(Some(std::time::SystemTime::now()), message))
    }

    fn begin(at: Option<std::time::SystemTime>, message: &str) -> JsonLine {
        let mut line = JsonLine { buf: LINE_BUF.take() };
        line.buf.clear();
        line.buf.push('{');
        if let Some(at) = at {
            line.buf.push_str("\"timestamp\":\"");
            rfc3339_micros(&mut line.buf, at);
            line.buf.push_str("\",");
        }
        line.buf.push_str("\"level\":\"INFO\"");
        line.str("message", message);
        line
    }

    /// A string field, escaped as JSON (RFC 8259, section 7).
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.buf.push('"');
        escape(&mut self.buf, value);
        self.buf.push('"');
    }

    pub(crate) fn uint(&mut self, key: &str, value: u64) {
        use std::fmt::Write as _;
        self.key(key);
        let _ = write!(self.buf, "{value}");
    }

    /// A number as `serde_json` writes an `f64` (shortest round-trip, `null` if not
    /// finite).
    pub(crate) fn float(&mut self, key: &str, value: f64) {
        self.key(key);
        if value.is_finite() {
            self.buf.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            self.buf.push_str("null");
        }
    }

    fn key(&mut self, key: &str) {
        self.buf.push_str(",\"");
        escape(&mut self.buf, key);
        self.buf.push_str("\":");
    }

    /// Ends the line with its `target` and hands it to the log writer.
    pub(crate) fn finish(self, target: &str) {
        let buf = self.end(target);
        if let Some(w) = JSON_LINES.get() {
            w.append(buf.as_bytes(), false);
        }
        LINE_BUF.set(buf);
    }

    fn end(mut self, target: &str) -> String {
        self.str("target", target);
        self.buf.push_str("}\n");
        self.buf
    }
}

/// `value` as the inside of a JSON string: `"`, `\` and control characters escaped
/// the way `serde_json` escapes them, everything else as it is.
fn escape(out: &mut String, value: &str) {
    use std::fmt::Write as _;
    let mut rest = value;
    // Bytes, not chars: every byte that needs escaping is ASCII, so `at` is always on
    // a char boundary.
    while let Some(at) = rest.bytes().position(|b| b == b'"' || b == b'\\' || b < b' ') {
        out.push_str(&rest[..at]);
        let c = rest.as_bytes()[at];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            c => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// `2026-11-30T21:11:24.017180Z`: RFC 3339 in UTC with microseconds, as
/// `tracing_subscriber`'s default timer writes it.
fn rfc3339_micros(out: &mut String, at: std::time::SystemTime) {
    use std::fmt::Write as _;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    );
}

/// Year, month and day of the `days`-th day after 1970-01-01 in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;
    use tracing_subscriber::fmt::MakeWriter;

    /// A destination the test can read, and optionally hold: while `gate` is held
    /// every write waits, as a full disk or a stalled pipe would make it.
    #[derive(Clone, Default)]
    struct Dest {
        got: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Dest {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _wait = self.gate.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Dest {
        fn text(&self) -> String {
            String::from_utf8(self.got.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(w: &LogWriter, text: &str) {
        w.make_writer().write_all(text.as_bytes()).unwrap();
    }

    fn wait_for(dest: &Dest, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = dest.text();
            if what(&text) || Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_all_of_them_on_finish() {
        let dest = Dest::default();
        let (w, flusher) = start(Box::new(dest.clone())).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        line(&w, &format!("thread {t} line {i:05}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        flusher.finish();
        let text = dest.text();
        assert_eq!(text.lines().count(), 20_000);
        for t in 0..4 {
            let mine: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let want: Vec<String> = (0..5000).map(|i| format!("thread {t} line {i:05}")).collect();
            assert_eq!(mine, want, "thread {t}'s lines are whole and in its order");
        }
    }

    #[test]
    fn a_quiet_line_waits_for_the_interval_and_a_warning_goes_at_once() {
        let dest = Dest::default();
        let (w, flusher) = start(Box::new(dest.clone())).unwrap();
        line(&w, "quiet\n");
        assert_eq!(wait_for(&dest, |t| t.contains("quiet")), "quiet\n");
        flusher.finish();

        // With an interval of an hour only a warning's own wake writes anything.
        let dest = Dest::default();
        let (w, flusher) = start_with(Box::new(dest.clone()), Duration::from_secs(3600)).unwrap();
        let subscriber = tracing_subscriber::fmt().with_writer(w).with_ansi(false).without_time().finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("informed");
            tracing::warn!("warned");
        });
        let text = wait_for(&dest, |t| t.contains("warned"));
        assert!(text.contains("INFO") && text.contains("informed"), "{text}");
        assert!(text.contains("WARN") && text.contains("warned"), "{text}");
        assert!(text.find("informed") < text.find("warned"), "{text}");
        flusher.finish();
    }

    #[test]
    fn flush_returns_once_everything_before_it_is_written() {
        let dest = Dest::default();
        let (w, flusher) = start_with(Box::new(dest.clone()), Duration::from_secs(3600)).unwrap();
        for i in 0..10 {
            line(&w, &format!("line {i}\n"));
        }
        w.flush(Duration::from_secs(30));
        assert_eq!(dest.text().lines().count(), 10);
        flusher.finish();
        // After the thread is gone, flush does not wait for it.
        line(&w, "late\n");
        w.flush(Duration::from_secs(3600));
    }

    /// The access log's own JSON lines are what tracing_subscriber's JSON formatter
    /// writes for the same event, escapes and number forms included.
    #[test]
    fn a_json_line_is_what_the_json_formatter_writes() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Shared2(sink.clone()))
            .json()
            .flatten_event(true)
            .without_time()
            .finish();
        let odd = "a\"b\\c\u{1}\n\t\u{7f}é/</script>";
        let cases: [(f64, Option<f64>, Option<&str>); 4] = [
            (0.5659299999999999, Some(1e-7), Some("hit")),
            (12.0, None, None),
            (1234567.875, Some(0.0), None),
            (f64::NAN, Some(3e21), Some(odd)),
        ];
        tracing::subscriber::with_default(subscriber, || {
            for (duration, upstream, cache) in cases {
                tracing::info!(
                    target: "claimsmith::access",
                    request_id = odd,
                    mode = "proxy",
                    status = 200u16,
                    duration_ms = duration,
                    upstream_ms = upstream,
                    cache = cache,
                    error = None::<&str>,
                    "request"
                );
            }
        });
        let want = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let mut mine = String::new();
        for (duration, upstream, cache) in cases {
            let mut line = JsonLine::begin(None, "request");
            line.str("request_id", odd);
            line.str("mode", "proxy");
            line.uint("status", 200);
            line.float("duration_ms", duration);
            if let Some(u) = upstream {
                line.float("upstream_ms", u);
            }
            if let Some(c) = cache {
                line.str("cache", c);
            }
            mine.push_str(&line.end("claimsmith::access"));
        }
        assert_eq!(mine, want);
    }

    struct Shared2(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared2 {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u32| {
            let mut s = String::new();
            rfc3339_micros(&mut s, std::time::UNIX_EPOCH + Duration::new(secs, micros * 1000));
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_073_084, 17_180), "2026-11-30T21:11:24.017180Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn a_stalled_destination_drops_lines_past_the_limit_counts_them_and_never_blocks() {
        let dest = Dest::default();
        let hold = dest.gate.lock().unwrap();
        let (w, flusher) = start(Box::new(dest.clone())).unwrap();
        // The thread takes the first line and then waits on the destination.
        line(&w, "first\n");
        std::thread::sleep(FLUSH_EVERY * 3);
        let (done, finished) = mpsc::channel();
        let writer = w.clone();
        std::thread::spawn(move || {
            let chunk = "x".repeat(1023) + "\n";
            for _ in 0..(MAX_PENDING / 1024 + 100) {
                line(&writer, &chunk);
            }
            let _ = done.send(());
        });
        // Appending never waits for the destination.
        finished.recv_timeout(Duration::from_secs(10)).expect("appending blocked on a stalled destination");
        drop(hold);
        flusher.finish();
        let text = dest.text();
        assert!(text.starts_with("first\n"));
        let kept = text.lines().filter(|l| l.starts_with('x')).count();
        assert_eq!(kept, MAX_PENDING / 1024);
        assert!(text.contains("claimsmith: 100 log line(s) dropped"), "{}", &text[text.len() - 200..]);
    }
}
