//! Remembering tokens that already verified, until they expire.
//!
//! Clients reconnect constantly (connection pools, `psql` per command, kubectl
//! per request) with the same token; an RSA check per connection is wasted
//! work. Entries are keyed by the SHA-256 of the token, so the cache never
//! holds a usable token, and a hit requires presenting the exact same token.
//! Lookups compare digests, never tokens: how long a comparison takes can at
//! most reveal bytes of a hash, from which no token can be recovered, so no
//! constant-time comparison is needed here (nor anywhere else in this crate,
//! which compares no other secret).
//! The cache is bounded: expired entries go first, then the oldest.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use crate::Principal;

pub(crate) type Digest = [u8; 32];

pub(crate) struct VerifiedCache {
    capacity: usize,
    entries: HashMap<Digest, Principal>,
    /// Insertion order, for evicting the oldest when nothing has expired.
    /// May name digests already purged; those are skipped.
    order: VecDeque<Digest>,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The principal for a token seen before, if it has not expired since.
    pub(crate) fn get(&mut self, digest: &Digest, now: SystemTime) -> Option<Principal> {
        let principal = self.entries.get(digest)?;
        if principal.expires_at > now {
            return Some(principal.clone());
        }
        self.entries.remove(digest);
        None
    }

    pub(crate) fn insert(&mut self, digest: Digest, principal: Principal, now: SystemTime) {
        if self.capacity == 0 || principal.expires_at <= now {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&digest) {
            self.make_room(now);
        }
        if self.entries.insert(digest, principal).is_none() {
            self.order.push_back(digest);
        }
    }

    fn make_room(&mut self, now: SystemTime) {
        self.entries.retain(|_, p| p.expires_at > now);
        // Evict a tenth at once so a full cache of live tokens does not pay
        // the O(n) purge above on every single insert.
        let target = self.capacity - self.capacity.div_ceil(10);
        while self.entries.len() > target {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let entries = &self.entries;
        self.order.retain(|d| entries.contains_key(d));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn principal(name: &str, expires_at: SystemTime) -> Principal {
        Principal {
            name: name.into(),
            groups: vec![],
            issuer: "i".into(),
            claims: Default::default(),
            expires_at,
            token_fingerprint: "fp".into(),
        }
    }

    fn digest(n: u32) -> Digest {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&n.to_be_bytes());
        d
    }

    #[test]
    fn returns_entries_until_they_expire() {
        let now = SystemTime::now();
        let mut cache = VerifiedCache::new(10);
        cache.insert(
            digest(1),
            principal("a", now + Duration::from_secs(60)),
            now,
        );
        assert_eq!(cache.get(&digest(1), now).map(|p| p.name), Some("a".into()));
        assert!(cache.get(&digest(2), now).is_none());
        assert!(cache
            .get(&digest(1), now + Duration::from_secs(61))
            .is_none());
        assert_eq!(cache.len(), 0, "expired entry is dropped on lookup");
    }

    #[test]
    fn never_stores_expired_principals() {
        let now = SystemTime::now();
        let mut cache = VerifiedCache::new(10);
        cache.insert(digest(1), principal("a", now - Duration::from_secs(1)), now);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn stays_bounded_evicting_expired_then_oldest() {
        let now = SystemTime::now();
        let mut cache = VerifiedCache::new(10);
        cache.insert(
            digest(0),
            principal("short", now + Duration::from_secs(1)),
            now,
        );
        for n in 1..10 {
            cache.insert(
                digest(n),
                principal("long", now + Duration::from_secs(600)),
                now,
            );
        }
        let later = now + Duration::from_secs(2);
        cache.insert(
            digest(10),
            principal("new", now + Duration::from_secs(600)),
            later,
        );
        assert!(
            cache.get(&digest(0), later).is_none(),
            "expired entry evicted"
        );
        assert!(
            cache.get(&digest(1), later).is_some(),
            "live entries kept while room"
        );

        for n in 11..1000 {
            cache.insert(
                digest(n),
                principal("flood", now + Duration::from_secs(600)),
                later,
            );
            assert!(cache.len() <= 10);
        }
        assert!(cache.get(&digest(1), later).is_none(), "oldest evicted");
        assert!(cache.get(&digest(999), later).is_some(), "newest kept");
    }
}
