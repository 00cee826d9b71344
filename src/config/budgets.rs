//! `[[budgets]]`: dollars a scope may spend per window.
//!
//! Owns reading the rules into [`BudgetRule`]s: per what (the gateway, each
//! key, each metadata value, each provider), how many US dollars, over which
//! window (a UTC calendar day or month, or a rolling duration), when to warn.

use super::auth::pattern_problem;
use super::limits::{Scope, read_scope, unique_name};
use super::read::Walker;
use std::time::Duration;

/// Largest budget (spend is counted in micro-dollars, 40 bits a window).
pub const MAX_USD: f64 = 1_000_000.0;

/// The window a budget counts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetWindow {
    /// The UTC calendar day.
    Daily,
    /// The UTC calendar month.
    Monthly,
    /// The last `Duration`, counted in parts of it (`budget::Ring`): a
    /// charge counts until every part it may have fallen in has left.
    Rolling(Duration),
}

impl BudgetWindow {
    pub fn describe(&self) -> String {
        match self {
            BudgetWindow::Daily => "daily".into(),
            BudgetWindow::Monthly => "monthly".into(),
            BudgetWindow::Rolling(d) => format!("rolling {}s", d.as_secs()),
        }
    }
}

/// One `[[budgets]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetRule {
    /// Named in the 429's message and in `aigw usage` (default `budgets[i]`).
    pub name: String,
    pub scope: Scope,
    pub usd: f64,
    pub window: BudgetWindow,
    /// Warn (log line, metric, `/usage` flag) once spend passes this share.
    pub alert_at: Option<f64>,
    /// `provider/model` patterns the budget applies to; empty: every request.
    pub models: Vec<String>,
    /// The gateway keys (ids) whose requests it applies to; empty: every
    /// request. A key's own budget: `scope = "key"` and its id here.
    pub keys: Vec<String>,
    /// Output tokens a request without `max_tokens` is assumed to use at admission.
    pub default_max_tokens: u64,
}

