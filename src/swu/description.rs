//! `sw-description`: what the updater reads from it and how it writes it (docs/API.md 9.3).

use super::libconfig::{self, Value};
use super::{EnvelopeMeta, SwuError};

/// The one image type the updater installs.
pub const IMAGE_TYPE: &str = "tope-package";

/// What the updater takes from a `sw-description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub version: String,
    /// The board section the image stands in (`None`: directly in `software`).
    pub board: Option<String>,
    pub hardware_compatibility: Vec<String>,
    pub filename: String,
    /// The image's sha256, 32 bytes.
    pub sha256: [u8; 32],
}

/// Sections of `software` (or a board's) that SWUpdate runs and the updater does not.
const OTHER_ARTIFACTS: [&str; 5] = ["files", "scripts", "partitions", "bootenv", "uboot"];

/// Image attributes that change what the bytes mean; the updater reads plain ZIPs only.
const REFUSED_ATTRIBUTES: [&str; 3] = ["compressed", "encrypted", "ivt"];

fn field<'a>(group: &'a Value, name: &str, at: &str) -> Result<Option<&'a str>, SwuError> {
    match group.get(name) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(v) => Err(SwuError::desc(format!(
            "{at}.{name} is {}, not a string",
            v.kind()
        ))),
    }
}

