//! A reader of libconfig's syntax (the syntax of SWUpdate's `sw-description`), bounded for
//! untrusted input: the text is at most 64 KiB (the caller's limit) and nesting at most
//! [`MAX_DEPTH`] levels, so neither memory nor the stack grows with what a file claims.
//!
//! Settings are `name = value` or `name : value`, ended by `;`, `,` or nothing; values are
//! strings (`"..."` with libconfig's escapes `\\ \" \f \n \r \t \xHH`, adjacent strings
//! joined; libconfig has no single-quoted form and neither has this reader), integers (decimal or `0x` hex, optional `L`/`LL`),
//! floats, booleans (`true`/`false`, any case), arrays `[ ]` of scalars, lists `( )` of any
//! values and groups `{ }` of settings. Comments: `#`, `//` to the end of the line and
//! `/* */`. A setting name given twice in one group is refused, as libconfig does;
//! `@include` is refused (an envelope carries everything it uses).

/// Deepest nesting of groups, lists and arrays accepted.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Value>),
    List(Vec<Value>),
    Group(Vec<(String, Value)>),
}

impl Value {
    /// The setting `name` of a group.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Group(s) => s.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "an array",
            Value::List(_) => "a list",
            Value::Group(_) => "a group",
        }
    }
}

/// A syntax error: the line (from 1) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: u32,
    pub msg: String,
}

/// Parse a whole configuration: its top level is a group.
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let settings = p.settings(None, 0)?;
    Ok(Value::Group(settings))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    line: u32,
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'*'
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'*')
}

