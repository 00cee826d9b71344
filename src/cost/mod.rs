//! What a request cost: the price table (shipped in `prices.toml`, with its
//! sources and dates, overridden and extended by `[prices."provider/model"]`)
//! and the arithmetic from token usage to US dollars.
//!
//! An unknown price is unknown (`None`), never zero and never a refusal.
//! Cached input is priced at `cached_input` (else as input), tokens written to
//! a provider's prompt cache at `cache_write` (else as input). A request's
//! `custom-cost` header replaces the prices it names.

use crate::config::PriceConfig;
use crate::controls::CustomCost;
use crate::fasthash::FastMap;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The shipped table's text.
pub const SHIPPED: &str = include_str!("prices.toml");

/// Where a price came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Shipped,
    Config,
}

/// One model's prices, USD per million tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub context_window: Option<u64>,
    pub origin: Origin,
}

/// The shipped table, parsed once: its version and prices by "provider/model".
pub fn shipped() -> &'static (String, BTreeMap<String, Price>) {
    static TABLE: OnceLock<(String, BTreeMap<String, Price>)> = OnceLock::new();
    TABLE.get_or_init(|| parse_shipped(SHIPPED).unwrap_or_else(|e| panic!("prices.toml: {e}")))
}

fn parse_shipped(text: &str) -> Result<(String, BTreeMap<String, Price>), String> {
    let root: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let version = root
        .get("version")
        .and_then(|v| v.as_str())
        .ok_or("no version")?
        .to_string();
    let models = root
        .get("models")
        .and_then(|m| m.as_table())
        .ok_or("no [models]")?;
    let mut out = BTreeMap::new();
    for (name, v) in models {
        let t = v.as_table().ok_or_else(|| format!("{name}: not a table"))?;
        let num = |k: &str| -> Option<f64> {
            t.get(k)
                .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        };
        let price = Price {
            input: num("input").ok_or_else(|| format!("{name}: no input"))?,
            output: num("output").ok_or_else(|| format!("{name}: no output"))?,
            cached_input: num("cached_input"),
            cache_write: num("cache_write"),
            context_window: t
                .get("context_window")
                .and_then(|v| v.as_integer())
                .map(|i| i as u64),
            origin: Origin::Shipped,
        };
        if name.split_once('/').is_none() {
            return Err(format!("{name}: not provider/model"));
        }
        out.insert(name.clone(), price);
    }
    Ok((version, out))
}

/// The prices a shard uses: by provider, then model (looked up without allocating).
#[derive(Debug, Default)]
pub struct PriceTable {
    by_provider: FastMap<Box<str>, FastMap<Box<str>, Price>>,
}

impl PriceTable {
    /// The shipped table with the config's prices over it.
    pub fn build(overrides: &BTreeMap<String, PriceConfig>) -> PriceTable {
        let mut t = PriceTable::default();
        for (name, p) in all(overrides) {
            if let Some((provider, model)) = name.split_once('/') {
                t.by_provider
                    .entry(provider.into())
                    .or_default()
                    .insert(model.into(), p);
            }
        }
        t
    }

    /// The price of `provider/model`; a dated name (`gpt-4o-2024-08-06`,
    /// `claude-3-5-haiku-20241022`) falls back to its undated one.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Price> {
        let models = self.by_provider.get(provider)?;
        models
            .get(model)
            .or_else(|| undated(model).and_then(|m| models.get(m)))
    }
}

/// Every price, shipped and configured, by "provider/model" (what `aigw prices` prints).
pub fn all(overrides: &BTreeMap<String, PriceConfig>) -> BTreeMap<String, Price> {
    let mut out = shipped().1.clone();
    for (name, p) in overrides {
        let shipped = out.get(name).cloned();
        out.insert(
            name.clone(),
            Price {
                input: p.input,
                output: p.output,
                cached_input: p.cached_input,
                cache_write: p.cache_write,
                context_window: p.context_window.or(shipped.and_then(|s| s.context_window)),
                origin: Origin::Config,
            },
        );
    }
    out
}

