//! What a response to one download request means, decided from its head alone: status,
//! `Content-Range`, `Content-Length`, the validators, where the file on disk ends and how
//! large the package is. A pure function, so every case a hostile or broken server can
//! produce is a row of a table test.
//!
//! The server is not trusted:
//! - `206` must answer a `Range` we sent, start exactly at our offset and announce the package
//!   size; a `206` that starts elsewhere (or cannot be read) is never appended: the file starts
//!   over from 0;
//! - `200` is the whole file (the validator changed, or no Range support): it is written from
//!   byte 0, and a `Content-Length` other than the package size fails at once;
//! - `416` with `bytes */size` when the file on disk is already whole means complete;
//! - anything else is a failed attempt, retried while the budget lasts.

use crate::lifecycle::Validator;

/// The parts of a response head the decision reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_range: Option<String>,
    pub content_length: Option<u64>,
    pub validator: Validator,
}

/// Where the download stands when the response arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Bytes of the package already in the file (the `Range` start when > 0).
    pub offset: u64,
    /// `package_size`.
    pub size: u64,
}

impl Position {
    /// A request from this position carries `Range: bytes=<offset>-`.
    pub fn ranged(self) -> bool {
        self.offset > 0
    }
}

/// What to do with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `206` from exactly our offset: append the body.
    Append,
    /// The body is the whole file: write it from byte 0 (dropping what is on disk when
    /// `drop_partial`), and resume later against `validator`.
    WholeFile {
        drop_partial: bool,
        validator: Validator,
    },
    /// The file on disk is already the whole package.
    Complete,
    /// The server cannot serve the range right: drop what is on disk (it may belong to another
    /// version of the file) and count a failed attempt.
    StartOver(String),
    /// A failed attempt (server error, unexpected status): retry while the budget lasts.
    Retry(String),
    /// The server says the file is not the announced package: fail now.
    Fail(String),
}

/// Decide what a response means. See the module documentation for the rules.
pub fn interpret(head: &ResponseHead, at: Position) -> Verdict {
    let size = at.size;
    let cr = head.content_range.as_deref().unwrap_or("");
    match head.status {
        206 if at.ranged() => match parse_content_range(cr) {
            Some(r) if r.total.is_some_and(|t| t != size) => Verdict::Fail(format!(
                "server says the file has {} bytes, expected {size}",
                r.total.unwrap_or_default()
            )),
            Some(r) if r.start == at.offset && r.total == Some(size) && r.end < size => {
                Verdict::Append
            }
            _ => Verdict::StartOver(format!(
                "asked for bytes {}- and got Content-Range `{cr}`",
                at.offset
            )),
        },
        200 => match head.content_length {
            Some(len) if len != size => Verdict::Fail(format!(
                "server sends {len} bytes, expected package_size {size}"
            )),
            _ => Verdict::WholeFile {
                drop_partial: at.ranged(),
                validator: head.validator.clone(),
            },
        },
        416 if at.ranged() => {
            let total = cr
                .trim()
                .strip_prefix("bytes */")
                .and_then(|t| t.trim().parse::<u64>().ok());
            if total == Some(size) && at.offset == size {
                Verdict::Complete
            } else {
                Verdict::StartOver(format!(
                    "asked for bytes {}- and got 416 with Content-Range `{cr}`",
                    at.offset
                ))
            }
        }
        s => Verdict::Retry(format!("HTTP {s}")),
    }
}

/// A parsed `Content-Range: bytes <start>-<end>/<total>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub start: u64,
    pub end: u64,
    /// `None` for `*`.
    pub total: Option<u64>,
}

