//! The download's disk side, off the receive path: the write thread (hash and write each
//! chunk while the next one is received), the checkpoint thread (`fdatasync`, then the byte
//! count persisted through the sink), opening and re-hashing a partial file, and hashing a
//! whole file for verification.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use super::{DownloadError, DownloadParams, DownloadSink};
use crate::checksum::{Algorithm, Checksum, Hasher};
use crate::lifecycle::Validator;
use crate::shutdown::Shutdown;

/// Read size when hashing an existing file.
const HASH_BUF: usize = 64 * 1024;

/// Buffers waiting for the write thread: double buffering is enough for the overlap, and a
/// buffer holds 256 KiB (or a chunk of the HTTP stack of up to a few hundred KiB, passed on
/// as it is), so a longer queue only costs memory (8 chunks measured +2 MiB of peak RSS, no
/// speed). When it is full, reading waits.
pub(super) const WRITE_QUEUE: usize = 2;

/// The receive side gathers the HTTP stack's chunks (one TLS record, 16 KiB, each on a capped
/// or slow link) into buffers of this size before handing them over: one wake-up of the write
/// thread, one `write` and one hash update per 256 KiB instead of per record.
pub(super) const GATHER: usize = 256 * 1024;

/// Gather buffers in circulation: one being filled, [`WRITE_QUEUE`] queued, one being written.
/// They are reused, so memory stays at `POOL * GATHER` (1 MiB) whatever the package size.
const POOL: usize = WRITE_QUEUE + 2;

/// Feed the first `len` bytes of a file to `hasher`, calling `on_progress` with the count
/// hashed. `None` when interrupted by shutdown.
pub fn hash_prefix(
    file: &mut File,
    len: u64,
    mut hasher: Hasher,
    shutdown: Option<&Shutdown>,
    on_progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<Hasher>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; HASH_BUF];
    let mut done = 0u64;
    let mut last_tick = 0u64;
    while done < len {
        if shutdown.is_some_and(Shutdown::is_set) {
            return Ok(None);
        }
        let want = ((len - done) as usize).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file ends at {done} of {len} bytes"),
            ));
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if done - last_tick >= 4 << 20 || done == len {
            on_progress(done);
            last_tick = done;
        }
    }
    Ok(Some(hasher))
}

/// The checksum of a whole file; `None` when interrupted by shutdown.
pub fn hash_file(
    path: &Path,
    algorithm: Algorithm,
    shutdown: Option<&Shutdown>,
    on_progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<Checksum>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let hashed = hash_prefix(&mut f, len, Hasher::new(algorithm), shutdown, on_progress)?;
    Ok(hashed.map(Hasher::finalize))
}

pub(super) fn write_err(path: &Path, source: std::io::Error) -> DownloadError {
    DownloadError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Open the download file and keep only the prefix the state file vouches for, fed to the
/// hasher. Returns the file, the hasher and the bytes kept; `None` when SIGTERM came while
/// hashing the prefix.
pub(super) fn prepare_file(
    p: &DownloadParams<'_>,
    hasher: Hasher,
) -> Result<Option<(File, Hasher, u64)>, DownloadError> {
    let size = p.spec.package_size;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p.path)
        .map_err(|e| write_err(p.path, e))?;
    let on_disk = file.metadata().map_err(|e| write_err(p.path, e))?.len();
    // Keep only what the state file vouches for. Without a validator (a state file of the
    // Python updater keeps none) the prefix is kept all the same: the range request then goes
    // without If-Range, and the caller checks the whole file against the announced digest and
    // downloads it whole when it differs (`DownloadOutcome::Complete::unvalidated_prefix`).
    let keep = p.resume_from.min(on_disk).min(size);
    if keep > 0 && keep < size && p.validator.if_range().is_none() {
        tracing::warn!(
            "no ETag/Last-Modified known for the partial file: resuming at byte {keep} without \
             If-Range; the whole file is checked against its MD5 and downloaded again if it differs"
        );
    }
    file.set_len(keep).map_err(|e| write_err(p.path, e))?;
    let hasher = if keep > 0 {
        tracing::info!(
            "resuming {} from byte {keep} of {size}",
            p.spec.package_name
        );
        let hashed = hash_prefix(&mut file, keep, hasher, Some(p.shutdown), &mut |_| {}).map_err(
            |source| DownloadError::Read {
                path: p.path.to_path_buf(),
                source,
            },
        )?;
        match hashed {
            Some(h) => h,
            None => return Ok(None),
        }
    } else {
        hasher
    };
    file.seek(SeekFrom::Start(keep))
        .map_err(|e| write_err(p.path, e))?;
    Ok(Some((file, hasher, keep)))
}

