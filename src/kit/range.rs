//! What a package server answers (pure functions, no I/O): the honest answer to a request
//! with `Range` and `If-Range` (RFC 9110: 200, 206, 416), and the lies of hostile servers
//! (a body cut short, a `Content-Range` that does not match the bytes sent).
//!
//! Every answer says `Connection: close`: one request per connection, as [`super::serve`]
//! serves them.

use std::fmt::Write as _;
use std::ops::Range;

use super::serve::Request;

/// What a `Range` header asks of a body of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: the whole body, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial(u64, u64),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// A single `bytes=` range (`N-`, `N-M`, `-N`); anything else is ignored as RFC 9110 allows,
/// which serves the whole body.
pub fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial(len - n.min(len), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial(start, end.min(len - 1))
}

/// What `req` gets from a body of `len` bytes whose strong validator is `etag`: its `Range`,
/// unless `If-Range` names another validator (the client's partial copy is stale: all of it).
pub fn judge(req: &Request, len: u64, etag: &str) -> RangeAnswer {
    let fresh = req.header("if-range").is_none_or(|v| v == etag);
    match req.header("range") {
        Some(r) if fresh => parse_range(r, len),
        _ => RangeAnswer::Full,
    }
}

fn head(status: &str, content_length: u64, etag: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/zip\r\n\
         Content-Length: {content_length}\r\n\
         ETag: {etag}\r\n\
         Accept-Ranges: bytes\r\n\
         {extra}\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a `200` announcing `len` bytes.
pub fn head_200(len: u64, etag: &str) -> Vec<u8> {
    head("200 OK", len, etag, "")
}

/// The head of a `206` whose `Content-Range` says `start-end/total` and whose
/// `Content-Length` says `content_length` (an honest server: `end + 1 - start`).
pub fn head_206(start: u64, end: u64, total: u64, content_length: u64, etag: &str) -> Vec<u8> {
    let range = format!("Content-Range: bytes {start}-{end}/{total}\r\n");
    head("206 Partial Content", content_length, etag, &range)
}

/// The head of a `416` for a body of `len` bytes.
pub fn head_416(len: u64, etag: &str) -> Vec<u8> {
    let range = format!("Content-Range: bytes */{len}\r\n");
    head("416 Range Not Satisfiable", 0, etag, &range)
}

/// A bodiless answer with this status line (`404 Not Found`, `503 Service Unavailable`...).
pub fn status_only(status: &str) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    let _ = write!(s, "Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.into_bytes()
}

/// The correct answer to `req` for a body of `len` bytes: its head, and which bytes of the
/// body follow it (none for `HEAD`, a 416 or a method other than GET and HEAD, which gets 405).
pub fn honest(len: u64, etag: &str, req: &Request) -> (Vec<u8>, Range<u64>) {
    let method = req.method();
    if method != "GET" && method != "HEAD" {
        return (status_only("405 Method Not Allowed"), 0..0);
    }
    let (head, body) = match judge(req, len, etag) {
        RangeAnswer::Full => (head_200(len, etag), 0..len),
        RangeAnswer::Partial(start, end) => (
            head_206(start, end, len, end + 1 - start, etag),
            start..end + 1,
        ),
        RangeAnswer::Unsatisfiable => (head_416(len, etag), len..len),
    };
    if method == "HEAD" {
        (head, body.start..body.start)
    } else {
        (head, body)
    }
}

/// `data[range]`, empty where the range falls outside it.
pub fn slice(data: &[u8], range: Range<u64>) -> &[u8] {
    let (a, b) = (range.start as usize, range.end as usize);
    data.get(a..b).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Hostile answers

/// A `200` announcing all of `data` whose body stops after `cut_at` bytes (the connection then
/// closes); `None`: the whole body.
pub fn cut(data: &[u8], etag: &str, cut_at: Option<usize>) -> Vec<u8> {
    let mut out = head_200(data.len() as u64, etag);
    out.extend_from_slice(&data[..cut_at.unwrap_or(data.len()).min(data.len())]);
    out
}

/// A `206` whose `Content-Range` claims `claimed_start..` of `data` but whose body holds the
/// bytes from `real_start` (with a `Content-Length` that matches the body).
pub fn misplaced(data: &[u8], etag: &str, claimed_start: usize, real_start: usize) -> Vec<u8> {
    let len = data.len() as u64;
    let body = &data[real_start.min(data.len())..];
    let end = len.saturating_sub(1);
    let mut out = head_206(claimed_start as u64, end, len, body.len() as u64, etag);
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &str) -> Request {
        Request::parse(0, head).unwrap()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=4-", 10), Partial(4, 9));
        assert_eq!(parse_range("bytes=9-", 10), Partial(9, 9));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=2-5", 10), Partial(2, 5));
        assert_eq!(parse_range("bytes=2-50", 10), Partial(2, 9));
        assert_eq!(parse_range("bytes=-3", 10), Partial(7, 9));
        assert_eq!(parse_range("bytes=-30", 10), Partial(0, 9));
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 10), Full);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Full);
        assert_eq!(parse_range("items=0-", 10), Full);
        assert_eq!(parse_range("bytes=x-", 10), Full);
    }

    #[test]
    fn honest_answers_full_partial_stale_unsatisfiable_head_and_405() {
        let e = "\"abc\"";
        let (h, b) = honest(100_000, e, &req("GET /p HTTP/1.1\r\n\r\n"));
        let h = text(&h);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"), "{h}");
        assert!(h.contains("Content-Length: 100000\r\n"), "{h}");
        assert!(h.contains("ETag: \"abc\"\r\n"), "{h}");
        assert!(h.ends_with("Connection: close\r\n\r\n"), "{h}");
        assert_eq!(b, 0..100_000);

        let r = req("GET /p HTTP/1.1\r\nRange: bytes=99000-\r\nIf-Range: \"abc\"\r\n\r\n");
        let (h, b) = honest(100_000, e, &r);
        let h = text(&h);
        assert!(h.starts_with("HTTP/1.1 206"), "{h}");
        assert!(
            h.contains("Content-Range: bytes 99000-99999/100000\r\n"),
            "{h}"
        );
        assert!(h.contains("Content-Length: 1000\r\n"), "{h}");
        assert_eq!(b, 99_000..100_000);

        let r = req("GET /p HTTP/1.1\r\nrange: bytes=50-\r\nif-range: \"old\"\r\n\r\n");
        let (h, b) = honest(100_000, e, &r);
        assert!(text(&h).starts_with("HTTP/1.1 200"));
        assert_eq!(b, 0..100_000);

        let r = req("GET /p HTTP/1.1\r\nRange: bytes=100000-\r\n\r\n");
        let (h, b) = honest(100_000, e, &r);
        let h = text(&h);
        assert!(h.starts_with("HTTP/1.1 416"), "{h}");
        assert!(h.contains("Content-Range: bytes */100000\r\n"), "{h}");
        assert!(h.contains("Content-Length: 0\r\n"), "{h}");
        assert!(b.is_empty());

        let (h, b) = honest(100_000, e, &req("HEAD /p HTTP/1.1\r\n\r\n"));
        assert!(text(&h).contains("Content-Length: 100000\r\n"));
        assert!(b.is_empty());

        let (h, b) = honest(100_000, e, &req("PUT /p HTTP/1.1\r\n\r\n"));
        assert!(text(&h).starts_with("HTTP/1.1 405"));
        assert!(b.is_empty());
    }

    #[test]
    fn hostile_answers_lie_as_told() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let c = cut(&data, "\"e\"", Some(1000));
        let split = c.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(text(&c[..split]).contains("Content-Length: 5000\r\n"));
        assert_eq!(&c[split..], &data[..1000]);

        let m = misplaced(&data, "\"e\"", 3000, 2000);
        let split = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let h = text(&m[..split]);
        assert!(h.contains("Content-Range: bytes 3000-4999/5000\r\n"), "{h}");
        assert!(h.contains("Content-Length: 3000\r\n"), "{h}");
        assert_eq!(&m[split..], &data[2000..]);
        assert_eq!(slice(&data, 4990..6000), b"");
        assert_eq!(slice(&data, 4990..5000), &data[4990..]);
    }
}