/// `bytes a-b/total` (total may be `*`); `None` for anything else.
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange { start, end, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1000;

    fn etag(v: &str) -> Validator {
        Validator {
            etag: Some(v.into()),
            last_modified: None,
        }
    }

    fn head(status: u16, cr: Option<&str>, len: Option<u64>) -> ResponseHead {
        ResponseHead {
            status,
            content_range: cr.map(str::to_string),
            content_length: len,
            validator: etag("\"v2\""),
        }
    }

    fn at(offset: u64) -> Position {
        Position { offset, size: SIZE }
    }

    #[derive(Debug, PartialEq)]
    enum Kind {
        Append,
        Whole { drop_partial: bool },
        Complete,
        StartOver,
        Retry,
        Fail,
    }

    fn kind(v: &Verdict) -> Kind {
        match v {
            Verdict::Append => Kind::Append,
            Verdict::WholeFile { drop_partial, .. } => Kind::Whole {
                drop_partial: *drop_partial,
            },
            Verdict::Complete => Kind::Complete,
            Verdict::StartOver(_) => Kind::StartOver,
            Verdict::Retry(_) => Kind::Retry,
            Verdict::Fail(_) => Kind::Fail,
        }
    }

    #[test]
    fn contract_6_every_response_has_one_meaning() {
        use Kind::*;
        #[rustfmt::skip]
        let table: &[(&str, ResponseHead, u64, Kind)] = &[
            ("fresh 200", head(200, None, Some(SIZE)), 0, Whole { drop_partial: false }),
            ("fresh 200, chunked (no length)", head(200, None, None), 0, Whole { drop_partial: false }),
            ("200 to a Range: changed file or no Range support", head(200, None, Some(SIZE)), 400, Whole { drop_partial: true }),
            ("200 of another size", head(200, None, Some(SIZE + 1)), 0, Fail),
            ("200 of another size to a Range", head(200, None, Some(10)), 400, Fail),
            ("206 from our offset", head(206, Some("bytes 400-999/1000"), Some(600)), 400, Append),
            ("206 from our offset, part of the rest", head(206, Some("bytes 400-499/1000"), Some(100)), 400, Append),
            ("206 starting early (lying Content-Range)", head(206, Some("bytes 300-999/1000"), Some(700)), 400, StartOver),
            ("206 starting late", head(206, Some("bytes 500-999/1000"), Some(500)), 400, StartOver),
            ("206 running past the file", head(206, Some("bytes 400-1000/1000"), Some(601)), 400, StartOver),
            ("206 of another total", head(206, Some("bytes 400-999/2000"), None), 400, Fail),
            ("206 with unknown total", head(206, Some("bytes 400-999/*"), None), 400, StartOver),
            ("206 without Content-Range", head(206, None, Some(600)), 400, StartOver),
            ("206 with garbage Content-Range", head(206, Some("items 1-2/3"), None), 400, StartOver),
            ("206 to a request without Range", head(206, Some("bytes 0-999/1000"), Some(1000)), 0, Retry),
            ("416 when the file is whole", head(416, Some("bytes */1000"), None), 1000, Complete),
            ("416 while the file is short", head(416, Some("bytes */1000"), None), 400, StartOver),
            ("416 of another total", head(416, Some("bytes */400"), None), 400, StartOver),
            ("416 without Range", head(416, Some("bytes */1000"), None), 0, Retry),
            ("404", head(404, None, None), 0, Retry),
            ("403 (expired presigned URL)", head(403, None, None), 400, Retry),
            ("500", head(500, None, None), 400, Retry),
            ("503", head(503, None, None), 0, Retry),
            ("304", head(304, None, None), 400, Retry),
        ];
        for (name, h, offset, want) in table {
            let got = interpret(h, at(*offset));
            assert_eq!(kind(&got), *want, "{name}: {got:?}");
        }
    }

    #[test]
    fn contract_6_whole_file_adopts_the_new_validator() {
        match interpret(&head(200, None, Some(SIZE)), at(400)) {
            Verdict::WholeFile { validator, .. } => assert_eq!(validator, etag("\"v2\"")),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn content_range_parsing() {
        let cr = |start, end, total| Some(ContentRange { start, end, total });
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            cr(100, 999, Some(1000))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), cr(0, 0, None));
        assert_eq!(parse_content_range("bytes 9-1/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
        assert_eq!(parse_content_range("bytes 1-2/x"), None);
    }
}