/// What the stream hands to the write thread, in order.
pub(super) enum WriteMsg {
    Data(axum::body::Bytes),
    /// Gathered bytes in a buffer of the pool ([`Writer::take_buffer`]), given back once
    /// written.
    Gathered(Vec<u8>),
    /// Truncate to 0 and start a new hash (the server sent the whole file).
    Reset,
    /// Ask for a background checkpoint of everything written so far.
    Checkpoint(Validator),
    /// Answer once everything before it is written (with the first write error, if any).
    Barrier(std::sync::mpsc::SyncSender<std::io::Result<()>>),
}

/// The stream's end of the write thread.
pub(super) struct Writer<'a> {
    tx: std::sync::mpsc::SyncSender<WriteMsg>,
    failed: &'a AtomicBool,
    /// Gather buffers the write thread is done with.
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Gather buffers allocated so far (at most [`POOL`]).
    allocated: Cell<usize>,
}

/// The write thread's ends of the channels: what to write, and where written buffers go back.
pub(super) struct WriteQueue {
    rx: std::sync::mpsc::Receiver<WriteMsg>,
    give_back: std::sync::mpsc::SyncSender<Vec<u8>>,
}

/// The channels between the stream and the write thread.
pub(super) fn write_channels(failed: &AtomicBool) -> (Writer<'_>, WriteQueue) {
    let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
    // Room for every buffer of the pool: giving one back never blocks the write thread.
    let (give_back, returned) = std::sync::mpsc::sync_channel(POOL);
    (
        Writer {
            tx,
            failed,
            returned,
            allocated: Cell::new(0),
        },
        WriteQueue { rx, give_back },
    )
}

impl Writer<'_> {
    /// An empty buffer with room for [`GATHER`] bytes: one the write thread gave back, a new one
    /// while the pool is not complete, else the next one given back (the write thread is
    /// writing it: the stream waits, as it does for a full queue).
    pub(super) fn take_buffer(&self) -> std::io::Result<Vec<u8>> {
        if let Ok(b) = self.returned.try_recv() {
            return Ok(b);
        }
        if self.allocated.get() < POOL {
            self.allocated.set(self.allocated.get() + 1);
            return Ok(Vec::with_capacity(GATHER));
        }
        self.returned
            .recv()
            .map_err(|_| std::io::Error::other("the write thread has stopped"))
    }

    pub(super) fn send(&self, m: WriteMsg) -> std::io::Result<()> {
        self.tx
            .send(m)
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?;
        if self.failed.load(Ordering::Acquire) {
            self.barrier()?;
        }
        Ok(())
    }

    /// Wait until every chunk sent so far is written; the first write error, if any.
    pub(super) fn barrier(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(WriteMsg::Barrier(tx))
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the write thread has stopped"))?
    }
}

/// The write thread: the hash and the file, so hashing one chunk overlaps receiving the next.
/// After a write error it keeps draining the queue and reports the error at every barrier.
pub(super) fn write_loop(
    mut file: File,
    mut hasher: Hasher,
    mut written: u64,
    queue: WriteQueue,
    ck: &Checkpointer<'_>,
    failed: &AtomicBool,
) -> (Hasher, Option<std::io::Error>) {
    let WriteQueue { rx, give_back } = queue;
    let mut error: Option<std::io::Error> = None;
    let fail = |error: &mut Option<std::io::Error>, e: std::io::Error| {
        failed.store(true, Ordering::Release);
        error.get_or_insert(e);
    };
    while let Ok(m) = rx.recv() {
        match m {
            WriteMsg::Data(_) if error.is_some() => {}
            WriteMsg::Data(chunk) => match file.write_all(&chunk) {
                Ok(()) => {
                    hasher.update(&chunk);
                    written += chunk.len() as u64;
                }
                Err(e) => fail(&mut error, e),
            },
            WriteMsg::Gathered(mut buf) => {
                if error.is_none() {
                    // The hash right after the write: the bytes are still in this core's cache.
                    match file.write_all(&buf) {
                        Ok(()) => {
                            hasher.update(&buf);
                            written += buf.len() as u64;
                        }
                        Err(e) => fail(&mut error, e),
                    }
                }
                buf.clear();
                // The pool has room for every buffer; the stream may have ended already.
                let _ = give_back.try_send(buf);
            }
            WriteMsg::Reset => {
                // No checkpoint of the old bytes may land after the truncation.
                let r = ck
                    .wait_idle()
                    .and_then(|()| file.set_len(0))
                    .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()));
                match r {
                    Ok(()) => {
                        hasher = Hasher::new(hasher.algorithm());
                        written = 0;
                    }
                    Err(e) => fail(&mut error, e),
                }
            }
            WriteMsg::Checkpoint(v) => {
                if error.is_none() {
                    if let Err(e) = ck.request(written, &v) {
                        fail(&mut error, e);
                    }
                }
            }
            WriteMsg::Barrier(reply) => {
                let answer = match &error {
                    // A copy that keeps the OS error number (ENOSPC means DISK_FULL).
                    Some(e) => Err(match e.raw_os_error() {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::new(e.kind(), e.to_string()),
                    }),
                    None => Ok(()),
                };
                let _ = reply.send(answer);
            }
        }
    }
    (hasher, error)
}

