//! A fault-injecting wrapper for tests: an inner store whose calls fail,
//! lose their answer, stall or crash on demand, deterministically.
//!
//! Two ways to use it. The switches (`fail_writes`, `fail_reads`) make a
//! whole class of calls fail while set, as an unreachable endpoint would.
//! Rules (`inject`) pick calls by operation, key prefix and position — "the
//! 3rd `put_new` under `journal/`" — and do one of the [`Fault`]s to them;
//! with `calls` counting every call, a test can run a workload once to
//! count its store calls and then crash it at each one in turn (redb's
//! crash tests are the model).

use super::{ObjectInfo, ObjectStore, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store calls a rule can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Put,
    PutNew,
    PutIfTag,
    Get,
    Delete,
    List,
}

impl Op {
    pub fn is_write(self) -> bool {
        matches!(self, Op::Put | Op::PutNew | Op::PutIfTag | Op::Delete)
    }
}

/// What happens to a matched call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails without reaching the store.
    Fail,
    /// Reaches the store, then fails: the write landed, its answer was lost.
    LoseAnswer,
    /// Waits this long, then goes through.
    Stall(Duration),
    /// The process dies here: this call and every later one fail without
    /// reaching the store.
    Crash,
}

/// Which calls a fault applies to.
#[derive(Clone, Debug)]
pub struct Rule {
    fault: Fault,
    ops: Vec<Op>,
    prefix: String,
    /// Fire at the nth matching call (1-based); 0: at every one.
    nth: u64,
    seen: u64,
}

impl Rule {
    /// `fault` at every call, until narrowed.
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            ops: Vec::new(),
            prefix: String::new(),
            nth: 0,
            seen: 0,
        }
    }

    /// Only these operations.
    pub fn on(mut self, ops: &[Op]) -> Rule {
        self.ops = ops.to_vec();
        self
    }

    /// Only keys (or listing prefixes) starting with `prefix`.
    pub fn under(mut self, prefix: &str) -> Rule {
        self.prefix = prefix.to_string();
        self
    }

    /// Only the nth matching call (1-based).
    pub fn nth(mut self, n: u64) -> Rule {
        self.nth = n;
        self
    }

    /// Whether this call is the one; counts it if it matches.
    fn fires(&mut self, op: Op, key: &str) -> bool {
        if !(self.ops.is_empty() || self.ops.contains(&op)) || !key.starts_with(&self.prefix) {
            return false;
        }
        self.seen += 1;
        self.nth == 0 || self.seen == self.nth
    }
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
    rules: Mutex<Vec<Rule>>,
    crashed: AtomicBool,
    calls: AtomicU64,
}

fn injected() -> StoreError {
    StoreError::Unreachable("injected fault".into())
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            fail_writes: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            rules: Mutex::new(Vec::new()),
            crashed: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        }
    }

    /// While set, put, put_new and delete fail as if the store were unreachable.
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// While set, get and list fail as if the store were unreachable.
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    /// Adds a rule; rules are tried in the order they were added, and the
    /// first that fires decides.
    pub fn inject(&self, rule: Rule) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(rule);
    }

    /// Calls made so far (including failed ones).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Whether a `Fault::Crash` has fired.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Decides the fate of one call; `Ok(Some(fault))` when it goes to the
    /// store with `fault` to apply after (lost answer) or before (stall).
    async fn admit(&self, op: Op, key: &str) -> Result<Option<Fault>, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.crashed() {
            return Err(injected());
        }
        let switch = if op.is_write() {
            &self.fail_writes
        } else {
            &self.fail_reads
        };
        if switch.load(Ordering::SeqCst) {
            return Err(injected());
        }
        let fault = {
            let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
            rules.iter_mut().find_map(|r| r.fires(op, key).then_some(r.fault))
        };
        match fault {
            None => Ok(None),
            Some(Fault::Fail) => Err(injected()),
            Some(Fault::Crash) => {
                self.crashed.store(true, Ordering::SeqCst);
                Err(injected())
            }
            Some(Fault::Stall(d)) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Some(Fault::LoseAnswer) => Ok(Some(Fault::LoseAnswer)),
        }
    }

    /// Runs the call if admitted; a lost answer turns its success into an error.
    async fn call<T>(
        &self,
        op: Op,
        key: &str,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let fault = self.admit(op, key).await?;
        let result = f.await;
        match fault {
            Some(Fault::LoseAnswer) => result.and(Err(injected())),
            _ => result,
        }
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.call(Op::Put, key, self.inner.put(key, data)).await
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.call(Op::PutNew, key, self.inner.put_new(key, data)).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.call(Op::Get, key, self.inner.get(key)).await
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        self.call(Op::Get, key, self.inner.get_tagged(key)).await
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        self.call(Op::Get, key, self.inner.get_at_most(key, limit)).await
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        self.call(Op::Get, key, self.inner.get_range(key, start, len)).await
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        self.call(Op::PutIfTag, key, self.inner.put_if_tag(key, data, tag))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call(Op::Delete, key, self.inner.delete(key)).await
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.call(Op::List, prefix, self.inner.list_objects(prefix)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn faulty() -> (Arc<MemoryStore>, FaultyStore) {
        let inner = Arc::new(MemoryStore::default());
        (inner.clone(), FaultyStore::new(inner))
    }

    #[tokio::test]
    async fn the_nth_matching_call_fails_and_no_other() {
        let (inner, store) = faulty();
        store.inject(Rule::new(Fault::Fail).on(&[Op::PutNew]).under("journal/").nth(2));
        store.put_new("journal/1", Bytes::from_static(b"a")).await.unwrap();
        store.put_new("data/x", Bytes::from_static(b"b")).await.unwrap();
        assert!(store.put_new("journal/2", Bytes::from_static(b"c")).await.is_err());
        store.put_new("journal/3", Bytes::from_static(b"d")).await.unwrap();
        assert!(
            inner.get("journal/2").await.is_err(),
            "a failed call never reached the store"
        );
        assert_eq!(store.calls(), 4);
    }

    #[tokio::test]
    async fn a_lost_answer_lands_the_write_and_reports_an_error() {
        let (inner, store) = faulty();
        store.inject(Rule::new(Fault::LoseAnswer).on(&[Op::Put]).nth(1));
        assert!(store.put("k", Bytes::from_static(b"v")).await.is_err());
        assert_eq!(inner.get("k").await.unwrap(), Bytes::from_static(b"v"));
        store.put("k", Bytes::from_static(b"w")).await.unwrap();
    }

    #[tokio::test]
    async fn after_a_crash_nothing_reaches_the_store() {
        let (inner, store) = faulty();
        store.inject(Rule::new(Fault::Crash).nth(2));
        store.put("a", Bytes::from_static(b"1")).await.unwrap();
        assert!(store.put("b", Bytes::from_static(b"2")).await.is_err());
        assert!(store.crashed());
        assert!(store.get("a").await.is_err());
        assert!(store.put("c", Bytes::from_static(b"3")).await.is_err());
        assert_eq!(inner.list("").await.unwrap(), ["a"]);
    }

    #[tokio::test]
    async fn a_stalled_call_waits_then_goes_through() {
        let (_, store) = faulty();
        store.inject(Rule::new(Fault::Stall(Duration::from_millis(200))).on(&[Op::Get]));
        store.put("a", Bytes::from_static(b"1")).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(store.get("a").await.unwrap(), Bytes::from_static(b"1"));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
