//! A real nginx (Debian's `nginx-light`, which has `auth_request`) on a free loopback
//! port, from a config the test writes, in the foreground and killed when dropped.
//! Nothing of the system's nginx is used: no daemon, pid, log or temp file outside a
//! temp dir.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_ATTEMPTS: usize = 5;

pub struct Nginx {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

/// The nginx binary: on `PATH`, else where Debian puts it (`/usr/sbin` is not on
/// every user's `PATH`).
fn binary() -> PathBuf {
    for candidate in ["nginx", "/usr/sbin/nginx"] {
        if Command::new(candidate).arg("-v").stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            return PathBuf::from(candidate);
        }
    }
    panic!("nginx is not installed: `apt-get install nginx-light` (.ci/run installs it)");
}

impl Nginx {
    /// Starts nginx with the `http { ... }` block `server(port, dir)` returns (the
    /// `server` must listen on `127.0.0.1:{port}`), wrapped in a main section that
    /// keeps it in the foreground, single-process, with everything in `dir`.
    pub fn start(server: impl Fn(u16, &Path) -> String) -> Nginx {
        let bin = binary();
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new().prefix("claimsmith-nginx").tempdir().expect("temp dir for nginx");
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            let d = dir.path().display().to_string();
            let tmp = dir.path().join("tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            let t = tmp.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {t};\n  proxy_temp_path {t};\n  \
                 fastcgi_temp_path {t};\n  uwsgi_temp_path {t};\n  scgi_temp_path {t};\n{}\n}}\n",
                server(port, dir.path())
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let out = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
            let mut child = Command::new(&bin)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .arg("-c")
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .expect("starting nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push_str(&format!("port {port}: nginx exited ({status}):\n{}\n", log(dir.path())));
                    break;
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Nginx { port, dir, child };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    failures.push_str(&format!("port {port}: nginx did not listen in 10 s:\n{}\n", log(dir.path())));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("nginx did not start in {START_ATTEMPTS} attempts:\n{failures}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// nginx's error log and stderr so far.
    pub fn log(&self) -> String {
        log(self.dir.path())
    }
}

fn log(dir: &Path) -> String {
    let mut s = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    s.push_str(&std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default());
    s
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
