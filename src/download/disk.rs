//! The download's disk side: the write side (hash and write each buffer, on the write thread
//! while the next one is received on a fast link, on the receiving thread itself on a slow
//! one), the checkpoint thread (`fdatasync`, then the byte count persisted through the sink),
//! opening and re-hashing a partial file, and hashing a whole file for verification.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// The write side: the file, the hash, the count written and the first write error, shared
/// by the write thread and the stream. The write thread applies what is queued, so on a fast
/// link hashing and writing one buffer overlaps receiving the next; when nothing is queued the
/// stream may apply a buffer itself ([`Writer::apply_or_send`]), which on a slow link costs
/// less than waking the write thread for it (docs/API.md 9.7).
pub(super) struct WriteSide<'a> {
    disk: Mutex<Disk>,
    /// A write failed (the error is in `disk`).
    failed: AtomicBool,
    /// Messages sent to the write thread and not yet applied.
    queued: AtomicUsize,
    ck: &'a Checkpointer<'a>,
}

struct Disk {
    file: File,
    hasher: Hasher,
    written: u64,
    /// The first write error; after it, data is dropped and every barrier reports it.
    error: Option<std::io::Error>,
}

impl<'a> WriteSide<'a> {
    /// `written` bytes of `file` are fed to `hasher` already.
    pub(super) fn new(
        file: File,
        hasher: Hasher,
        written: u64,
        ck: &'a Checkpointer<'a>,
    ) -> WriteSide<'a> {
        WriteSide {
            disk: Mutex::new(Disk {
                file,
                hasher,
                written,
                error: None,
            }),
            failed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            ck,
        }
    }

    /// Apply one message; gives back the buffer of `Gathered`, emptied.
    fn apply(&self, m: WriteMsg) -> Option<Vec<u8>> {
        let mut guard = crate::sync::lock(&self.disk);
        let d = &mut *guard;
        let mut give_back = None;
        // After a write error, data and checkpoints are dropped (a buffer still comes back).
        let failed = d.error.is_some();
        let outcome = match m {
            WriteMsg::Data(chunk) if !failed => d.write(&chunk),
            WriteMsg::Data(_) => Ok(()),
            WriteMsg::Gathered(mut buf) => {
                // The hash right after the write: the bytes are still in this core's cache.
                let r = if failed { Ok(()) } else { d.write(&buf) };
                buf.clear();
                give_back = Some(buf);
                r
            }
            WriteMsg::Reset => {
                // No checkpoint of the old bytes may land after the truncation.
                let r = self
                    .ck
                    .wait_idle()
                    .and_then(|()| d.file.set_len(0))
                    .and_then(|()| d.file.seek(SeekFrom::Start(0)).map(|_| ()));
                if r.is_ok() {
                    d.hasher = Hasher::new(d.hasher.algorithm());
                    d.written = 0;
                }
                r
            }
            WriteMsg::Checkpoint(v) if !failed => self.ck.request(d.written, &v),
            WriteMsg::Checkpoint(_) => Ok(()),
            WriteMsg::Barrier(reply) => {
                let _ = reply.send(d.first_error());
                Ok(())
            }
        };
        if let Err(e) = outcome {
            self.failed.store(true, Ordering::Release);
            d.error.get_or_insert(e);
        }
        give_back
    }

    /// The first write error, if any (a copy).
    fn first_error(&self) -> std::io::Result<()> {
        crate::sync::lock(&self.disk).first_error()
    }

    /// The hash and the first write error, once the stream and the write thread are done.
    pub(super) fn finish(self) -> (Hasher, Option<std::io::Error>) {
        let d = self
            .disk
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (d.hasher, d.error)
    }
}

impl Disk {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn first_error(&self) -> std::io::Result<()> {
        match &self.error {
            // A copy that keeps the OS error number (ENOSPC means DISK_FULL).
            Some(e) => Err(match e.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(e.kind(), e.to_string()),
            }),
            None => Ok(()),
        }
    }
}

/// The stream's end of the write thread.
pub(super) struct Writer<'a> {
    tx: std::sync::mpsc::SyncSender<WriteMsg>,
    side: &'a WriteSide<'a>,
    /// Gather buffers the write thread is done with.
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Gather buffers allocated so far (at most [`POOL`]).
    allocated: Cell<usize>,
    /// A gather buffer the stream applied itself, to fill again.
    spare: Cell<Option<Vec<u8>>>,
}