/// `model` without a trailing `-YYYY-MM-DD` or `-YYYYMMDD`.
fn undated(model: &str) -> Option<&str> {
    let b = model.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() > 11 && b[b.len() - 11] == b'-' {
        let d = &b[b.len() - 10..];
        if digits(&d[..4]) && d[4] == b'-' && digits(&d[5..7]) && d[7] == b'-' && digits(&d[8..]) {
            return Some(&model[..model.len() - 11]);
        }
    }
    if b.len() > 9 && b[b.len() - 9] == b'-' && digits(&b[b.len() - 8..]) {
        return Some(&model[..model.len() - 9]);
    }
    None
}

/// `custom`, never below the table's prices where the table has them: what a
/// request under a budget is charged (a client cannot price its own spend
/// down; it can price up, or price what the table does not know).
pub fn floored(custom: &CustomCost, price: Option<&Price>) -> CustomCost {
    let Some(p) = price else { return *custom };
    let at_least = |c: Option<f64>, table: Option<f64>| match (c, table) {
        (Some(c), Some(t)) => Some(c.max(t / 1e6)),
        (c, _) => c,
    };
    CustomCost {
        per_token_in: at_least(custom.per_token_in, Some(p.input)),
        per_token_out: at_least(custom.per_token_out, Some(p.output)),
        per_cache_read_token: at_least(custom.per_cache_read_token, p.cached_input),
        per_cache_write_token: at_least(custom.per_cache_write_token, p.cache_write),
    }
}

/// A request's token counts as the cost arithmetic needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    /// Cached input (cache reads).
    pub cached: u64,
    /// Input written to the prompt cache.
    pub cache_write: u64,
    /// `input` already includes `cached` and `cache_write` (OpenAI's way).
    pub input_includes_cached: bool,
}

impl Tokens {
    /// Every input token, however billed.
    pub fn all_input(&self) -> u64 {
        if self.input_includes_cached {
            self.input
        } else {
            self.input + self.cached + self.cache_write
        }
    }
}

/// USD for `t` at `price`, with `custom`'s per-token prices over it. `None`
/// when a count that is not zero has no price.
pub fn cost(price: Option<&Price>, custom: Option<&CustomCost>, t: &Tokens) -> Option<f64> {
    let per_m = |v: f64| v / 1e6;
    let input = custom
        .and_then(|c| c.per_token_in)
        .or(price.map(|p| per_m(p.input)));
    let output = custom
        .and_then(|c| c.per_token_out)
        .or(price.map(|p| per_m(p.output)));
    let cached = custom
        .and_then(|c| c.per_cache_read_token)
        .or(price.and_then(|p| p.cached_input.map(per_m)))
        .or(input);
    let written = custom
        .and_then(|c| c.per_cache_write_token)
        .or(price.and_then(|p| p.cache_write.map(per_m)))
        .or(input);
    let uncached = if t.input_includes_cached {
        t.input.saturating_sub(t.cached + t.cache_write)
    } else {
        t.input
    };
    let mut usd = 0.0;
    for (n, rate) in [
        (uncached, input),
        (t.output, output),
        (t.cached, cached),
        (t.cache_write, written),
    ] {
        if n > 0 {
            usd += n as f64 * rate?;
        }
    }
    Some(to_picos(usd))
}