impl Parser<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            line: self.line,
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// Skip white space and comments.
    fn skip(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(c) if c.is_ascii_whitespace() => {
                    self.bump();
                }
                Some(b'#') => self.skip_line(),
                Some(b'/') if self.s.get(self.i + 1) == Some(&b'/') => self.skip_line(),
                Some(b'/') if self.s.get(self.i + 1) == Some(&b'*') => {
                    let line = self.line;
                    self.i += 2;
                    loop {
                        match self.bump() {
                            None => {
                                return Err(SyntaxError {
                                    line,
                                    msg: "comment /* is never closed".into(),
                                })
                            }
                            Some(b'*') if self.peek() == Some(b'/') => {
                                self.i += 1;
                                break;
                            }
                            Some(_) => {}
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            self.i += 1;
        }
    }

    fn describe(&self) -> String {
        match self.peek() {
            None => "the end of the text".into(),
            Some(c) if c.is_ascii_graphic() => format!("'{}'", c as char),
            Some(c) => format!("byte 0x{c:02x}"),
        }
    }

    /// Settings up to `close` (or the end of the text when `None`).
    fn settings(
        &mut self,
        close: Option<u8>,
        depth: usize,
    ) -> Result<Vec<(String, Value)>, SyntaxError> {
        let mut out: Vec<(String, Value)> = Vec::new();
        // The names seen, so that a group of thousands of settings stays linear.
        let mut seen = std::collections::HashSet::new();
        loop {
            self.skip()?;
            match (self.peek(), close) {
                (None, None) => return Ok(out),
                (None, Some(c)) => {
                    return self.err(format!("'{}' expected before the end", c as char))
                }
                (Some(c), Some(cl)) if c == cl => {
                    self.bump();
                    return Ok(out);
                }
                (Some(b'@'), _) => {
                    return self.err("@include and other directives are not supported")
                }
                (Some(c), _) if is_name_start(c) => {}
                _ => {
                    return self.err(format!(
                        "a setting name expected, found {}",
                        self.describe()
                    ))
                }
            }
            let line = self.line;
            let start = self.i;
            while self.peek().is_some_and(is_name_char) {
                self.i += 1;
            }
            let name = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
            self.skip()?;
            match self.peek() {
                Some(b'=') | Some(b':') => {
                    self.bump();
                }
                _ => {
                    return self.err(format!(
                        "'=' or ':' expected after {name:?}, found {}",
                        self.describe()
                    ))
                }
            }
            let value = self.value(depth)?;
            if !seen.insert(name.clone()) {
                return Err(SyntaxError {
                    line,
                    msg: format!("setting {name:?} given twice in one group"),
                });
            }
            out.push((name, value));
            self.skip()?;
            if matches!(self.peek(), Some(b';') | Some(b',')) {
                self.bump();
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.skip()?;
        let nested = matches!(self.peek(), Some(b'{') | Some(b'(') | Some(b'['));
        if nested && depth >= MAX_DEPTH {
            return self.err(format!("nested more than {MAX_DEPTH} levels deep"));
        }
        match self.peek() {
            Some(b'{') => {
                self.bump();
                Ok(Value::Group(self.settings(Some(b'}'), depth + 1)?))
            }
            Some(b'(') => {
                self.bump();
                Ok(Value::List(self.elements(b')', depth + 1, false)?))
            }
            Some(b'[') => {
                self.bump();
                Ok(Value::Array(self.elements(b']', depth + 1, true)?))
            }
            Some(b'"') => self.strings(),
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.') => {
                self.scalar_word()
            }
            _ => self.err(format!("a value expected, found {}", self.describe())),
        }
    }

    /// Elements of a list or an array, separated by commas.
    fn elements(
        &mut self,
        close: u8,
        depth: usize,
        scalars: bool,
    ) -> Result<Vec<Value>, SyntaxError> {
        let mut out = Vec::new();
        self.skip()?;
        if self.peek() == Some(close) {
            self.bump();
            return Ok(out);
        }
        loop {
            let v = self.value(depth)?;
            if scalars && matches!(v, Value::Array(_) | Value::List(_) | Value::Group(_)) {
                return self.err(format!(
                    "an array holds only scalar values, not {}",
                    v.kind()
                ));
            }
            if scalars {
                if let Some(first) = out.first() {
                    if std::mem::discriminant(first) != std::mem::discriminant(&v) {
                        return self.err("the values of an array must all be of one type");
                    }
                }
            }
            out.push(v);
            self.skip()?;
            match self.bump() {
                Some(b',') => {}
                Some(c) if c == close => return Ok(out),
                _ => {
                    return self.err(format!(
                        "',' or '{}' expected in a {}",
                        close as char,
                        if scalars { "array" } else { "list" }
                    ))
                }
            }
        }
    }

    /// One or more adjacent quoted strings, joined.
    fn strings(&mut self) -> Result<Value, SyntaxError> {
        let mut out = Vec::new();
        while self.peek() == Some(b'"') {
            let q = b'"';
            let line = self.line;
            self.bump();
            loop {
                let Some(c) = self.bump() else {
                    return Err(SyntaxError {
                        line,
                        msg: "string is never closed".into(),
                    });
                };
                if c == q {
                    break;
                }
                if c == b'\\' {
                    let e = match self.bump() {
                        Some(b'\\') => b'\\',
                        Some(b'"') => b'"',
                        Some(b'f') => 0x0c,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'x') => {
                            let h = self.s.get(self.i..self.i + 2).unwrap_or_default();
                            let v = std::str::from_utf8(h)
                                .ok()
                                .and_then(|h| u8::from_str_radix(h, 16).ok());
                            match v {
                                Some(v) if h.len() == 2 => {
                                    self.i += 2;
                                    v
                                }
                                _ => {
                                    return self
                                        .err("\\x must be followed by two hexadecimal digits")
                                }
                            }
                        }
                        _ => return self.err("unknown escape sequence in a string"),
                    };
                    out.push(e);
                } else {
                    out.push(c);
                }
            }
            self.skip()?;
        }
        match String::from_utf8(out) {
            Ok(s) => Ok(Value::Str(s)),
            Err(_) => self.err("string is not UTF-8"),
        }
    }

    /// A boolean, an integer or a float.
    fn scalar_word(&mut self) -> Result<Value, SyntaxError> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.' | b'_'))
        {
            self.i += 1;
        }
        let w = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        if w.eq_ignore_ascii_case("true") {
            return Ok(Value::Bool(true));
        }
        if w.eq_ignore_ascii_case("false") {
            return Ok(Value::Bool(false));
        }
        let digits = w.trim_end_matches(['L', 'l']);
        let (neg, body) = match digits.as_bytes().first() {
            Some(b'-') => (true, &digits[1..]),
            Some(b'+') => (false, &digits[1..]),
            _ => (false, digits),
        };
        let int = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
        } else if !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit()) {
            body.parse::<i64>().ok()
        } else {
            None
        };
        if let Some(v) = int {
            return Ok(Value::Int(if neg { v.wrapping_neg() } else { v }));
        }
        let looks_float = w.bytes().any(|c| c.is_ascii_digit())
            && w.bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'));
        match w.parse::<f64>() {
            Ok(f) if looks_float => Ok(Value::Float(f)),
            _ => self.err(format!("{w:?} is not a value (a string must be quoted)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_docs_api_9_3() {
        let text = r#"
            # hash comment
            // slash comment
            /* block
               comment */
            software: {
                version = "1." "2.3";
                count = 0x10L; neg = -5, f = 1.5e3;
                on = TRUE
                hw = [ "a", "b\x41\n" ];
                lst = ( { x = "l\\it"; }, 3 );
                empty = ();
            };
        "#;
        let v = parse(text).unwrap();
        let sw = v.get("software").unwrap();
        assert_eq!(sw.get("version").unwrap().as_str(), Some("1.2.3"));
        assert_eq!(sw.get("count"), Some(&Value::Int(16)));
        assert_eq!(sw.get("neg"), Some(&Value::Int(-5)));
        assert_eq!(sw.get("f"), Some(&Value::Float(1500.0)));
        assert_eq!(sw.get("on"), Some(&Value::Bool(true)));
        assert_eq!(
            sw.get("hw"),
            Some(&Value::Array(vec![
                Value::Str("a".into()),
                Value::Str("bA\n".into())
            ]))
        );
        let Some(Value::List(l)) = sw.get("lst") else {
            panic!()
        };
        assert_eq!(l[0].get("x").unwrap().as_str(), Some("l\\it"));
        assert_eq!(sw.get("empty"), Some(&Value::List(vec![])));
    }

    #[test]
    fn errors_name_their_line_docs_api_9_3() {
        let cases: &[(&str, u32, &str)] = &[
            ("a = 1;\nb = ;\n", 2, "a value expected"),
            ("a = \"x\n\n", 1, "never closed"),
            ("a = 1;\na = 2;", 2, "twice"),
            ("a = { b = 1;", 1, "'}' expected"),
            ("\n\n/* x", 3, "never closed"),
            ("@include \"x\"", 1, "@include"),
            ("a = [ 1, \"x\" ];", 1, "one type"),
            ("a = [ (1) ];", 1, "only scalar"),
            ("a = bare;", 1, "must be quoted"),
            ("a = 'x';", 1, "a value expected"),
            ("a 1;", 1, "'=' or ':'"),
        ];
        for (text, line, msg) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e:?}");
            assert!(e.msg.contains(msg), "{text:?}: {e:?}");
        }
        let deep = format!("a = {}{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().msg.contains("nested"));
    }
}
