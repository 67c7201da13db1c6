//! Writes the man pages of `tope-updater`, generated from its command line definition:
//! `tope-updater.1` (with FILES, ENVIRONMENT, EXIT STATUS and SEE ALSO) and one page per
//! subcommand (`tope-updater-serve.1`, ...).
//!
//! Usage: `cargo run --example man -- OUT_DIR` (the Debian package ships them).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use clap_mangen::Man;

fn section(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for (i, p) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*p)]);
    }
}

fn tagged(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", []);
        roff.text([bold(*tag)]);
        roff.text([roman(*text)]);
    }
}

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/man".into()),
    );
    for page in write_pages(&out)? {
        println!("{}", page.display());
    }
    Ok(())
}

/// Writes every page into `out` (created if missing); returns their paths, the main page first.
pub fn write_pages(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    let version = tope_updater::cli::VERSION_TEXT;
    // `demo` is a tool for developers, not part of the printer build: no page for it.
    let mut cmd = tope_updater::cli::Cli::command()
        .version(version)
        .disable_help_subcommand(true)
        .mut_subcommands(|sub| {
            let demo = sub.get_name() == "demo";
            sub.hide(demo)
        });
    cmd.build();

    let man = Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    let mut roff = Roff::default();
    section(
        &mut roff,
        "DESCRIPTION",
        &[
            "tope-updater is the over-the-air updater of the printer. It runs as root under \
             systemd, answers an HTTP API on 127.0.0.1:12315 (/api/v1.0/download, /update, \
             /progress), downloads an update package with resume, checks it, and installs it \
             module by module with a journal, so that after a power cut every file is either \
             all old or all new. Progress is reported to device-api. A package on a USB stick \
             or SD card is installed with tope-updater install FILE (or /download with a \
             file:/// URL).",
            "The interface is described in /usr/share/doc/tope-updater/API.md.",
        ],
    );
    roff.to_writer(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut roff = Roff::default();
    tagged(
        &mut roff,
        "FILES",
        &[
            (
                "/etc/tope-updater/config.toml",
                "The configuration (every key optional). Check it with tope-updater check-config.",
            ),
            (
                "/var/lib/tope-updater",
                "The working directory: tmp/ (downloads, state.json), logs/updater.log \
                 (rotated at 10 MiB, 3 kept), backups/ (the installation journal).",
            ),
            (
                "/usr/lib/systemd/system/tope-updater.service",
                "The systemd unit (Type=notify, WatchdogSec=30).",
            ),
        ],
    );
    tagged(
        &mut roff,
        "ENVIRONMENT",
        &[
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC",
                "Set by systemd: READY=1, STATUS= lines and a watchdog fed only while the \
                 API answers.",
            ),
            (
                "JOURNAL_STREAM",
                "Set by systemd when stderr is the journal: stderr lines then carry their \
                 syslog priority.",
            ),
        ],
    );
    tagged(
        &mut roff,
        "EXIT STATUS",
        &[
            ("0", "Success; the daemon stopped cleanly after SIGTERM."),
            (
                "1",
                "Failure: the port is taken, a directory cannot be created, ...",
            ),
            (
                "2",
                "A configuration error (the message names the key); for install, no daemon \
                 answers on the configured listen address.",
            ),
            (
                "130",
                "install was interrupted (Ctrl-C): it stopped following, the update goes on.",
            ),
        ],
    );
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        italic("/usr/share/doc/tope-updater/README.md"),
    ]);
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    let main_path = out.join(man.get_filename());
    std::fs::File::create(&main_path)?.write_all(&page)?;
    written.push(main_path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.push(Man::new(sub.clone()).generate_to(out)?);
    }
    Ok(written)
}