/// Durable checkpoints off the download's hot path. `fdatasync` of the file and the state
/// write (through the sink) run on a helper thread while the stream goes on; a newer request
/// replaces one not yet started. A checkpoint only ever claims bytes written before its
/// `fdatasync` began, so the state file never vouches for unwritten data. `sync_now` is the
/// synchronous form (end of download, before a retry, on SIGTERM): it first waits for the
/// helper, so checkpoints reach the state file in order.
pub(super) struct Checkpointer<'a> {
    file: File,
    sink: &'a dyn DownloadSink,
    state: Mutex<CkState>,
    cv: Condvar,
}

#[derive(Default)]
struct CkState {
    pending: Option<(u64, Validator)>,
    busy: bool,
    stop: bool,
    error: Option<std::io::Error>,
}

impl<'a> Checkpointer<'a> {
    pub(super) fn new(file: File, sink: &'a dyn DownloadSink) -> Checkpointer<'a> {
        Checkpointer {
            file,
            sink,
            state: Mutex::new(CkState::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CkState> {
        crate::sync::lock(&self.state)
    }

    /// Ask for a checkpoint of `bytes` (all written already); returns at once.
    fn request(&self, bytes: u64, validator: &Validator) -> std::io::Result<()> {
        let mut st = self.lock();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        st.pending = Some((bytes, validator.clone()));
        self.cv.notify_all();
        Ok(())
    }

    /// Wait until no checkpoint is pending or running.
    fn wait_idle(&self) -> std::io::Result<()> {
        let mut st = self.lock();
        while st.pending.is_some() || st.busy {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A checkpoint of `bytes`, done when this returns.
    pub(super) fn sync_now(&self, bytes: u64, validator: &Validator) -> std::io::Result<()> {
        self.wait_idle()?;
        self.file.sync_data()?;
        self.sink.checkpoint(bytes, validator);
        Ok(())
    }

    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// The helper thread.
    pub(super) fn run(&self) {
        let mut st = self.lock();
        loop {
            if let Some((bytes, validator)) = st.pending.take() {
                st.busy = true;
                drop(st);
                let r = self.file.sync_data();
                if r.is_ok() {
                    self.sink.checkpoint(bytes, &validator);
                }
                st = self.lock();
                st.busy = false;
                if let Err(e) = r {
                    st.error = Some(e);
                }
                self.cv.notify_all();
            } else if st.stop {
                return;
            } else {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_file_streams_with_the_algorithm_given() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let mut seen = 0;
        let got = hash_file(&p, Algorithm::Md5, None, &mut |n| seen = n)
            .unwrap()
            .unwrap();
        assert_eq!(got.to_hex(), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(seen, 11);
        let sha = hash_file(&p, Algorithm::Sha256, None, &mut |_| {})
            .unwrap()
            .unwrap();
        assert_eq!(sha.algorithm, Algorithm::Sha256);
    }

    struct NoSink;
    impl DownloadSink for NoSink {
        fn progress(&self, _: u64) {}
        fn checkpoint(&self, _: u64, _: &Validator) {}
    }

    /// docs/API.md 9.7: gathered buffers come back from the write thread empty and are reused,
    /// so 40 buffers (10 MiB) go through with at most `POOL` ever allocated, and the file and
    /// the hash get every byte in order.
    #[test]
    fn api_9_7_gather_buffers_are_reused_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let file = File::create(&p).unwrap();
        let failed = AtomicBool::new(false);
        let sink = NoSink;
        let ck = Checkpointer::new(file.try_clone().unwrap(), &sink);
        let (w, queue) = write_channels(&failed);
        let mut expected = Hasher::new(Algorithm::Md5);
        let mut all = Vec::new();
        let hasher = std::thread::scope(|scope| {
            let writer = scope
                .spawn(|| write_loop(file, Hasher::new(Algorithm::Md5), 0, queue, &ck, &failed));
            for i in 0..40u8 {
                let mut buf = w.take_buffer().unwrap();
                assert!(buf.is_empty() && buf.capacity() >= GATHER);
                buf.resize(GATHER, i);
                expected.update(&buf);
                all.extend_from_slice(&buf);
                w.send(WriteMsg::Gathered(buf)).unwrap();
            }
            w.barrier().unwrap();
            assert!(w.allocated.get() <= POOL, "{} buffers", w.allocated.get());
            drop(w);
            let (hasher, error) = writer.join().unwrap();
            assert!(error.is_none());
            hasher
        });
        assert_eq!(hasher.finalize(), expected.finalize());
        assert!(
            std::fs::read(&p).unwrap() == all,
            "the file holds every buffer in order"
        );
    }

    #[test]
    fn hash_file_stops_on_shutdown() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let s = Shutdown::new();
        s.trigger();
        assert_eq!(
            hash_file(&p, Algorithm::Md5, Some(&s), &mut |_| {}).unwrap(),
            None
        );
    }
}
