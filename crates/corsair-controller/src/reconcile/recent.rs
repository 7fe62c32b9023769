//! A map of per-object state that forgets objects it has not heard of for a while.
//!
//! The reconcilers keep a little state per object (a failure count, the status last written).
//! An object that is deleted is never reconciled again, so nothing would ever remove its entry:
//! in a cluster whose workloads come and go, the maps would grow for as long as the controller
//! runs. Entries untouched for [`FORGET_AFTER`] are dropped instead; an object still being
//! reconciled touches its entry far more often than that.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::time::Instant;

/// How long an entry lives without being touched: three times the longest retry delay.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
pub struct Recent<V> {
    entries: HashMap<String, (V, Instant)>,
    /// When the entries were last swept for old ones.
    swept: Instant,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            entries: HashMap::new(),
            swept: Instant::now(),
        }
    }
}

impl<V> Recent<V> {
    /// The entry for `key`, unless it is older than [`FORGET_AFTER`] (swept or not).
    pub fn get(&self, key: &str) -> Option<&V> {
        let now = Instant::now();
        self.entries
            .get(key)
            .filter(|(_, touched)| now.duration_since(*touched) < FORGET_AFTER)
            .map(|(value, _)| value)
    }

    /// The entry for `key`, made with `make` if absent or older than [`FORGET_AFTER`], marked as
    /// touched now. Entries untouched for that long are also swept from the map, at most once
    /// per that period.
    pub fn touch(&mut self, key: String, make: impl FnOnce() -> V) -> &mut V {
        let now = self.sweep();
        match self.entries.entry(key) {
            Entry::Occupied(entry) => {
                let (value, touched) = entry.into_mut();
                if now.duration_since(*touched) >= FORGET_AFTER {
                    *value = make();
                }
                *touched = now;
                value
            }
            Entry::Vacant(entry) => &mut entry.insert((make(), now)).0,
        }
    }

    /// Sets the entry for `key` to `value`, touched now (and sweeps, as [`Recent::touch`]).
    pub fn insert(&mut self, key: String, value: V) {
        let now = self.sweep();
        self.entries.insert(key, (value, now));
    }

    /// Drops the entries untouched for [`FORGET_AFTER`], at most once per that period; returns
    /// the time it read.
    fn sweep(&mut self) -> Instant {
        let now = Instant::now();
        if now.duration_since(self.swept) >= FORGET_AFTER {
            self.entries
                .retain(|_, (_, touched)| now.duration_since(*touched) < FORGET_AFTER);
            self.swept = now;
        }
        now
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_entry_untouched_for_the_period_is_forgotten_and_a_touched_one_kept() {
        let mut recent = Recent::default();
        *recent.touch("deleted".to_owned(), || 0) += 1;
        *recent.touch("failing".to_owned(), || 0) += 1;
        // "failing" is retried every 5 minutes; "deleted" is never seen again.
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(5 * 60)).await;
            *recent.touch("failing".to_owned(), || 0) += 1;
        }
        assert_eq!(recent.get("deleted"), None, "20 minutes untouched");
        assert_eq!(recent.get("failing"), Some(&5), "kept, with its count");
        assert_eq!(recent.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_forgotten_within_the_period() {
        let mut recent = Recent::default();
        recent.touch("a".to_owned(), || 1);
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        recent.touch("b".to_owned(), || 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        // The sweep runs now (a period since the map was made); "a" is just over, "b" is not.
        recent.touch("c".to_owned(), || 3);
        assert_eq!(recent.get("a"), None);
        assert_eq!(recent.get("b"), Some(&2));
        assert_eq!(recent.get("c"), Some(&3));
        recent.remove("b");
        assert_eq!(recent.get("b"), None);
    }

    /// Between two sweeps an old entry is not swept yet, but no longer counts.
    #[tokio::test(start_paused = true)]
    async fn an_old_entry_counts_as_gone_before_the_sweep() {
        let mut recent = Recent::default();
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        *recent.touch("old".to_owned(), || 0) += 7;
        // The sweep runs two seconds later, while "old" is still young.
        tokio::time::advance(Duration::from_secs(2)).await;
        recent.touch("other".to_owned(), || 0);
        // "old" is now a period and a second old; the next sweep is a second away.
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        assert_eq!(recent.get("old"), None, "older than the period");
        assert_eq!(recent.len(), 2, "not swept yet");
        assert_eq!(*recent.touch("old".to_owned(), || 0), 0, "made anew");
    }
}
