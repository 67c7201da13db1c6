//! Terminal output of the commands that follow an update (`install`, `demo`): whole lines
//! from every task, and one live progress line.
//!
//! The bar is drawn by hand: one line redrawn with `\r` is all these commands need, and a
//! progress bar crate (indicatif brings console, portable-atomic, unit-prefix and
//! unicode-width) would add more code to the printer's binary than this whole module.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;

use crate::apiclient::Progress;

/// Serialises output: whole lines from every task, plus one live progress line that is
/// redrawn in place on a terminal (and printed otherwise at each stage or 10 % step, or with
/// [`Console::per_stage`] once per stage).
pub struct Console {
    tty: bool,
    /// No output at all (unit tests).
    quiet: bool,
    /// Off a terminal, one line per stage (not per 10 % step).
    per_stage: bool,
    state: Mutex<ConsoleState>,
}

#[derive(Default)]
struct ConsoleState {
    /// The progress line currently on screen (terminal only), empty when none.
    bar: String,
    /// Last (stage, tenth) printed when not on a terminal.
    last: Option<(String, i64)>,
}

impl Default for Console {
    fn default() -> Console {
        Console::new()
    }
}

impl Console {
    /// A console that prints nothing (unit tests).
    #[cfg(test)]
    pub fn quiet() -> Console {
        Console {
            tty: false,
            quiet: true,
            per_stage: false,
            state: Mutex::new(ConsoleState::default()),
        }
    }

    pub fn new() -> Console {
        Console {
            tty: std::io::stdout().is_terminal(),
            quiet: false,
            per_stage: false,
            state: Mutex::new(ConsoleState::default()),
        }
    }

    /// The same, printing one line per stage when stdout is not a terminal (a log, a pipe).
    pub fn per_stage() -> Console {
        Console {
            per_stage: true,
            ..Console::new()
        }
    }

    /// Whether stdout is a terminal (the bar is redrawn in place).
    pub fn is_tty(&self) -> bool {
        self.tty
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        crate::sync::lock(&self.state)
    }

    /// Print a whole line above the progress line. Output errors are ignored.
    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let st = self.lock();
        let mut out = std::io::stdout().lock();
        if self.tty && !st.bar.is_empty() {
            let _ = write!(out, "\r{}\r", " ".repeat(st.bar.chars().count()));
        }
        let _ = writeln!(out, "{text}");
        if self.tty && !st.bar.is_empty() {
            let _ = write!(out, "{}", st.bar);
        }
        let _ = out.flush();
    }

    /// Redraw the progress line.
    pub fn bar(&self, p: &Progress) {
        if self.quiet {
            return;
        }
        let text = render_bar(p);
        let mut st = self.lock();
        let mut out = std::io::stdout().lock();
        if self.tty {
            let old = st.bar.chars().count();
            let new = text.chars().count();
            let _ = write!(out, "\r{text}{}", " ".repeat(old.saturating_sub(new)));
            st.bar = text;
        } else {
            let tenth = if self.per_stage { 0 } else { p.progress / 10 };
            let key = (p.stage.clone(), tenth);
            if st.last.as_ref() != Some(&key) {
                let _ = writeln!(out, "{text}");
                st.last = Some(key);
            }
        }
        let _ = out.flush();
    }

    /// Leave the progress line on screen and continue below it.
    pub fn end_bar(&self) {
        let mut st = self.lock();
        if self.tty && !st.bar.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            let _ = out.flush();
        }
        st.bar.clear();
        st.last = None;
    }
}

fn render_bar(p: &Progress) -> String {
    const WIDTH: usize = 30;
    let pct = p.progress.clamp(0, 100) as usize;
    let filled = pct * WIDTH / 100;
    let mut s = format!(
        "[{}{}] {pct:>3}% {:<11} {}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        p.stage,
        p.message
    );
    if let Some(e) = &p.error {
        let _ = write!(s, " ({e})");
    }
    // One terminal line: a wrapped line could not be redrawn with `\r`.
    if s.chars().count() > 110 {
        s = s.chars().take(107).collect::<String>() + "...";
    }
    s
}
