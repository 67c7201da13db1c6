//! Stop tokens: the SIGTERM flag of the daemon and the per-job tokens derived from it. Set
//! once, seen by async tasks (awaitable) and by blocking jobs (polled between atomic steps).
//!
//! A token made with [`Shutdown::child`] is set when it is triggered itself or when its parent
//! is (SIGTERM reaches every job), never the other way round: a job that ends, or stops for a
//! reason of its own, leaves the daemon's flag alone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;

use crate::sync::lock;

#[derive(Clone)]
pub struct Shutdown {
    node: Arc<Node>,
}

struct Node {
    flag: AtomicBool,
    tx: watch::Sender<bool>,
    /// Tokens derived from this one, set with it.
    children: Mutex<Vec<Weak<Node>>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Node {
    fn new() -> Node {
        let (tx, _rx) = watch::channel(false);
        Node {
            flag: AtomicBool::new(false),
            tx,
            children: Mutex::new(Vec::new()),
        }
    }

    fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.tx.send_replace(true);
        // Taken under the lock that `child` holds while it checks the flag: a child is either
        // made already set, or is in this list.
        let children = std::mem::take(&mut *lock(&self.children));
        for c in children.iter().filter_map(Weak::upgrade) {
            c.trigger();
        }
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            node: Arc::new(Node::new()),
        }
    }

    /// A token of its own (one job's) that this one's trigger also sets.
    pub fn child(&self) -> Shutdown {
        let child = Arc::new(Node::new());
        let mut children = lock(&self.node.children);
        if self.is_set() {
            drop(children);
            child.trigger();
        } else {
            children.retain(|w| w.strong_count() > 0);
            children.push(Arc::downgrade(&child));
        }
        Shutdown { node: child }
    }

    pub fn trigger(&self) {
        self.node.trigger();
    }

    pub fn is_set(&self) -> bool {
        self.node.flag.load(Ordering::SeqCst)
    }

    /// The flag itself, for blocking code that polls it.
    pub fn flag(&self) -> &AtomicBool {
        &self.node.flag
    }

    /// Resolves once the flag is set (at once if it already is). Works from any runtime.
    pub async fn wait(&self) {
        let mut rx = self.node.tx.subscribe();
        let _ = rx.wait_for(|set| *set).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_sets_its_children_and_not_the_reverse() {
        let daemon = Shutdown::new();
        let job = daemon.child();
        let other = daemon.child();
        job.trigger();
        assert!(job.is_set() && !daemon.is_set() && !other.is_set());
        daemon.trigger();
        assert!(other.is_set() && other.flag().load(Ordering::SeqCst));
        // Made after the parent was set: set from the start.
        assert!(daemon.child().is_set());
    }

    #[test]
    fn a_child_is_awaitable_from_another_runtime() {
        let daemon = Shutdown::new();
        let job = daemon.child();
        let waiter = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(job.wait());
        });
        daemon.trigger();
        waiter.join().unwrap();
    }

    #[test]
    fn dropped_children_are_not_kept() {
        let daemon = Shutdown::new();
        for _ in 0..100 {
            drop(daemon.child());
        }
        let _live = daemon.child();
        assert_eq!(lock(&daemon.node.children).len(), 1);
    }
}
