//! Which process is a module's process (docs/API.md 9.6): by `comm`, the file name of its
//! `argv[0]` or of its executable, or the script an interpreter runs.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Longest process name the kernel keeps in `/proc/<pid>/comm` (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

/// Interpreters whose first operand is the program they run (`/bin/sh /opt/x/printerd`,
/// `python3 -u app.py`): such a process is named after its script (docs/API.md 9.6).
pub(crate) fn is_interpreter(base: &[u8]) -> bool {
    // `python3.11`, `lua5.4`: the version after the name does not matter.
    let stem = match base.iter().position(|b| b.is_ascii_digit()) {
        Some(i) => &base[..i],
        None => base,
    };
    let stem = stem.strip_suffix(b".").unwrap_or(stem);
    matches!(
        stem,
        b"sh"
            | b"bash"
            | b"dash"
            | b"ash"
            | b"ksh"
            | b"mksh"
            | b"zsh"
            | b"busybox"
            | b"python"
            | b"perl"
            | b"ruby"
            | b"node"
            | b"lua"
            | b"luajit"
            | b"php"
            | b"tclsh"
    )
}

/// The last path component of a path given as bytes.
pub(crate) fn base_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&c| c == b'/').next().unwrap_or(path)
}

/// Whether `name` is the process's name (docs/API.md 9.6):
/// - a name of 15 bytes or more (the kernel keeps 15 in `comm`) only when the file name of its
///   `argv[0]`, or of its executable (`exe`, read only when needed), is the whole name: a
///   process sharing the first 15 bytes is someone else;
/// - a shorter name also when it is the `comm`;
/// - a script run by an interpreter (`sh`, `python3`...) when the script's file name is the
///   name, as when the kernel ran it through its `#!` line.
pub(crate) fn name_matches(
    comm: &[u8],
    argv: &[&[u8]],
    exe: &mut dyn FnMut() -> Option<PathBuf>,
    name: &str,
) -> bool {
    let b = name.as_bytes();
    if b.is_empty() {
        return false;
    }
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    if b.len() < COMM_LEN && comm == b {
        return true;
    }
    let argv0 = argv.first().copied().unwrap_or_default();
    if base_name(argv0) == b {
        return true;
    }
    // The executable is looked at only when it may decide: when `comm` (the file name the
    // kernel ran) is the name's first bytes, or an interpreter's name.
    let comm_prefix = comm == &b[..b.len().min(COMM_LEN)];
    if !comm_prefix && !is_interpreter(comm) && !is_interpreter(base_name(argv0)) {
        return false;
    }
    let exe = if comm_prefix || is_interpreter(comm) {
        exe()
    } else {
        None
    };
    let exe_base = exe
        .as_deref()
        .map(|p| base_name(deleted_suffix_stripped(p.as_os_str().as_bytes())));
    if exe_base == Some(b) {
        return true;
    }
    let interpreted = is_interpreter(base_name(argv0)) || exe_base.is_some_and(is_interpreter);
    interpreted
        && interpreter_operand(argv.get(1..).unwrap_or_default()).is_some_and(|s| base_name(s) == b)
}

/// `/proc/<pid>/exe` of a file that was replaced or removed ends in ` (deleted)`.
fn deleted_suffix_stripped(path: &[u8]) -> &[u8] {
    path.strip_suffix(b" (deleted)").unwrap_or(path)
}

/// The first operand of an interpreter's arguments: the script it runs; `None` when it runs a
/// command string (`-c`) or a module (`-m`), or has none.
fn interpreter_operand<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    operand_index(args).map(|i| args[i])
}

/// The index in `args` of [`interpreter_operand`].
pub(crate) fn operand_index(args: &[&[u8]]) -> Option<usize> {
    for (i, a) in args.iter().enumerate() {
        match *a {
            b"--" => continue,
            b"-c" | b"-m" => return None,
            a if a.starts_with(b"-") => continue,
            _ => return Some(i),
        }
    }
    None
}

