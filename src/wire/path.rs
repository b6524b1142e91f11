//! Path normalisation before routing (docs/security.md, "paths and headers"). The normalised path is both
//! what routes match and what the upstream receives, so `/public/../api/x` cannot
//! reach `/api/` without authentication.

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("the path holds an encoded slash")]
    EncodedSlash,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a NUL")]
    Nul,
    #[error("the path holds a bad percent-encoding")]
    BadEncoding,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes percent-encoded unreserved characters, upper-cases the hex of the rest,
/// then removes dot-segments (RFC 3986 §5.2.4), refusing any climb above the root.
pub fn normalize(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: nothing to decode and no dot-segment possible.
    let needs_work = bytes.iter().any(|&b| matches!(b, b'%' | b'.' | b'\\' | 0));
    if !needs_work {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => {
                let (h, l) = match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEncoding),
                };
                let c = h << 4 | l;
                match c {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    0 => return Err(PathError::Nul),
                    c if is_unreserved(c) => decoded.push(c as char),
                    c => {
                        decoded.push('%');
                        decoded.push(char::from(b"0123456789ABCDEF"[(c >> 4) as usize]));
                        decoded.push(char::from(b"0123456789ABCDEF"[(c & 15) as usize]));
                    }
                }
                i += 3;
            }
            _ => {
                // Safe: we only split at ASCII bytes, so UTF-8 stays intact.
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'%' | b'\\' | 0) {
                    i += 1;
                }
                decoded.push_str(&path[start..i]);
            }
        }
    }
    remove_dot_segments(&decoded).map(std::borrow::Cow::Owned)
}

fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let ok = |a: &str, b: &str| assert_eq!(normalize(a).as_deref(), Ok(b), "{a}");
        ok("/", "/");
        ok("/api/x", "/api/x");
        ok("/public/../api/x", "/api/x");
        ok("/a/./b", "/a/b");
        ok("/a/b/..", "/a/");
        ok("/a/b/.", "/a/b/");
        ok("/%61pi/x", "/api/x");
        ok("/a%2e%2e/b", "/a../b");
        ok("/a/%2e%2e/b", "/b");
        ok("/a/%2E/b", "/a/b");
        ok("/a%20b", "/a%20b");
        ok("/a%3ab", "/a%3Ab");
        ok("/a//b", "/a//b");
        ok("/ünï", "/ünï");
    }

    #[test]
    fn refuses() {
        let bad = |a: &str, e: PathError| assert_eq!(normalize(a), Err(e), "{a}");
        bad("/..", PathError::AboveRoot);
        bad("/a/../../b", PathError::AboveRoot);
        bad("/%2e%2e/api", PathError::AboveRoot);
        bad("/api%2Fx", PathError::EncodedSlash);
        bad("/api%2fx", PathError::EncodedSlash);
        bad("/api\\x", PathError::Backslash);
        bad("/api%5cx", PathError::Backslash);
        bad("/api%00", PathError::Nul);
        bad("/api%zz", PathError::BadEncoding);
        bad("/api%4", PathError::BadEncoding);
        bad("api", PathError::NotAbsolute);
    }
}
