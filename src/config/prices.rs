//! `[prices."provider/model"]`: prices that override or extend the table
//! shipped with aigw (`src/cost/prices.toml`, read by `cost`). USD per
//! million tokens, and the model's context window.

use super::read::Walker;
use std::collections::BTreeMap;

/// One model's prices (USD per million tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct PriceConfig {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub context_window: Option<u64>,
}

/// The most a price may be, USD per million tokens ($1 a token, over a
/// thousand times the dearest model's): past it, a price is a typo, and a
/// cost could pass what a number can hold (a budget would not see it).
pub const MAX_PER_MILLION: f64 = 1e6;

/// A price: a non-negative number up to [`MAX_PER_MILLION`].
fn price(w: &mut Walker, t: &toml::Table, path: &str) -> Option<f64> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let n = match t.get(leaf)? {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => {
            w.err(
                path,
                format!(
                    "expected USD per million tokens, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    if n.is_finite() && (0.0..=MAX_PER_MILLION).contains(&n) {
        Some(n)
    } else {
        w.err(
            path,
            format!("{n} is not a price; use a number from 0 to {MAX_PER_MILLION} (USD per million tokens)"),
        );
        None
    }
}

pub(super) fn read_prices(w: &mut Walker, root: &toml::Table) -> BTreeMap<String, PriceConfig> {
    let mut out = BTreeMap::new();
    let Some(all) = w.table(root, "prices") else {
        return out;
    };
    for (name, v) in all {
        let Some(t) = v.as_table() else { continue };
        // Keys may hold dots ("openai/gpt-4.1"): quote them in paths.
        let p = |f: &str| format!("prices.\"{name}\".{f}");
        if super::auth::pattern_problem(name).is_some() || name.contains('*') {
            w.err(
                &format!("prices.\"{name}\""),
                "name a model as \"provider/model\", e.g. [prices.\"openai/gpt-4o-mini\"]".into(),
            );
            continue;
        }
        let input = price(w, t, &p("input"));
        let output = price(w, t, &p("output"));
        for (f, v) in [("input", &input), ("output", &output)] {
            if v.is_none() && !t.contains_key(f) {
                w.err(&p(f), "missing: USD per million tokens".into());
            }
        }
        let cached_input = price(w, t, &p("cached_input"));
        let cache_write = price(w, t, &p("cache_write"));
        let context_window = w.uint(Some(t), &p("context_window"), 1, 1 << 40);
        if let (Some(input), Some(output)) = (input, output) {
            out.insert(
                name.clone(),
                PriceConfig {
                    input,
                    output,
                    cached_input,
                    cache_write,
                    context_window,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;

    #[test]
    fn prices_read_with_dotted_model_names() {
        let c = Config::from_toml(
            "[prices.\"openai/gpt-4.1\"]\ninput = 2\noutput = 8.0\ncached_input = 0.5\ncontext_window = 1047576\n",
        )
        .unwrap();
        let p = &c.prices["openai/gpt-4.1"];
        assert_eq!((p.input, p.output, p.cached_input), (2.0, 8.0, Some(0.5)));
        assert_eq!(p.context_window, Some(1_047_576));
        let e = errors("[prices.\"openai/x\"]\ninput = -1\noutput = 1\n").join("\n");
        assert!(e.contains("prices.\"openai/x\".input"), "{e}");
        let e = errors("[prices.\"openai/x\"]\ninput = 1\noutput = 1e308\n").join("\n");
        assert!(
            e.contains("prices.\"openai/x\".output") && e.contains("1000000"),
            "{e}"
        );
        let e = errors("[prices.\"openai/x\"]\noutput = 1\n").join("\n");
        assert!(e.contains("input: missing"), "{e}");
        let e = errors("[prices.gpt]\ninput = 1\noutput = 1\n").join("\n");
        assert!(e.contains("provider/model"), "{e}");
        let e = errors("[prices.\"openai/x\"]\ninput = 1\noutput = 1\ninptu = 2\n").join("\n");
        assert!(e.contains("unknown key"), "{e}");
    }
}
