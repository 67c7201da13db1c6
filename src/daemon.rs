//! `tope-updater serve`: wire configuration, logging, recovery, the API and signals together.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Config;
use crate::report::Reporter;
use crate::shutdown::Shutdown;
use crate::updater::Updater;

/// Create `dir` (and parents) with mode 0755 if missing.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    crate::fsutil::create_dirs_durable(dir).map(|_| ())
}

/// Run the daemon until SIGTERM/SIGINT. Exit codes: 0 after a clean shutdown, 2 for a
/// configuration error, 1 for anything else that stops it from starting (port taken...).
pub fn serve(config_path: Option<&Path>) -> ExitCode {
    // docs/API.md 9.4: a socket and a pipe handed over by the binary before; read first,
    // before any thread exists (the variables are removed from the environment).
    let inherited = crate::handover::take_inherited();
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::print_error(&e);
            return ExitCode::from(2);
        }
    };
    let work = cfg.work();
    for d in work.dirs() {
        if let Err(e) = ensure_dir(&d) {
            crate::logging::print_error(format_args!("cannot create {}: {e}", d.display()));
            return ExitCode::from(1);
        }
    }
    if let Err(e) = crate::logging::init(cfg.log_level, &work.logs()) {
        crate::logging::print_error(format_args!(
            "cannot set up logging in {}: {e}",
            work.logs().display()
        ));
        return ExitCode::from(1);
    }
    let tls = match crate::net::tls_config(cfg.ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            crate::logging::print_error(format_args!("config key `ca_file`: {e}"));
            tracing::error!("config key `ca_file`: {e}");
            return ExitCode::from(2);
        }
    };
    // Bind before anything else happens: a taken port is an error, never another port. A
    // socket handed over by the binary before (docs/API.md 9.4) is that port already bound.
    let bound = match inherited.listener {
        Some(fd) => crate::handover::listener_from(fd, cfg.listen),
        None => crate::server::bind(cfg.listen),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            crate::logging::print_error(format_args!("cannot listen on {}: {e}", cfg.listen));
            tracing::error!("cannot listen on {}: {e}", cfg.listen);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        crate::logging::print_error(&e);
        return ExitCode::from(1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::logging::print_error(format_args!("cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    let callback_client = match crate::net::callback_client(&tls) {
        Ok(c) => c,
        Err(e) => {
            crate::logging::print_error(&e);
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        "tope-updater {} starting: listen {}, work_dir {}",
        env!("CARGO_PKG_VERSION"),
        cfg.listen,
        cfg.work_dir.display()
    );
    let cap = cfg.max_download_bytes_per_s;
    let floor = crate::download::min_steady_rate();
    if cap > 0 && cap < floor {
        tracing::warn!(
            "max_download_bytes_per_s = {cap} is below {floor}: at that rate every download \
             attempt receives less than the stall rule asks for and is abandoned; downloads will \
             end in DOWNLOAD_FAILED"
        );
    }
    let limits = raise_fd_limit(cfg.server);
    let shutdown = Shutdown::new();
    let reporter = Arc::new(Reporter::new());
    let device_api = cfg.device_api_url.clone();
    let cfg_listen = cfg.listen;
    // Fleet mode (docs/API.md 9.1): the client hears every report like device-api does.
    let fleet_sink = Arc::new(crate::fleet::client::FleetSink::default());
    let others: Vec<Arc<dyn crate::report::Sink>> = if cfg.fleet.is_some() {
        vec![fleet_sink.clone()]
    } else {
        Vec::new()
    };
    let fleet_cfg = cfg.clone();
    let fleet_tls = tls.clone();
    let updater = Updater::with_sinks(cfg, tls, reporter.clone(), others, shutdown.clone());
    let fleet = match crate::fleet::client::FleetClient::new(
        &fleet_cfg,
        &fleet_tls,
        updater.clone(),
        fleet_sink,
        shutdown.clone(),
    ) {
        Ok(f) => f,
        Err(e) => {
            crate::logging::print_error(format_args!("fleet client: {e}"));
            return ExitCode::from(1);
        }
    };

    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let listen_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let mut listener = Some(listener);
        crate::handover::set_listener(listen_fd);
        let router = crate::api::router(updater.clone());
        let pipe = match inherited.pipe.map(crate::handover::pipe_from).transpose() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("the hand-over pipe of a self-update: {e}");
                None
            }
        };
        // docs/API.md 9.4: started by the old binary of a self-update, this one serves the
        // API at once (stage `rebooting`) and waits for the old one's word before recovery.
        let mut server = None;
        if let Some(pipe) = pipe {
            updater.show_handover();
            tracing::info!("self-update: serving the API while the old updater watches");
            server = listener.take().map(|l| {
                tokio::spawn(crate::server::serve(
                    l,
                    router.clone(),
                    limits,
                    shutdown.clone(),
                ))
            });
            let committed =
                tokio::task::spawn_blocking(move || crate::handover::wait_for_commit(pipe))
                    .await
                    .map_err(std::io::Error::other)?;
            if !committed {
                tracing::warn!(
                    "self-update: the old updater is gone without committing; recovering"
                );
            }
        }
        // Recovery first: the API reports nothing about an interrupted installation before
        // it is finished or rolled back. Requests wait in the listen backlog meanwhile.
        let u = updater.clone();
        tokio::task::spawn_blocking(move || u.recover())
            .await
            .map_err(std::io::Error::other)?;
        // A rollback or a power cut may have put the other binary at this one's path: the
        // binary that serves is the one at the path (same pid, same socket).
        // Release 0.1.0 shows and reports the outcome from `state.json` (written by the
        // recovery) and knows no `tmp/outcome.json`: left behind, that file would be shown,
        // and reported again, by this release after 0.1.0 has installed it successfully.
        let outcome = work.outcome();
        crate::handover::reexec_if_replaced(listen_fd, inherited.reexecuted, || {
            if let Err(e) = outcome.remove() {
                tracing::warn!(
                    "cannot remove {} before executing release 0.1.0: {e}",
                    outcome.path().display()
                );
            }
        });
        tokio::spawn(reporter.run(callback_client, device_api));
        if let Some(f) = fleet {
            tokio::spawn(f.run());
        }
        let sig = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: finishing the current step");
            sig.trigger();
        });
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        crate::systemd::start_health_reporter(cfg_listen, shutdown.clone());
        tracing::info!("API ready on http://{cfg_listen}/api/v1.0");
        let server = match (server, listener) {
            (Some(task), _) => task,
            (None, Some(l)) => {
                tokio::spawn(crate::server::serve(l, router, limits, shutdown.clone()))
            }
            (None, None) => return Err(std::io::Error::other("the API has no listening socket")),
        };
        server.await.map_err(std::io::Error::other)?;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let u = updater.clone();
        tokio::task::spawn_blocking(move || u.join_job())
            .await
            .map_err(std::io::Error::other)?;
        Ok::<(), std::io::Error>(())
    });
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("daemon failed: {e}");
            crate::logging::print_error(&e);
            ExitCode::from(1)
        }
    }
}

