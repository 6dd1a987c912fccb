//! The classification cache: most traffic is the same few hundred statement
//! shapes with different literals, and a cache hit costs one lexer pass and
//! a shared lock instead of a parse.
//!
//! Sharded so that sessions on different cores rarely meet on one lock;
//! bounded, evicting a pseudo-random entry of a full shard, which is cheap
//! and good enough for a working set that mostly fits.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, PoisonError, RwLock};

use super::{analyze, lexer, Classification, ClassifyError};

const SHARDS: usize = 16;

type Shard = RwLock<HashMap<String, Arc<Classification>>>;

/// A thread-safe, bounded cache of classifications keyed by [`super::normalize`].
pub struct Classifier {
    shards: Vec<Shard>,
    per_shard: usize,
    hasher: RandomState,
}

impl Classifier {
    /// A cache holding about `capacity` classifications; 0 disables caching.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        }
    }

    /// Classifies `sql`, from the cache when a statement of the same shape
    /// was classified before.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        let Some(key) = lexer::lex(sql).key().filter(|_| self.per_shard > 0) else {
            return analyze(sql).map(|a| Arc::new(a.classification));
        };
        let shard = self.shard(&key);
        if let Some(hit) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        let analysis = analyze(sql)?;
        let classification = Arc::new(analysis.classification);
        if analysis.cacheable {
            self.insert(shard, key, Arc::clone(&classification));
        }
        Ok(classification)
    }

    /// The cached classification of a statement of `sql`'s shape, without parsing: callers
    /// that must not block on a parse (an async runtime thread) try this first.
    pub fn cached(&self, sql: &str) -> Option<Arc<Classification>> {
        let key = lexer::lex(sql).key().filter(|_| self.per_shard > 0)?;
        let shard = self.shard(&key);
        let map = shard.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&key).cloned()
    }

    /// How many classifications are cached now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> &Shard {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[index]
    }

    fn insert(&self, shard: &Shard, key: String, classification: Arc<Classification>) {
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            // The first key in iteration order would always hit the same
            // buckets; a position derived from the new key's hash spreads
            // evictions. O(shard) on a miss, which already paid for a parse.
            let nth = self.hasher.hash_one(&key).rotate_left(32) as usize % map.len();
            if let Some(victim) = map.keys().nth(nth).cloned() {
                map.remove(&victim);
            }
        }
        map.insert(key, classification);
    }
}

impl Default for Classifier {
    /// Room for 10,000 statement shapes.
    fn default() -> Self {
        Self::new(10_000)
    }
}
