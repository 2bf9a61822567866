//! Reused backdoors (paper section IV): triggers found for a pair are kept
//! and used as the initial value of later inversions of the same direction,
//! which then converge in far fewer steps.

use std::collections::BTreeMap;

use crate::algo::trigger::Trigger;

/// One trigger per directed pair `(victim, target)`. The cache keeps the
/// LARGEST trigger seen for each direction (the reference's rule: a larger
/// trigger is a better starting point once the pair has been hardened).
#[derive(Debug, Clone, Default)]
pub struct TriggerCache {
    entries: BTreeMap<(usize, usize), (f64, Trigger)>,
}

impl TriggerCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached trigger of `victim -> target`, if any.
    pub fn get(&self, victim: usize, target: usize) -> Option<&Trigger> {
        self.entries.get(&(victim, target)).map(|(_, t)| t)
    }

    /// Size of the cached trigger of `victim -> target` (0 when absent).
    pub fn size(&self, victim: usize, target: usize) -> f64 {
        self.entries.get(&(victim, target)).map_or(0.0, |(s, _)| *s)
    }

    /// Stores `trigger` unconditionally (warm-up seeding).
    pub fn put(&mut self, victim: usize, target: usize, trigger: Trigger, size: f64) {
        self.entries.insert((victim, target), (size, trigger));
    }

    /// Offers a newly found trigger; it replaces the cached one only when it
    /// is larger. Returns whether it was kept.
    pub fn offer(&mut self, victim: usize, target: usize, trigger: &Trigger, size: f64) -> bool {
        if size > self.size(victim, target) {
            self.put(victim, target, trigger.clone(), size);
            true
        } else {
            false
        }
    }

    /// Number of cached directions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, in `(victim, target)` order.
    pub fn iter(&self) -> impl Iterator<Item = (&(usize, usize), &(f64, Trigger))> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn trig(v: f64) -> Trigger {
        Trigger::new(
            Tensor::full([1, 2, 2], v, (Kind::Float, Device::Cpu)),
            Tensor::zeros([1, 2, 2], (Kind::Float, Device::Cpu)),
        )
        .unwrap()
    }

    #[test]
    fn keeps_the_largest_trigger_per_direction() {
        let mut c = TriggerCache::new();
        assert!(c.offer(0, 1, &trig(0.5), 2.0));
        assert!(
            !c.offer(0, 1, &trig(0.25), 1.0),
            "smaller trigger is not kept"
        );
        assert_eq!(c.get(0, 1).unwrap(), &trig(0.5));
        assert!(c.offer(0, 1, &trig(0.75), 3.0));
        assert_eq!(c.size(0, 1), 3.0);
        assert!(c.get(1, 0).is_none(), "directions are separate");
        assert_eq!(c.len(), 1);
    }
}
