//! Process control's errors as values, with their facts as fields and their sources, and the
//! one place where they get their contract code (`From<ProcessError> for OtaError`).
//!
//! Each `Display` is the whole contract detail (the source's message included), so
//! `OtaError::from(e).detail == e.to_string()`; outside tests compare these texts, so they stay
//! as they are. The `"<CODE>: "` prefix is added by `OtaError` only.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::error::{ErrorCode, OtaError};

/// The tails of a command's output kept for messages (at most ~2 KB each, trimmed, shown
/// lossily); displays as `; stderr: <text>; stdout: <text>`, each part only when not empty.
/// (`Box<str>`: an error that is returned often stays small.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputTails {
    pub stderr: Box<str>,
    pub stdout: Box<str>,
}

impl OutputTails {
    pub(crate) fn new(stdout: &[u8], stderr: &[u8]) -> OutputTails {
        let text = |b: &[u8]| Box::from(String::from_utf8_lossy(b).trim());
        OutputTails {
            stderr: text(stderr),
            stdout: text(stdout),
        }
    }
}

impl fmt::Display for OutputTails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, text) in [("stderr", &*self.stderr), ("stdout", &*self.stdout)] {
            if !text.is_empty() {
                write!(f, "; {label}: {text}")?;
            }
        }
        Ok(())
    }
}

/// Why a command run to completion (a post or health command, `systemctl`, a `systemd-run`
/// launch) did not succeed. `what` names the command as messages show it.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    #[error("cannot start {what}: {source}")]
    Spawn { what: String, source: io::Error },
    /// It exited with a status other than 0, or was killed by a signal.
    #[error("{what} failed ({status}){output}")]
    Exited {
        what: String,
        status: ExitStatus,
        output: OutputTails,
    },
    /// Still running at its time limit: killed with every process it started.
    #[error(
        "{what} did not finish within {} s and was killed{output}",
        limit.as_secs_f32()
    )]
    TimedOut {
        what: String,
        limit: Duration,
        output: OutputTails,
    },
    /// The updater is shutting down (SIGTERM): stopped with every process it started.
    #[error("{what} was stopped: the updater is shutting down{output}")]
    Cancelled { what: String, output: OutputTails },
    #[error("waiting for {what} failed: {source}{output}")]
    Wait {
        what: String,
        source: io::Error,
        output: OutputTails,
    },
}

impl CommandFailure {
    /// The exit code when the command exited by itself (not by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CommandFailure::Exited { status, .. } => status.code(),
            _ => None,
        }
    }
}

/// Why finding, stopping, starting or running a process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `/proc` could not be read to find the processes (descriptors exhausted, say): never
    /// taken for "not running" (docs/API.md 8.2).
    #[error("cannot tell whether process {name} runs, so it cannot be stopped: {source}")]
    Unreadable { name: String, source: io::Error },
    /// After SIGKILL, `/proc` could not be read to confirm that the process is gone.
    #[error("process {name} (pid {pid}): cannot confirm that it is gone: {source}")]
    Unconfirmed {
        name: String,
        pid: i32,
        source: io::Error,
    },
    /// Still alive `after` the first SIGTERM, SIGKILL included.
    #[error("process {name} (pid {pid}) still alive after SIGKILL")]
    KillFailed {
        name: String,
        pid: i32,
        after: Duration,
    },
    /// `systemctl <action> <unit>` failed.
    #[error("systemctl {action} {unit}: {failure}")]
    Systemctl {
        action: String,
        unit: String,
        #[source]
        failure: CommandFailure,
    },
    #[error("cannot run an empty command")]
    EmptyCommand,
    /// A post or health command failed; `command` as messages show it (`` `a b` ``).
    #[error("command {command}: {failure}")]
    Command {
        command: String,
        #[source]
        failure: CommandFailure,
    },
    #[error("cannot start a process: empty command")]
    EmptyStart,
    /// A long-running start could not be spawned; `command` as messages show it.
    #[error("cannot start {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("cannot start {command}: {} is not an executable file", program.display())]
    NotExecutable { command: String, program: PathBuf },
    /// The `systemd-run` launch of a long-running start failed.
    #[error("cannot start {command}: {failure}")]
    Launch {
        command: String,
        #[source]
        failure: CommandFailure,
    },
}

impl ProcessError {
    /// The contract code (docs/API.md 3): a process or unit that could not be stopped is
    /// `PROCESS_KILL_FAILED` (nothing may be deployed over it), anything else
    /// `DEPLOYMENT_FAILED`.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProcessError::Unreadable { .. }
            | ProcessError::Unconfirmed { .. }
            | ProcessError::KillFailed { .. } => ErrorCode::ProcessKillFailed,
            ProcessError::Systemctl { action, .. } if action == "stop" => {
                ErrorCode::ProcessKillFailed
            }
            ProcessError::Systemctl { .. }
            | ProcessError::EmptyCommand
            | ProcessError::Command { .. }
            | ProcessError::EmptyStart
            | ProcessError::Spawn { .. }
            | ProcessError::NotExecutable { .. }
            | ProcessError::Launch { .. } => ErrorCode::DeploymentFailed,
        }
    }
}