pub(super) fn read_budgets(w: &mut Walker, root: &toml::Table) -> Vec<BudgetRule> {
    let Some(toml::Value::Array(items)) = root.get("budgets") else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(t) = item.as_table() else { continue };
        let at = format!("budgets[{i}]");
        let p = |k: &str| format!("{at}.{k}");
        let name = w.string(Some(t), &p("name")).unwrap_or_else(|| at.clone());
        unique_name(w, &mut names, &name, &at);
        let scope = read_scope(w, t, &p("scope"), true);
        let usd = match t.get("usd") {
            Some(toml::Value::Float(f)) => Some(*f),
            Some(toml::Value::Integer(n)) => Some(*n as f64),
            Some(other) => {
                w.err(
                    &p("usd"),
                    format!("expected US dollars, found {}", other.type_str()),
                );
                None
            }
            None => {
                w.err(
                    &p("usd"),
                    "missing: the dollars per window, e.g. usd = 25.0".into(),
                );
                None
            }
        };
        let usd = usd.filter(|u| {
            let ok = u.is_finite() && *u > 0.0 && *u <= MAX_USD;
            if !ok {
                w.err(
                    &p("usd"),
                    format!("{u} is out of range; use more than 0 and at most {MAX_USD}"),
                );
            }
            ok
        });
        let window = match w.string(Some(t), &p("window")).as_deref() {
            Some("daily") => Some(BudgetWindow::Daily),
            Some("monthly") => Some(BudgetWindow::Monthly),
            Some(other) => match super::parse_duration(other) {
                Ok(d) if d >= Duration::from_secs(60) && d <= Duration::from_secs(366 * 86_400) => {
                    Some(BudgetWindow::Rolling(d))
                }
                _ => {
                    w.err(&p("window"), format!("`{other}` is not a window; use \"daily\", \"monthly\" (UTC calendar) or a duration from \"1m\" to \"366d\" (rolling)"));
                    None
                }
            },
            None => {
                if !t.contains_key("window") {
                    w.err(
                        &p("window"),
                        "missing: use \"daily\", \"monthly\" or a duration like \"7d\"".into(),
                    );
                }
                None
            }
        };
        let alert_at = w.fraction(Some(t), &p("alert_at"));
        let models = w.strings(Some(t), &p("models")).unwrap_or_default();
        for (j, m) in models.iter().enumerate() {
            if let Some(why) = pattern_problem(m) {
                w.err(&format!("{}[{j}]", p("models")), why);
            }
        }
        let keys = super::limits::read_rule_keys(w, t, &p("keys"));
        let default_max_tokens = w
            .uint(Some(t), &p("default_max_tokens"), 1, u64::from(u32::MAX))
            .unwrap_or(4096);
        if let (Some(scope), Some(usd), Some(window)) = (scope, usd, window) {
            rules.push(BudgetRule {
                name,
                scope,
                usd,
                window,
                alert_at,
                models,
                keys,
                default_max_tokens,
            });
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::errors;
    use super::*;

    #[test]
    fn budgets_read_with_their_windows() {
        let c = Config::from_toml(
            "[[budgets]]\nscope = \"key\"\nusd = 25.0\nwindow = \"daily\"\nalert_at = 0.8\n\
             [[budgets]]\nname = \"team\"\nscope = \"metadata.team\"\nusd = 100\nwindow = \"monthly\"\n\
             [[budgets]]\nscope = \"provider\"\nusd = 5.5\nwindow = \"7d\"\n",
        )
        .unwrap();
        let b = &c.budgets;
        assert_eq!(
            (b[0].scope.clone(), b[0].usd, b[0].window),
            (Scope::Key, 25.0, BudgetWindow::Daily)
        );
        assert_eq!(b[0].alert_at, Some(0.8));
        assert_eq!(b[1].name, "team");
        assert_eq!(b[1].window, BudgetWindow::Monthly);
        assert_eq!(
            b[2].window,
            BudgetWindow::Rolling(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(b[2].scope, Scope::Provider);
    }

    #[test]
    fn bad_budgets_name_their_path() {
        let e = errors("[[budgets]]\nscope = \"key\"\nusd = -1\nwindow = \"daily\"\n").join("\n");
        assert!(e.contains("budgets[0].usd"), "{e}");
        let e = errors("[[budgets]]\nscope = \"key\"\nusd = 1\nwindow = \"weekly\"\n").join("\n");
        assert!(
            e.contains("budgets[0].window") && e.contains("daily"),
            "{e}"
        );
        let e = errors("[[budgets]]\nscope = \"team\"\nusd = 1\nwindow = \"daily\"\n").join("\n");
        assert!(e.contains("budgets[0].scope"), "{e}");
        let e = errors("[[budgets]]\nscope = \"key\"\nwindow = \"daily\"\n").join("\n");
        assert!(e.contains("budgets[0].usd: missing"), "{e}");
        let e = errors("[[budgets]]\nscope = \"key\"\nusd = 1\nwindow = \"daily\"\nalert_at = 2\n")
            .join("\n");
        assert!(e.contains("budgets[0].alert_at"), "{e}");
        let e = errors(
            "[[budgets]]\nname = \"x\"\nscope = \"key\"\nusd = 1\nwindow = \"daily\"\n[[budgets]]\nname = \"x\"\nscope = \"key\"\nusd = 2\nwindow = \"daily\"\n",
        )
        .join("\n");
        assert!(
            e.contains("budgets[1].name") && e.contains("budgets[0] too"),
            "{e}"
        );
        let e = errors(
            "[[budgets]]\nscope = \"key\"\nusd = 1\nwindow = \"daily\"\nkeys = [\"ann\", \"no spaces\"]\n",
        )
        .join("\n");
        assert!(e.contains("budgets[0].keys[1]"), "{e}");
        let e = errors(
            "[[rate_limits]]\nscope = \"key\"\ncount = \"requests\"\nlimit = 1\nwindow = \"1m\"\nkeys = \"ann\"\n",
        )
        .join("\n");
        assert!(e.contains("rate_limits[0].keys"), "{e}");
    }
}