/// The write thread's ends of the channels: what to write, and where written buffers go back.
pub(super) struct WriteQueue {
    rx: std::sync::mpsc::Receiver<WriteMsg>,
    give_back: std::sync::mpsc::SyncSender<Vec<u8>>,
}

/// The channels between the stream and the write thread.
pub(super) fn write_channels<'a>(side: &'a WriteSide<'a>) -> (Writer<'a>, WriteQueue) {
    let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
    // Room for every buffer of the pool: giving one back never blocks the write thread.
    let (give_back, returned) = std::sync::mpsc::sync_channel(POOL);
    (
        Writer {
            tx,
            side,
            returned,
            allocated: Cell::new(0),
            spare: Cell::new(None),
        },
        WriteQueue { rx, give_back },
    )
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the write thread has stopped")
}

impl Writer<'_> {
    /// An empty buffer with room for [`GATHER`] bytes: the one the stream applied itself, one
    /// the write thread gave back, a new one while the pool is not complete, else the next one
    /// given back (the write thread is writing it: the stream waits, as it does for a full
    /// queue).
    pub(super) fn take_buffer(&self) -> std::io::Result<Vec<u8>> {
        if let Some(b) = self.spare.take() {
            return Ok(b);
        }
        if let Ok(b) = self.returned.try_recv() {
            return Ok(b);
        }
        if self.allocated.get() < POOL {
            self.allocated.set(self.allocated.get() + 1);
            return Ok(Vec::with_capacity(GATHER));
        }
        self.returned.recv().map_err(|_| stopped())
    }

    /// Put `m` in the write thread's queue, counted in `queued` until applied.
    fn queue(&self, m: WriteMsg) -> std::io::Result<()> {
        self.side.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(m).is_err() {
            self.side.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(stopped());
        }
        Ok(())
    }

    /// Queue `m` for the write thread; the first write error, if one happened.
    pub(super) fn send(&self, m: WriteMsg) -> std::io::Result<()> {
        self.queue(m)?;
        if self.side.failed.load(Ordering::Acquire) {
            self.barrier()?;
        }
        Ok(())
    }

    /// Apply `m` on this thread when the write thread has nothing queued (everything sent
    /// before is written, so the order stays), else queue it. No other thread wakes for it.
    pub(super) fn apply_or_send(&self, m: WriteMsg) -> std::io::Result<()> {
        if self.side.queued.load(Ordering::Acquire) != 0 {
            return self.send(m);
        }
        if let Some(buf) = self.side.apply(m) {
            self.spare.set(Some(buf));
        }
        if self.side.failed.load(Ordering::Acquire) {
            return self.side.first_error();
        }
        Ok(())
    }

    /// Wait until every chunk sent so far is written; the first write error, if any.
    pub(super) fn barrier(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.queue(WriteMsg::Barrier(tx))?;
        rx.recv().map_err(|_| stopped())?
    }
}

