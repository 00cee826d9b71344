//! Routes as a shard runs them: each `[routes.<name>]` with its targets
//! resolved to providers, the order one request tries them in (fallback or
//! weighted, the target list chosen by metadata), the waits between tries,
//! and each target's cooldown.
//!
//! Shard-local state (cooldowns) is plain `Cell`s, and random draws (weights,
//! jitter) come from the shard's own cheap randomness ([`Below`]): a target failing on every shard cools on each shard as it
//! learns so, with no message between cores. A stage module beside `route`,
//! which asks it for the order; the pipeline reports outcomes back.

use crate::config::Config;
use crate::config::routes::{Backoff, Cooldown, FallbackOn, Retry, Strategy, TargetConfig};
use crate::fasthash::FastMap;
use crate::providers::{Provider, Providers};
use crate::record::Metadata;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One provider and model of a route, with its cooldown state.
pub struct Target {
    pub provider: Rc<Provider>,
    pub model: String,
    pub weight: u32,
    pub first_byte: Option<Duration>,
    /// Whole-response timeout, the body included.
    pub timeout: Option<Duration>,
    /// Auth header lines of the target's own keys, used in turn.
    auth: Vec<String>,
    next_key: Cell<usize>,
    /// Recent failures (within the cooldown window), oldest first.
    failures: RefCell<VecDeque<Instant>>,
    /// Skipped until then.
    cooling_until: Cell<Option<Instant>>,
}

impl std::fmt::Debug for Target {
    // Its auth lines hold keys: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("provider", &self.provider.name)
            .field("model", &self.model)
            .field("keys", &self.auth.len())
            .finish_non_exhaustive()
    }
}

impl Target {
    fn new(t: &TargetConfig, providers: &Providers) -> Option<Rc<Target>> {
        let provider = providers.get(&t.provider)?.clone();
        Some(Rc::new(Target {
            auth: t
                .keys
                .iter()
                .map(|k| provider.unified_auth_with(k.expose()))
                .collect(),
            next_key: Cell::new(0),
            provider,
            model: t.model.clone(),
            weight: t.weight,
            first_byte: t.first_byte,
            timeout: t.timeout,
            failures: RefCell::new(VecDeque::new()),
            cooling_until: Cell::new(None),
        }))
    }

    /// The auth lines of its next key, when it has keys of its own (each
    /// call takes the next, round robin).
    pub fn next_auth(&self) -> Option<&str> {
        if self.auth.is_empty() {
            return None;
        }
        let i = self.next_key.get();
        self.next_key.set((i + 1) % self.auth.len());
        Some(&self.auth[i])
    }

    /// Whether it carries keys of its own.
    pub fn has_keys(&self) -> bool {
        !self.auth.is_empty()
    }

    /// When it stops cooling, if it is cooling at `now`.
    pub fn cooling(&self, now: Instant) -> Option<Instant> {
        self.cooling_until.get().filter(|u| *u > now)
    }
}

/// A list of targets and when it applies.
#[derive(Debug)]
struct List {
    when: Vec<(String, String)>,
    targets: Vec<Rc<Target>>,
}

/// One route as this shard runs it.
#[derive(Debug)]
pub struct Route {
    pub name: Rc<str>,
    strategy: Strategy,
    /// Variants first, the default list last (its `when` is empty).
    lists: Vec<List>,
    pub retry: Retry,
    pub fallback_on: FallbackOn,
    pub cooldown: Option<Cooldown>,
}

/// The targets one request tries, in order.
pub type Order = SmallVec<[Rc<Target>; 4]>;

impl Route {
    /// The order this request tries the targets in: the first list whose
    /// conditions its metadata meets; weighted, one drawn by weight first.
    pub fn order(&self, field: &dyn Fn(&str) -> Option<String>, below: &Below<'_>) -> Order {
        let list = self
            .lists
            .iter()
            .find(|l| {
                l.when
                    .iter()
                    .all(|(k, v)| field(k).as_deref() == Some(v.as_str()))
            })
            .unwrap_or_else(|| self.lists.last().expect("a route has targets"));
        let mut order: Order = list.targets.iter().cloned().collect();
        if self.strategy == Strategy::Weighted {
            // Weighted draws without replacement: each next target by weight
            // among those left.
            let mut rest = order;
            order = Order::new();
            while !rest.is_empty() {
                let total: u64 = rest.iter().map(|t| u64::from(t.weight)).sum();
                let pick = if total == 0 {
                    0
                } else {
                    let mut x = below(total);
                    rest.iter()
                        .position(|t| {
                            let w = u64::from(t.weight);
                            if x < w {
                                true
                            } else {
                                x -= w;
                                false
                            }
                        })
                        .unwrap_or(0)
                };
                order.push(rest.remove(pick));
            }
        }
        order
    }

    /// Whether some of its target lists depend on metadata.
    pub fn has_variants(&self) -> bool {
        self.lists.len() > 1
    }

    /// Records a failure of `target` at `now`: it cools down once it has
    /// failed `failures` times within the window.
    pub fn failed(&self, target: &Target, now: Instant) {
        let Some(c) = self.cooldown else { return };
        let mut f = target.failures.borrow_mut();
        while f.front().is_some_and(|t| now.duration_since(*t) > c.window) {
            f.pop_front();
        }
        f.push_back(now);
        if f.len() >= c.failures as usize {
            f.clear();
            target.cooling_until.set(Some(now + c.duration));
        }
    }

    /// A success clears its failures.
    pub fn succeeded(&self, target: &Target) {
        if self.cooldown.is_some() {
            target.failures.borrow_mut().clear();
        }
    }
}