/// Rounded to a pico-dollar: the float noise of the sum goes (22 tokens in
/// at $1 and 9 out at $2 per million were $0.000039999999999999996 in the
/// log, not $0.00004).
fn to_picos(usd: f64) -> f64 {
    if usd.abs() < 1e6 {
        (usd * 1e12).round() / 1e12
    } else {
        usd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64, cached: Option<f64>, write: Option<f64>) -> Price {
        Price {
            input,
            output,
            cached_input: cached,
            cache_write: write,
            context_window: Some(1000),
            origin: Origin::Shipped,
        }
    }

    #[test]
    fn the_shipped_table_parses_with_a_price_for_every_builtin_provider_it_lists() {
        let (version, models) = shipped();
        assert!(!version.is_empty());
        assert!(models.len() > 50, "{}", models.len());
        for (name, p) in models {
            assert!(p.input >= 0.0 && p.output >= 0.0, "{name}");
            assert!(p.context_window.is_some_and(|w| w > 0), "{name}");
        }
        for provider in ["openai", "anthropic", "mock"] {
            assert!(
                models
                    .keys()
                    .any(|k| k.starts_with(&format!("{provider}/"))),
                "{provider}"
            );
        }
    }

    #[test]
    fn openai_counts_cached_inside_input_anthropic_apart() {
        let p = price(2.0, 8.0, Some(0.5), Some(2.5));
        let openai = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            cached: 400_000,
            cache_write: 0,
            input_includes_cached: true,
        };
        // 600k at 2, 400k at 0.5, 1M at 8.
        assert!((cost(Some(&p), None, &openai).unwrap() - (1.2 + 0.2 + 8.0)).abs() < 1e-9);
        let anthropic = Tokens {
            input: 1_000_000,
            output: 0,
            cached: 1_000_000,
            cache_write: 1_000_000,
            input_includes_cached: false,
        };
        assert!((cost(Some(&p), None, &anthropic).unwrap() - (2.0 + 0.5 + 2.5)).abs() < 1e-9);
        assert_eq!(anthropic.all_input(), 3_000_000);
    }

    #[test]
    fn a_cost_reads_without_float_noise() {
        // 22 × $1 + 9 × $2 per million: 0.000039999999999999996 summed.
        let p = price(1.0, 2.0, None, None);
        let t = Tokens {
            input: 22,
            output: 9,
            ..Tokens::default()
        };
        assert_eq!(cost(Some(&p), None, &t).unwrap().to_string(), "0.00004");
        let p = price(0.15, 0.6, None, None);
        let t = Tokens {
            input: 1,
            output: 4,
            ..Tokens::default()
        };
        assert_eq!(cost(Some(&p), None, &t).unwrap().to_string(), "0.00000255");
    }

    #[test]
    fn unknown_prices_are_unknown_and_custom_prices_win() {
        let t = Tokens {
            input: 10,
            output: 5,
            ..Tokens::default()
        };
        assert_eq!(cost(None, None, &t), None);
        let custom = CustomCost {
            per_token_in: Some(0.01),
            per_token_out: Some(0.1),
            ..CustomCost::default()
        };
        assert!((cost(None, Some(&custom), &t).unwrap() - 0.6).abs() < 1e-12);
        let half = CustomCost {
            per_token_out: Some(0.0),
            ..CustomCost::default()
        };
        let p = price(1e6, 1e6, None, None);
        assert_eq!(cost(Some(&p), Some(&half), &t), Some(10.0));
        assert_eq!(cost(None, Some(&half), &t), None, "input has no price");
        assert_eq!(cost(None, None, &Tokens::default()), Some(0.0));
    }

    #[test]
    fn a_floored_custom_price_never_undercuts_the_table() {
        let p = price(2.0, 8.0, None, None);
        let cheap = CustomCost {
            per_token_in: Some(0.0),
            per_token_out: Some(1.0),
            ..CustomCost::default()
        };
        let f = floored(&cheap, Some(&p));
        assert_eq!(f.per_token_in, Some(2.0 / 1e6));
        assert_eq!(f.per_token_out, Some(1.0), "a higher price stands");
        assert_eq!(floored(&cheap, None), cheap);
    }

    #[test]
    fn config_prices_override_and_dated_names_fall_back() {
        let mut o = BTreeMap::new();
        o.insert(
            "openai/gpt-4o-mini".to_string(),
            PriceConfig {
                input: 9.0,
                output: 9.0,
                cached_input: None,
                cache_write: None,
                context_window: None,
            },
        );
        o.insert(
            "acme/m.1".to_string(),
            PriceConfig {
                input: 1.0,
                output: 2.0,
                cached_input: None,
                cache_write: None,
                context_window: Some(5),
            },
        );
        let t = PriceTable::build(&o);
        let p = t.get("openai", "gpt-4o-mini-2031-01-01").unwrap();
        assert_eq!((p.input, p.origin), (9.0, Origin::Config));
        assert!(p.context_window.is_some(), "kept from the shipped table");
        assert_eq!(t.get("acme", "m.1").unwrap().output, 2.0);
        assert!(t.get("acme", "other").is_none());
        assert_eq!(
            undated("claude-3-5-haiku-20241022"),
            Some("claude-3-5-haiku")
        );
        assert_eq!(undated("gpt-4o"), None);
    }
}
