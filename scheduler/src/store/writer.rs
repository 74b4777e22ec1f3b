//! Group commit: one thread owns the write connection and commits many operations with one fsync.
//!
//! A durable commit costs an fsync (milliseconds), so one transaction per request caps the
//! scheduler at a few hundred requests a second. Instead every write operation is sent to the
//! writer thread; it takes all operations waiting (up to [`MAX_GROUP`]), runs each in its own
//! SAVEPOINT inside one `BEGIN IMMEDIATE` transaction — a failing operation rolls back only its
//! savepoint and gets its own error — commits once, and only then answers each operation. Nothing
//! is acknowledged before it is durable.
//!
//! Reads go to [`Readers`], read-only connections that WAL lets run alongside the writer.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::Store;
use crate::error::{Error, Result};

/// Most operations committed together.
pub const MAX_GROUP: usize = 512;

/// An operation run on the writer thread; it returns how to answer once the group is committed.
type Operation = Box<dyn FnOnce(&mut Store) -> Reply + Send>;
/// Sends an operation's answer, given the group's commit failure if there was one.
type Reply = Box<dyn FnOnce(Option<&str>) + Send>;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    sender: mpsc::Sender<Operation>,
}

impl Writer {
    /// Starts the writer thread, which owns `store` until every handle is dropped.
    pub fn spawn(store: Store) -> Result<Writer> {
        let (sender, receiver) = mpsc::channel::<Operation>();
        std::thread::Builder::new()
            .name("tessera-store-writer".into())
            .spawn(move || run(store, receiver))
            .map_err(Error::io("starting the store writer thread"))?;
        Ok(Writer { sender })
    }

    /// Runs `operation` on the store and answers once its effects are committed.
    pub async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = oneshot::channel();
        let boxed: Operation = Box::new(move |store: &mut Store| {
            let result = operation(store);
            Box::new(move |commit_failure: Option<&str>| {
                let result = match (result, commit_failure) {
                    (Ok(_), Some(failure)) => Err(Error::Store(format!("commit failed: {failure}"))),
                    (result, _) => result,
                };
                let _ = answer.send(result);
            })
        });
        self.sender.send(boxed).map_err(|_| Error::Store("the store writer has stopped".into()))?;
        answered.await.map_err(|_| Error::Store("the store writer stopped before answering".into()))?
    }
}

/// The writer thread: take what is waiting, run it in one transaction, commit, answer.
fn run(mut store: Store, receiver: mpsc::Receiver<Operation>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(operation) => group.push(operation),
                Err(_) => break,
            }
        }
        if let Err(error) = store.begin_group() {
            let failure = error.to_string();
            tracing::error!(error = %failure, "the store cannot begin a transaction");
            // Dropping the operations drops their answer channels: each caller gets a store error.
            drop(group);
            continue;
        }
        let size = group.len();
        let started = std::time::Instant::now();
        let replies: Vec<Reply> = group.into_iter().map(|operation| operation(&mut store)).collect();
        let ran = started.elapsed();
        let failure = store.commit_group().err().map(|error| {
            tracing::error!(%error, "group commit failed");
            error.to_string()
        });
        tracing::trace!(
            size,
            run_us = ran.as_micros() as u64,
            commit_us = (started.elapsed() - ran).as_micros() as u64,
            "group committed"
        );
        for reply in replies {
            reply(failure.as_deref());
        }
    }
}

/// A small pool of read-only connections: a read takes an idle one (or opens one) on the
/// blocking pool and puts it back afterwards.
#[derive(Clone)]
pub struct Readers {
    path: PathBuf,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Readers {
    /// Readers of the database at `path` (which the writer has already created and migrated).
    pub fn new(path: &Path) -> Readers {
        Readers { path: path.to_path_buf(), idle: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Runs a query on a read-only connection off the async reactor.
    pub async fn run<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = readers.idle.lock().map_err(|_| Error::Store("reader pool lock poisoned".into()))?.pop();
            let connection = match taken {
                Some(connection) => connection,
                None => Store::open_reader(&readers.path)?,
            };
            let result = query(&connection);
            if let Ok(mut idle) = readers.idle.lock() {
                if idle.len() < 8 {
                    idle.push(connection);
                }
            }
            result
        })
        .await
        .map_err(|error| Error::Store(format!("read task failed: {error}")))?
    }
}