impl From<ProcessError> for OtaError {
    fn from(e: ProcessError) -> OtaError {
        OtaError::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn output() -> OutputTails {
        OutputTails::new(b"to-out\n", b"  to-err\n")
    }

    /// docs/API.md 3: every process error reaches the contract with its code, and its detail is
    /// exactly the text the updater has always reported (outside tests compare it).
    #[test]
    fn contract_3_process_errors_keep_their_codes_and_details() {
        let cases: Vec<(ProcessError, ErrorCode, &str)> = vec![
            (
                ProcessError::KillFailed {
                    name: "printerd".into(),
                    pid: 42,
                    after: Duration::from_secs(15),
                },
                ErrorCode::ProcessKillFailed,
                "process printerd (pid 42) still alive after SIGKILL",
            ),
            (
                // EACCES: its text is the same in glibc and musl (the ARM build), EMFILE's is not.
                ProcessError::Unreadable {
                    name: "printerd".into(),
                    source: io::Error::from_raw_os_error(13),
                },
                ErrorCode::ProcessKillFailed,
                "cannot tell whether process printerd runs, so it cannot be stopped: Permission \
                 denied (os error 13)",
            ),
            (
                ProcessError::Unconfirmed {
                    name: "printerd".into(),
                    pid: 42,
                    source: io::Error::from_raw_os_error(13),
                },
                ErrorCode::ProcessKillFailed,
                "process printerd (pid 42): cannot confirm that it is gone: Permission denied \
                 (os error 13)",
            ),
            (
                ProcessError::Systemctl {
                    action: "stop".into(),
                    unit: "a.service".into(),
                    failure: CommandFailure::Exited {
                        what: "systemctl".into(),
                        status: ExitStatus::from_raw(1 << 8),
                        output: output(),
                    },
                },
                ErrorCode::ProcessKillFailed,
                "systemctl stop a.service: systemctl failed (exit status: 1); stderr: to-err; \
                 stdout: to-out",
            ),
            (
                ProcessError::Systemctl {
                    action: "start".into(),
                    unit: "a.service".into(),
                    failure: CommandFailure::Cancelled {
                        what: "systemctl".into(),
                        output: OutputTails::default(),
                    },
                },
                ErrorCode::DeploymentFailed,
                "systemctl start a.service: systemctl was stopped: the updater is shutting down",
            ),
            (
                ProcessError::Command {
                    command: "`sleep 9`".into(),
                    failure: CommandFailure::TimedOut {
                        what: "`sleep 9`".into(),
                        limit: Duration::from_millis(1500),
                        output: OutputTails::new(b"", b"late"),
                    },
                },
                ErrorCode::DeploymentFailed,
                "command `sleep 9`: `sleep 9` did not finish within 1.5 s and was killed; \
                 stderr: late",
            ),
            (
                ProcessError::Command {
                    command: "`x`".into(),
                    failure: CommandFailure::Exited {
                        what: "`x`".into(),
                        status: ExitStatus::from_raw(9),
                        output: OutputTails::default(),
                    },
                },
                ErrorCode::DeploymentFailed,
                "command `x`: `x` failed (signal: 9 (SIGKILL))",
            ),
            (
                ProcessError::EmptyCommand,
                ErrorCode::DeploymentFailed,
                "cannot run an empty command",
            ),
            (
                ProcessError::EmptyStart,
                ErrorCode::DeploymentFailed,
                "cannot start a process: empty command",
            ),
            (
                ProcessError::Spawn {
                    command: "`/x/y 1`".into(),
                    source: io::Error::from_raw_os_error(2),
                },
                ErrorCode::DeploymentFailed,
                "cannot start `/x/y 1`: No such file or directory (os error 2)",
            ),
            (
                ProcessError::NotExecutable {
                    command: "`/x/y`".into(),
                    program: "/x/y".into(),
                },
                ErrorCode::DeploymentFailed,
                "cannot start `/x/y`: /x/y is not an executable file",
            ),
            (
                ProcessError::Launch {
                    command: "`/x/y`".into(),
                    failure: CommandFailure::Spawn {
                        what: "systemd-run of `/x/y`".into(),
                        source: io::Error::from_raw_os_error(2),
                    },
                },
                ErrorCode::DeploymentFailed,
                "cannot start `/x/y`: cannot start systemd-run of `/x/y`: No such file or \
                 directory (os error 2)",
            ),
        ];
        for (e, code, detail) in cases {
            assert_eq!(e.code(), code, "{e}");
            let o = OtaError::from(e);
            assert_eq!((o.code, o.detail.as_str()), (code, detail));
        }
    }

    /// The cause stays reachable as a value: the failure of a command (its exit code), the
    /// errno of a `/proc` read.
    #[test]
    fn sources_and_facts_are_kept() {
        let e = ProcessError::Systemctl {
            action: "stop".into(),
            unit: "a.service".into(),
            failure: CommandFailure::Exited {
                what: "systemctl".into(),
                status: ExitStatus::from_raw(5 << 8),
                output: OutputTails::default(),
            },
        };
        let failure = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<CommandFailure>())
            .map(CommandFailure::exit_code);
        assert_eq!(failure, Some(Some(5)));
        let e = ProcessError::Unreadable {
            name: "p".into(),
            source: io::Error::from_raw_os_error(24),
        };
        let errno = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error);
        assert_eq!(errno, Some(24));
    }
}