/// The write thread: applies what the stream queues, in order, so hashing and writing one
/// buffer overlaps receiving the next. After a write error it keeps draining the queue and
/// reports the error at every barrier.
pub(super) fn write_loop(queue: WriteQueue, side: &WriteSide<'_>) {
    let WriteQueue { rx, give_back } = queue;
    while let Ok(m) = rx.recv() {
        if let Some(buf) = side.apply(m) {
            // The pool has room for every buffer; the stream may have ended already.
            let _ = give_back.try_send(buf);
        }
        // Only now: a stream that sees nothing queued finds everything sent before applied.
        side.queued.fetch_sub(1, Ordering::AcqRel);
    }
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

    /// Runs `body` with the write side of a new, empty file `f` in a temporary directory
    /// (opened read-only when `writable` is false, so that every write fails), then gives the
    /// file's bytes, the hash and the first write error.
    fn with_side(
        writable: bool,
        body: impl FnOnce(&WriteSide<'_>, &Path),
    ) -> (Vec<u8>, Hasher, Option<std::io::Error>) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let file = OpenOptions::new()
            .write(writable)
            .read(true)
            .open(&p)
            .unwrap();
        let sink = NoSink;
        let ck = Checkpointer::new(file.try_clone().unwrap(), &sink);
        let side = WriteSide::new(file, Hasher::new(Algorithm::Md5), 0, &ck);
        body(&side, &p);
        let (hasher, error) = side.finish();
        (std::fs::read(&p).unwrap(), hasher, error)
    }

    /// `bytes` in a gather buffer, applied here or queued (`Writer::apply_or_send`).
    fn apply_here(w: &Writer<'_>, bytes: &[u8]) -> std::io::Result<()> {
        let mut buf = w.take_buffer().unwrap();
        buf.extend_from_slice(bytes);
        w.apply_or_send(WriteMsg::Gathered(buf))
    }

    fn md5_of(bytes: &[u8]) -> Checksum {
        let mut h = Hasher::new(Algorithm::Md5);
        h.update(bytes);
        h.finalize()
    }

    /// docs/API.md 9.7: gathered buffers come back from the write thread empty and are reused,
    /// so 40 buffers (10 MiB) go through with at most `POOL` ever allocated, and the file and
    /// the hash get every byte in order.
    #[test]
    fn api_9_7_gather_buffers_are_reused_and_bounded() {
        let mut all = Vec::new();
        let (file, hasher, error) = with_side(true, |side, _| {
            let (w, queue) = write_channels(side);
            std::thread::scope(|scope| {
                let writer = scope.spawn(|| write_loop(queue, side));
                for i in 0..40u8 {
                    let mut buf = w.take_buffer().unwrap();
                    assert!(buf.is_empty() && buf.capacity() >= GATHER);
                    buf.resize(GATHER, i);
                    all.extend_from_slice(&buf);
                    w.send(WriteMsg::Gathered(buf)).unwrap();
                }
                w.barrier().unwrap();
                assert!(w.allocated.get() <= POOL, "{} buffers", w.allocated.get());
                drop(w);
                writer.join().unwrap();
            });
        });
        assert!(error.is_none());
        assert_eq!(hasher.finalize(), md5_of(&all));
        assert!(file == all, "the file holds every buffer in order");
    }

    /// docs/API.md 9.7: with nothing queued, `apply_or_send` writes and hashes on the calling
    /// thread (no write thread runs here: the bytes are in the file when it returns, and the
    /// buffer comes back for the next fill); with something queued it queues behind it, so
    /// the file keeps the order sent.
    #[test]
    fn api_9_7_a_buffer_is_applied_here_when_nothing_is_queued_and_queued_behind_otherwise() {
        let (file, hasher, error) = with_side(true, |side, p| {
            let (w, queue) = write_channels(side);
            apply_here(&w, b"first ").unwrap();
            assert_eq!(
                std::fs::read(p).unwrap(),
                b"first ",
                "written on this thread"
            );
            let mut again = w.take_buffer().unwrap();
            assert!(again.is_empty() && again.capacity() >= GATHER);
            assert_eq!(
                w.allocated.get(),
                1,
                "the buffer applied here is filled again"
            );
            // Queued for the write thread, which is not running yet: what follows waits for it.
            w.send(WriteMsg::Data(axum::body::Bytes::from_static(b"second ")))
                .unwrap();
            again.extend_from_slice(b"third");
            w.apply_or_send(WriteMsg::Gathered(again)).unwrap();
            assert_eq!(
                std::fs::read(p).unwrap(),
                b"first ",
                "nothing overtook the queue"
            );
            std::thread::scope(|scope| {
                let writer = scope.spawn(|| write_loop(queue, side));
                w.barrier().unwrap();
                drop(w);
                writer.join().unwrap();
            });
        });
        assert!(error.is_none());
        assert_eq!(file, b"first second third");
        assert_eq!(hasher.finalize(), md5_of(b"first second third"));
    }

    /// A write that fails on the calling thread (here: a file opened read-only) reports its
    /// error there, and every later barrier reports it too, as from the write thread.
    #[test]
    fn a_write_error_applied_here_is_reported_at_once_and_at_every_barrier() {
        let (file, _, error) = with_side(false, |side, _| {
            let (w, queue) = write_channels(side);
            let here = apply_here(&w, b"bytes").unwrap_err();
            std::thread::scope(|scope| {
                let writer = scope.spawn(|| write_loop(queue, side));
                let later = w.barrier().unwrap_err();
                assert_eq!(
                    here.raw_os_error(),
                    later.raw_os_error(),
                    "{here} / {later}"
                );
                drop(w);
                writer.join().unwrap();
            });
        });
        assert!(error.is_some() && file.is_empty());
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
