//! The real-Redis fixture (`support/redis.rs`) does what the shared-cache tests rely on:
//! it answers, refuses a wrong password, comes back on the same port after a kill,
//! stops answering while paused, and shows everything it holds.

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use support::redis::{RedisOpts, RedisServer, RespValue};

fn ok() -> RespValue {
    RespValue::Simple("OK".into())
}

#[test]
fn starts_answers_and_shows_what_it_holds() {
    let redis = RedisServer::start();
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.ping(Duration::from_secs(1)).expect("PING"), RespValue::Simple("PONG".into()));

    // Binary-safe values, every type, read back through SCAN.
    assert_eq!(redis.command(&[&b"SET"[..], b"k:bin", b"\x00\r\n\xffsecret"]), ok());
    assert_eq!(redis.command(&["HSET", "k:hash", "field", "hash-secret"]), RespValue::Integer(1));
    assert_eq!(redis.command(&["RPUSH", "k:list", "a", "list-secret"]), RespValue::Integer(2));
    assert_eq!(redis.command(&["GET", "k:missing"]), RespValue::Nil);
    assert!(redis.command(&["NOSUCHCOMMAND"]).as_error().is_some());
    assert_eq!(redis.keys(), vec![b"k:bin".to_vec(), b"k:hash".to_vec(), b"k:list".to_vec()]);
    let all = redis.dump_all();
    assert_eq!(
        all,
        vec![
            (b"k:bin".to_vec(), b"\x00\r\n\xffsecret".to_vec()),
            (b"k:hash".to_vec(), b"field\nhash-secret".to_vec()),
            (b"k:list".to_vec(), b"a\nlist-secret".to_vec()),
        ]
    );
    redis.flushall();
    assert!(redis.keys().is_empty());
}

#[test]
fn passwords_are_required_and_can_change() {
    let redis = RedisServer::start_with(RedisOpts::default().user("cache", "p@ss/word"));
    assert_eq!(redis.url(), format!("redis://cache:p%40ss%2Fword@127.0.0.1:{}", redis.port()));
    let refused = redis.ping(Duration::from_secs(1)).expect("PING");
    assert!(refused.as_error().is_some_and(|e| e.starts_with("NOAUTH")), "{refused:?}");

    let mut conn = redis.raw_conn(Duration::from_secs(1)).expect("connect");
    let wrong = conn.call(&["AUTH", "cache", "wrong"]).expect("AUTH");
    assert!(wrong.as_error().is_some_and(|e| e.starts_with("WRONGPASS")), "{wrong:?}");
    // The default user is off.
    let default = conn.call(&["AUTH", "p@ss/word"]).expect("AUTH");
    assert!(default.as_error().is_some(), "{default:?}");
    assert_eq!(conn.call(&["AUTH", "cache", "p@ss/word"]).expect("AUTH"), ok());
    assert_eq!(conn.call(&["SET", "k", "v"]).expect("SET"), ok());

    // A new password: the connection authenticated with the old one is closed, and
    // the old password is refused from then on.
    redis.set_password("new-pass");
    assert!(conn.call(&["GET", "k"]).is_err(), "the old connection survived the password change");
    let mut conn = redis.raw_conn(Duration::from_secs(1)).expect("connect");
    let old = conn.call(&["AUTH", "cache", "p@ss/word"]).expect("AUTH");
    assert!(old.as_error().is_some_and(|e| e.starts_with("WRONGPASS")), "{old:?}");
    assert_eq!(conn.call(&["AUTH", "cache", "new-pass"]).expect("AUTH"), ok());
    assert_eq!(redis.command(&["GET", "k"]).as_str(), Some("v"));

    // requirepass alone: the default user, an empty user name in the URL.
    let redis = RedisServer::start_with(RedisOpts::default().password("pw"));
    assert_eq!(redis.url(), format!("redis://:pw@127.0.0.1:{}", redis.port()));
    let mut conn = redis.raw_conn(Duration::from_secs(1)).expect("connect");
    assert!(conn.call(&["AUTH", "nope"]).expect("AUTH").as_error().is_some());
    redis.set_password("pw2");
    let mut conn = redis.raw_conn(Duration::from_secs(1)).expect("connect");
    assert!(conn.call(&["AUTH", "pw"]).expect("AUTH").as_error().is_some());
    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));
}

#[test]
fn kill_restart_pause_resume() {
    let redis = RedisServer::start_with(RedisOpts::default().password("pw"));
    let port = redis.port();
    redis.command(&["SET", "k", "v"]);

    redis.kill();
    let down = redis.ping(Duration::from_millis(300));
    assert!(down.is_err(), "answered after kill: {down:?}");

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));
    assert!(redis.keys().is_empty(), "a restart keeps nothing");

    // Paused: a connection opens (the kernel accepts it) but nothing is answered.
    let mut held = redis.raw_conn(Duration::from_secs(2)).expect("connect");
    redis.pause();
    let started = Instant::now();
    let timed_out = redis.ping(Duration::from_millis(300)).expect_err("a paused server answered PING");
    assert!(matches!(timed_out.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{timed_out:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    redis.resume();
    // A connection opened before the pause works again.
    let noauth = held.call(&["PING"]).expect("PING after resume");
    assert!(noauth.as_error().is_some_and(|e| e.starts_with("NOAUTH")), "{noauth:?}");
    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));

    // Restart while paused works too; drop kills whatever state it is in.
    redis.pause();
    redis.restart();
    assert_eq!(redis.command(&["PING"]), RespValue::Simple("PONG".into()));
    redis.pause();
}