/// When a process ran a script through its `#!` line (its `comm` is the script's file name,
/// its `argv[0]` the interpreter the kernel put there): the index in `argv` of the script, so
/// that executing it again (with the arguments after it) gives the same argv and `comm`.
pub(crate) fn shebang_script(argv: &[&[u8]], comm: &[u8]) -> Option<usize> {
    let argv0 = argv.first()?;
    if comm.is_empty() || !is_interpreter(base_name(argv0)) {
        return None;
    }
    let i = 1 + operand_index(argv.get(1..)?)?;
    let base = base_name(argv[i]);
    let kept = &base[..base.len().min(COMM_LEN)];
    let interp = base_name(argv0);
    (kept == comm && &interp[..interp.len().min(COMM_LEN)] != comm).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name_matches` with `argv` given as text and an executable path.
    fn matches(comm: &str, argv: &[&str], exe: Option<&str>, name: &str) -> bool {
        let args: Vec<&[u8]> = argv.iter().map(|a| a.as_bytes()).collect();
        name_matches(comm.as_bytes(), &args, &mut || exe.map(PathBuf::from), name)
    }

    #[test]
    fn names_match_by_comm_or_argv0() {
        assert!(matches("device-api\n", &[], None, "device-api"));
        assert!(matches("python3\n", &["/opt/tope/gui"], None, "gui"));
        assert!(!matches("python3\n", &["/opt/tope/gui"], None, "tope"));
        assert!(!matches("x\n", &[], None, ""));
    }

    #[test]
    fn docs_api_9_6_a_long_name_matches_only_whole() {
        // 15 bytes or more: the truncated comm is never enough.
        let long = "printer-firmware-agent";
        assert!(matches(
            "printer-firmwar\n",
            &["/x/printer-firmware-agent"],
            None,
            long
        ));
        assert!(matches(
            "printer-firmwar\n",
            &["agent-renamed-argv0"],
            Some("/opt/x/printer-firmware-agent (deleted)"),
            long
        ));
        assert!(!matches(
            "printer-firmwar\n",
            &["/x/printer-firmware-monitor"],
            Some("/x/printer-firmware-monitor"),
            long
        ));
        // Exactly 15 bytes: comm could be a longer name cut, so argv[0] or exe decide.
        assert!(!matches(
            "printer-firmwar\n",
            &["/x/printer-firmware-monitor"],
            None,
            "printer-firmwar"
        ));
        assert!(matches(
            "printer-firmwar\n",
            &["printer-firmwar"],
            None,
            "printer-firmwar"
        ));
    }

    #[test]
    fn docs_api_9_6_a_script_run_through_its_shebang_line_is_told_apart() {
        let argv: [&[u8]; 3] = [b"/bin/sh", b"/opt/x/printerd", b"-v"];
        assert_eq!(shebang_script(&argv, b"printerd"), Some(1));
        let argv: [&[u8]; 3] = [b"/bin/sh", b"-e", b"/opt/x/printerd"];
        assert_eq!(shebang_script(&argv, b"printerd"), Some(2));
        // Run as `sh /opt/x/printerd`: comm is the interpreter's, so it restarts so.
        let argv: [&[u8]; 2] = [b"/bin/sh", b"/opt/x/printerd"];
        assert_eq!(shebang_script(&argv, b"sh"), None);
        assert_eq!(shebang_script(&argv, b""), None);
        let argv: [&[u8]; 2] = [b"/opt/x/printerd", b"x"];
        assert_eq!(shebang_script(&argv, b"printerd"), None);
        // A long script name: comm keeps 15 bytes.
        let argv: [&[u8]; 2] = [b"/usr/bin/python3", b"/o/printer-firmware-agent"];
        assert_eq!(shebang_script(&argv, b"printer-firmwar"), Some(1));
    }

    #[test]
    fn docs_api_9_6_a_script_run_by_an_interpreter_is_named_after_the_script() {
        assert!(matches(
            "sh\n",
            &["/bin/sh", "/opt/x/printerd"],
            None,
            "printerd"
        ));
        assert!(matches(
            "python3\n",
            &["python3", "-u", "app.py", "--x"],
            None,
            "app.py"
        ));
        assert!(matches(
            "python3.11\n",
            &["/usr/bin/python3.11", "/o/app.py"],
            None,
            "app.py"
        ));
        assert!(matches(
            "sh\n",
            &["weird-argv0", "/opt/x/printerd"],
            Some("/bin/dash"),
            "printerd"
        ));
        // A command string or a module is no script; an editor is no interpreter.
        assert!(!matches(
            "sh\n",
            &["sh", "-c", "printerd"],
            None,
            "printerd"
        ));
        assert!(!matches(
            "python3\n",
            &["python3", "-m", "printerd"],
            None,
            "printerd"
        ));
        assert!(!matches(
            "vi\n",
            &["vi", "/opt/x/printerd"],
            Some("/usr/bin/vi"),
            "printerd"
        ));
        assert!(!matches("sh\n", &["/bin/sh"], None, "printerd"));
    }
}