/// Raise the descriptor soft limit to the hard one, log both, and derive the API's limits
/// (with the configured timeouts, `[server]`).
fn raise_fd_limit(timeouts: crate::server::ServerTimeouts) -> crate::server::Limits {
    let (fd, err) = crate::server::raise_fd_limit();
    if let Some(e) = err {
        tracing::warn!(
            "cannot raise the file descriptor soft limit {} to the hard limit {}: {e}",
            fd.soft_before,
            fd.hard
        );
    }
    if fd.soft != fd.soft_before {
        // Programs the updater starts get the limit it was started with.
        crate::process::set_children_fd_limit(fd.soft_before);
    }
    let limits = crate::server::Limits::for_fd_limit(fd.soft, timeouts);
    tracing::info!(
        "file descriptors: soft limit {} (was {}), hard limit {}; at most {} API connections; \
         request head within {} ms, idle connections closed after {} ms, requests within {} ms",
        fd.soft,
        fd.soft_before,
        fd.hard,
        limits.max_connections,
        limits.head.as_millis(),
        limits.idle.as_millis(),
        limits.request.as_millis()
    );
    limits
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            tracing::error!(
                "cannot install signal handlers; SIGTERM will kill the daemon outright"
            );
            std::future::pending::<()>().await;
        }
    }
}