fn hardware_compatibility(group: &Value, at: &str) -> Result<Option<Vec<String>>, SwuError> {
    match group.get("hardware-compatibility") {
        None => Ok(None),
        Some(Value::Array(a)) | Some(Value::List(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    SwuError::desc(format!(
                        "{at}.hardware-compatibility holds {}, not strings",
                        v.kind()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(SwuError::desc(format!(
            "{at}.hardware-compatibility is {}, not an array of strings",
            v.kind()
        ))),
    }
}

/// A found image: where it stands and its settings.
struct Found<'a> {
    board: Option<&'a str>,
    image: &'a Value,
    at: String,
}

fn collect<'a>(
    group: &'a Value,
    board: Option<&'a str>,
    at: &str,
    out: &mut Vec<Found<'a>>,
) -> Result<(), SwuError> {
    for other in OTHER_ARTIFACTS {
        match group.get(other) {
            Some(Value::List(l)) | Some(Value::Array(l)) if l.is_empty() => {}
            Some(_) => {
                return Err(SwuError::Unsupported {
                    what: format!("{at}.{other}"),
                })
            }
            None => {}
        }
    }
    match group.get("images") {
        None => Ok(()),
        Some(Value::List(images)) => {
            for (i, image) in images.iter().enumerate() {
                let at = format!("{at}.images[{i}]");
                if !matches!(image, Value::Group(_)) {
                    return Err(SwuError::desc(format!(
                        "{at} is {}, not a group",
                        image.kind()
                    )));
                }
                out.push(Found { board, image, at });
            }
            Ok(())
        }
        Some(v) => Err(SwuError::desc(format!(
            "{at}.images is {}, not a list",
            v.kind()
        ))),
    }
}

fn sha256_hex(s: &str, at: &str) -> Result<[u8; 32], SwuError> {
    let bad = || SwuError::desc(format!("{at}.sha256 is not 64 hexadecimal digits"));
    if s.len() != 64 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A member name the updater accepts for its image: one plain path component.
pub fn valid_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 256
        && name != "sw-description"
        && name != super::cpio::TRAILER
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

/// Read `sw-description` (its text, already bounded by the caller).
pub fn parse(text: &str) -> Result<Description, SwuError> {
    let root = libconfig::parse(text).map_err(|e| SwuError::Syntax {
        line: e.line,
        msg: e.msg,
    })?;
    let software = match root.get("software") {
        Some(g @ Value::Group(_)) => g,
        Some(v) => {
            return Err(SwuError::desc(format!(
                "software is {}, not a group",
                v.kind()
            )))
        }
        None => return Err(SwuError::desc("no software group")),
    };
    let version = match field(software, "version", "software")? {
        Some(v) if !v.trim().is_empty() => v.to_owned(),
        _ => return Err(SwuError::desc("software.version is missing or empty")),
    };
    let mut found = Vec::new();
    collect(software, None, "software", &mut found)?;
    if let Value::Group(settings) = software {
        for (name, v) in settings {
            if matches!(v, Value::Group(_)) {
                collect(v, Some(name), &format!("software.{name}"), &mut found)?;
            }
        }
    }
    for f in &found {
        let kind = field(f.image, "type", &f.at)?.unwrap_or("");
        if kind != IMAGE_TYPE {
            let filename = field(f.image, "filename", &f.at)?.unwrap_or("").to_owned();
            return Err(SwuError::ForeignImage {
                filename,
                kind: kind.to_owned(),
            });
        }
    }
    let f = match found.len() {
        0 => return Err(SwuError::NoImage),
        1 => &found[0],
        count => return Err(SwuError::MoreThanOneImage { count }),
    };
    let filename = match field(f.image, "filename", &f.at)? {
        Some(n) if valid_filename(n) => n.to_owned(),
        Some(n) => {
            return Err(SwuError::desc(format!(
                "{}.filename {n:?} is not a plain member name",
                f.at
            )))
        }
        None => return Err(SwuError::desc(format!("{}.filename is missing", f.at))),
    };
    for attr in REFUSED_ATTRIBUTES {
        match f.image.get(attr) {
            None | Some(Value::Bool(false)) => {}
            Some(_) => {
                return Err(SwuError::Unsupported {
                    what: format!("{}.{attr} (the image must be a plain ZIP)", f.at),
                })
            }
        }
    }
    let sha256 = match field(f.image, "sha256", &f.at)? {
        Some(s) => sha256_hex(s, &f.at)?,
        None => return Err(SwuError::desc(format!("{}.sha256 is missing", f.at))),
    };
    let top = hardware_compatibility(software, "software")?;
    let hardware_compatibility = match f.board {
        Some(board) => {
            let at = format!("software.{board}");
            let section = software.get(board).unwrap_or(software);
            hardware_compatibility(section, &at)?.or(top)
        }
        None => top,
    }
    .unwrap_or_default();
    Ok(Description {
        version,
        board: f.board.map(str::to_owned),
        hardware_compatibility,
        filename,
        sha256,
    })
}

/// A libconfig string literal of `s`, escaped as libconfig reads it back.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `board` can stand as a setting name (libconfig's `[A-Za-z*][-A-Za-z0-9_*]*`),
/// and is none of the names `software` already uses.
pub fn valid_board(board: &str) -> bool {
    let b = board.as_bytes();
    b.first().is_some_and(|c| c.is_ascii_alphabetic())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
        && b.len() <= 128
        && !["version", "hardware-compatibility", "images", "description"].contains(&board)
        && !OTHER_ARTIFACTS.contains(&board)
}

/// The text of a `sw-description` for one image.
pub fn render(meta: &EnvelopeMeta, filename: &str, sha256_hex: &str) -> String {
    let hw = |indent: &str| {
        if meta.hardware_compatibility.is_empty() {
            return String::new();
        }
        let list: Vec<String> = meta
            .hardware_compatibility
            .iter()
            .map(|s| quote(s))
            .collect();
        format!(
            "{indent}hardware-compatibility = [ {} ];\n",
            list.join(", ")
        )
    };
    let image = |indent: &str| {
        format!(
            "{indent}images: (\n{indent}    {{\n{indent}        filename = {};\n{indent}        type = {};\n{indent}        sha256 = {};\n{indent}    }}\n{indent});\n",
            quote(filename),
            quote(IMAGE_TYPE),
            quote(sha256_hex)
        )
    };
    let mut out = String::from("software =\n{\n");
    out.push_str(&format!("    version = {};\n", quote(&meta.version)));
    match &meta.board {
        Some(board) => {
            out.push_str(&format!("    {board} = {{\n"));
            out.push_str(&hw("        "));
            out.push_str(&image("        "));
            out.push_str("    };\n");
        }
        None => {
            out.push_str(&hw("    "));
            out.push_str(&image("    "));
        }
    }
    out.push_str("};\n");
    out
}