/// Every route by name, as one shard runs them.
pub type Routes = FastMap<String, Rc<Route>>;

/// Builds the shard's routes over its providers (the config was checked:
/// every target names a provider).
pub fn build(config: &Config, providers: &Providers) -> Routes {
    config
        .routes
        .iter()
        .map(|r| {
            let list = |when: &[(String, String)], targets: &[TargetConfig]| List {
                when: when.to_vec(),
                targets: targets
                    .iter()
                    .filter_map(|t| Target::new(t, providers))
                    .collect(),
            };
            let mut lists: Vec<List> = r
                .variants
                .iter()
                .map(|v| list(&v.when, &v.targets))
                .collect();
            lists.push(list(&[], &r.targets));
            lists.retain(|l| !l.targets.is_empty());
            let route = Route {
                name: Rc::from(r.name.as_str()),
                strategy: r.strategy,
                lists,
                retry: r.retry,
                fallback_on: r.fallback_on.clone(),
                cooldown: r.cooldown,
            };
            (r.name.clone(), Rc::new(route))
        })
        .filter(|(_, r)| !r.lists.is_empty())
        .collect()
}

/// A uniform random number in `0..n` (`n > 0`): the shard's own draw
/// (weights and jitter need spread, not secrecy).
pub type Below<'a> = dyn Fn(u64) -> u64 + 'a;

/// Waits grow at most to `base * 2^MAX_DOUBLINGS` before `retry.max` caps them.
const MAX_DOUBLINGS: u32 = 16;

/// The wait before try `tried + 1` of one target (`tried` tries failed so
/// far, at least 1), at most `retry.max`; jittered into its upper half.
pub fn backoff(retry: &Retry, tried: u32, below: &Below<'_>) -> Duration {
    let n = tried.max(1);
    let base = retry.base;
    let d = match retry.backoff {
        Backoff::Constant => base,
        Backoff::Linear => base.saturating_mul(n),
        Backoff::Exponential => base.saturating_mul(1u32 << (n - 1).min(MAX_DOUBLINGS)),
    }
    .min(retry.max);
    if retry.jitter && !d.is_zero() {
        let half = d / 2;
        half + Duration::from_nanos(below(half.as_nanos().max(1) as u64))
    } else {
        d
    }
}

/// Whether a metadata field matches, for [`Route::order`].
pub fn metadata_field(metadata: Option<&Metadata>, name: &str) -> Option<String> {
    metadata?
        .0
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_text().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqid::IdGen;

    /// A seeded draw, as a shard has one.
    fn draw(seed: usize) -> impl Fn(u64) -> u64 {
        let g = RefCell::new(IdGen::new(seed));
        move |n| g.borrow_mut().below(n)
    }

    fn routes(toml: &str) -> Routes {
        let c = Config::from_toml_with_env(toml, &|_| None).unwrap();
        build(&c, &crate::providers::build(&c))
    }

    const TWO: &str = "[routes.chat]\nstrategy = \"weighted\"\ntargets = [{ provider = \"mock\", model = \"a\", weight = 3 }, { provider = \"mock\", model = \"b\", weight = 1 }]\n";

    #[test]
    fn weighted_draws_follow_the_weights_and_keep_every_target() {
        let r = routes(TWO);
        let chat = &r["chat"];
        let draw = draw(42);
        let mut first_a = 0;
        for _ in 0..4000 {
            let o = chat.order(&|_| None, &draw);
            assert_eq!(o.len(), 2);
            if o[0].model == "a" {
                first_a += 1;
            }
        }
        assert!((2800..3200).contains(&first_a), "{first_a} of 4000");
    }

    #[test]
    fn a_variant_applies_when_its_metadata_matches() {
        let r = routes(
            "[routes.chat]\ntargets = [{ provider = \"mock\", model = \"big\" }]\n[[routes.chat.variants]]\nwhen = { \"metadata.tier\" = \"free\" }\ntargets = [{ provider = \"mock\", model = \"small\" }]\n",
        );
        let draw = draw(1);
        let free = |k: &str| (k == "tier").then(|| "free".to_string());
        assert_eq!(r["chat"].order(&free, &draw)[0].model, "small");
        assert_eq!(r["chat"].order(&|_| None, &draw)[0].model, "big");
    }

    #[test]
    fn a_target_cools_after_its_failures_and_returns_after_the_cooldown() {
        let r = routes(
            "[routes.chat]\ntargets = [{ provider = \"mock\", model = \"a\" }]\ncooldown = { failures = 2, window = \"10s\", duration = \"5s\" }\n",
        );
        let chat = &r["chat"];
        let t = chat.order(&|_| None, &draw(1))[0].clone();
        let now = Instant::now();
        chat.failed(&t, now);
        assert!(t.cooling(now).is_none());
        chat.failed(&t, now + Duration::from_secs(1));
        let until = t.cooling(now + Duration::from_secs(1)).unwrap();
        assert_eq!(until, now + Duration::from_secs(6));
        assert!(t.cooling(now + Duration::from_secs(7)).is_none());
    }

    #[test]
    fn backoff_grows_as_configured_and_stays_under_its_max() {
        let mut r = Retry {
            attempts: 5,
            backoff: Backoff::Exponential,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
            jitter: false,
        };
        let d = draw(7);
        let waits: Vec<u128> = (1..=4).map(|n| backoff(&r, n, &d).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
        r.backoff = Backoff::Linear;
        assert_eq!(backoff(&r, 3, &d).as_millis(), 300);
        r.backoff = Backoff::Constant;
        r.jitter = true;
        for _ in 0..100 {
            let w = backoff(&r, 3, &d).as_millis();
            assert!((50..=100).contains(&w), "{w}");
        }
    }
}
