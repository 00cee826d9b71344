//! Configuration: the TOML file and the built-in defaults, parsed once.
//!
//! Owns the raw-to-typed step: every key is checked against [`KEYS`] (unknown keys
//! are errors), every value becomes a typed field (`Duration`, byte counts,
//! `SocketAddr`, [`BaseUrl`], [`Secret`]) and every problem is reported with its key
//! path and what to do. After [`Config::from_toml`] returns, a `Config` is valid.
//! Not on the request path: shards get an `Arc<Config>` at start. A leaf: nothing
//! here imports from the rest of the crate.
//!
//! # Layout
//!
//! - this file: [`Config`], and [`Config::from_toml_with_env`], which runs each
//!   section's reader in file order and builds a `Config` only if none failed.
//! - `schema`: the key table [`KEYS`]: the unknown-key check and `print-config`.
//! - `read`: the walker that turns raw TOML values into typed ones, the unit
//!   parsers, [`Secret`], and [`ConfigError`]s at key paths.
//! - `server`: `[server]`, `[admin]`, `[limits]`, `[timeouts]`.
//! - `providers`: the built-in catalog and `[providers.*]`.
//! - `logs`: `[logs]`, the request log store.
//!
//! A new section (cache, API keys, rate limits, budgets, routes, prices) is one
//! more file: its typed struct and a `read_*(w, root)` reader, its rows in
//! [`KEYS`], one field in [`Config`] and one line in `from_toml_with_env`.

pub mod auth;
pub mod budgets;
pub mod cache;
pub mod limits;
mod logs;
pub mod prices;
mod providers;
mod read;
pub mod routes;
mod schema;
mod server;
pub mod show;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use auth::{AuthConfig, KeyConfig};
pub use budgets::{BudgetRule, BudgetWindow};
pub use cache::CacheConfig;
pub use limits::RateRule;
pub use logs::LogsConfig;
pub use prices::PriceConfig;
pub use providers::{BaseUrl, ProviderConfig, ProviderKind, Scheme, url_model_plain};
pub use read::{ConfigError, ConfigErrors, Secret, parse_bytes, parse_duration};
pub use routes::RouteConfig;
pub use schema::{KEYS, KeySpec};
pub use server::{Limits, ServerConfig, Timeouts};

use read::Walker;

#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin_socket: PathBuf,
    /// `/metrics` and `/healthz` over TCP, when set.
    pub admin_listen: Option<std::net::SocketAddr>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub logs: LogsConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    /// Gateway keys defined in the file, by id.
    pub keys: BTreeMap<String, KeyConfig>,
    pub rate_limits: Vec<RateRule>,
    pub budgets: Vec<BudgetRule>,
    /// Price overrides by "provider/model".
    pub prices: BTreeMap<String, PriceConfig>,
    /// Model names that stand for provider targets, by name.
    pub routes: Vec<RouteConfig>,
}

/// The text of a config file; an error names the file.
fn read_file(path: &std::path::Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read config file {}: {e}", path.display()),
        }])
    })
}

impl Config {
    /// The built-in defaults, as `aigw serve` with no file runs them.
    ///
    /// Panics if a built-in provider's key variable holds a control character;
    /// [`Config::from_toml`] with `""` reports that as an error instead.
    pub fn defaults() -> Config {
        Config::from_toml("").expect("built-in defaults are valid")
    }

    /// The providers' key notes ([`ProviderConfig::key_note`]): what
    /// `check-config`, `serve` and a reload say of this config.
    pub fn key_notes(&self) -> impl Iterator<Item = String> + '_ {
        self.providers.values().filter_map(|p| p.key_note.clone())
    }

    /// Reads and parses a file; errors carry the file name.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        Config::from_toml(&read_file(path)?)
    }

    /// Reads a file as the operator's tools do (`aigw stats`, `logs`,
    /// `usage`, `key`, `cache`, `prices`): they need the admin socket, the
    /// data_dir, budgets and prices, never a provider key, so no key
    /// variable is read (an unset one, which `serve` refuses for a route,
    /// is no error here, and no secret enters the tool's process).
    pub fn load_for_tools(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        Config::from_toml_with_env(&read_file(path)?, &|_| Some("unread".to_string()))
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Config::from_toml_with_env(text, &|k| std::env::var(k).ok())
    }

    /// As [`Config::from_toml`], reading provider keys through `env` (tests pass a map).
    pub fn from_toml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
        let root: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![
                ConfigError {
                    path: String::new(),
                    message: format!("not valid TOML: {}", e.message().trim()),
                }
                .with_span(text, e.span()),
            ])
        })?;
        let mut w = Walker::default();
        schema::check_keys(&mut w, &root);
        // Each reader records its problems in `w` and returns a fallback for a bad
        // value, so one pass reports every problem, in file order.
        let server = server::read_server(&mut w, &root);
        let admin_socket = server::read_admin_socket(&mut w, &root, &server.data_dir);
        let admin_listen = server::read_admin_listen(&mut w, &root);
        let limits = server::read_limits(&mut w, &root);
        let timeouts = server::read_timeouts(&mut w, &root);
        let providers = providers::read_providers(&mut w, &root, env);
        let logs = logs::read_logs(&mut w, &root);
        let cache = cache::read_cache(&mut w, &root);
        let auth = auth::read_auth(&mut w, &root);
        let keys = auth::read_keys(&mut w, &root);
        let rate_limits = limits::read_rate_limits(&mut w, &root);
        let prices = prices::read_prices(&mut w, &root);
        let budgets = budgets::read_budgets(&mut w, &root);
        let routes = routes::read_routes(&mut w, &root, env);
        // A provider written in the file but in error has its own message.
        let written = |name: &str| {
            root.get("providers")
                .and_then(|p| p.as_table())
                .is_some_and(|p| p.contains_key(name))
        };
        for r in &routes {
            let lists = std::iter::once(("targets".to_string(), &r.targets)).chain(
                r.variants
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("variants[{i}].targets"), &v.targets)),
            );
            for (list, targets) in lists {
                for (i, t) in targets.iter().enumerate() {
                    let model_at = || format!("routes.{}.{list}[{i}].model", r.name);
                    if t.model.is_empty() {
                        w.err(&model_at(), "empty: name the provider's model".into());
                    } else if providers.get(&t.provider).is_some_and(|p| {
                        matches!(p.kind, ProviderKind::Google | ProviderKind::Azure)
                    }) && !url_model_plain(&t.model)
                    {
                        // Every request to it would be refused (400).
                        w.err(
                            &model_at(),
                            format!(
                                "`{}` goes into provider `{}`'s URL, so it may hold only letters, digits, '.', '-' and '_'",
                                t.model, t.provider
                            ),
                        );
                    }
                    if !providers.contains_key(&t.provider) && !written(&t.provider) {
                        w.err(
                            &format!("routes.{}.{list}[{i}].provider", r.name),
                            format!(
                                "`{}` is not a configured provider; add [providers.{}] or use one of: {}",
                                t.provider,
                                t.provider,
                                providers.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
            }
            if r.strategy == routes::Strategy::Weighted && r.targets.iter().all(|t| t.weight == 0) {
                w.err(
                    &format!("routes.{}.targets", r.name),
                    "a weighted route needs a target with weight above 0".into(),
                );
            }
        }
        w.finish()?;
        Ok(Config {
            server,
            admin_socket,
            admin_listen,
            limits,
            timeouts,
            providers,
            logs,
            cache,
            auth,
            keys,
            rate_limits,
            prices,
            budgets,
            routes,
        })
    }

    /// The running values, one `key = value` per setting, secrets as `****`
    /// (what `GET /config` shows). With `fingerprint`, a secret is shown as a
    /// hash of itself instead, so two configs can be compared without either
    /// key ever being printed.
    pub fn entries(&self, fingerprint: bool) -> BTreeMap<String, String> {
        let mut e = BTreeMap::new();
        let mut put = |k: String, v: String| {
            e.insert(k, v);
        };
        let s = &self.server;
        put("server.listen".into(), s.listen.to_string());
        put(
            "server.shards".into(),
            s.shards.map_or(0, |n| n.get()).to_string(),
        );
        put("server.data_dir".into(), s.data_dir.display().to_string());
        put(
            "server.drain_timeout".into(),
            show::duration(s.drain_timeout),
        );
        put(
            "server.spin_before_park".into(),
            show::duration(s.spin_before_park),
        );
        put(
            "admin.socket".into(),
            self.admin_socket.display().to_string(),
        );
        put(
            "admin.listen".into(),
            self.admin_listen.map_or("(off)".into(), |a| a.to_string()),
        );
        let l = &self.limits;
        put("limits.max_head_bytes".into(), l.max_head_bytes.to_string());
        put("limits.max_headers".into(), l.max_headers.to_string());
        put("limits.max_body_bytes".into(), l.max_body_bytes.to_string());
        put(
            "limits.max_response_head_bytes".into(),
            l.max_response_head_bytes.to_string(),
        );
        let t = &self.timeouts;
        for (k, v) in [
            ("head", t.head),
            ("body", t.body),
            ("idle", t.idle),
            ("client_write", t.client_write),
            ("upstream_connect", t.upstream_connect),
            ("first_byte", t.first_byte),
            ("stream_idle", t.stream_idle),
            ("upstream_idle", t.upstream_idle),
        ] {
            put(format!("timeouts.{k}"), show::duration(v));
        }
        for (name, p) in &self.providers {
            let k = |f: &str| format!("providers.{}.{f}", show::bare_or_quoted(name));
            put(k("kind"), p.kind.as_str().into());
            put(k("base_url"), p.base_url.to_string());
            let key = match (&p.api_key, fingerprint) {
                (None, _) => "(none)".to_string(),
                (Some(_), false) => "****".to_string(),
                (Some(s), true) => {
                    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(s.expose().as_bytes()))
                }
            };
            put(k("api_key"), key);
            if let Some(env) = &p.api_key_env {
                // A name that may be a key pasted in its place is withheld.
                let shown = if providers::conventional_variable(env) {
                    env.clone()
                } else {
                    "(withheld: not an upper-case name, it may be a key)".to_string()
                };
                put(k("api_key_env"), shown);
            }
            if !p.extra_roots.is_empty() {
                let roots: Vec<u8> = p.extra_roots.concat();
                put(
                    k("ca_file"),
                    format!(
                        "{} certificate(s), {:016x}",
                        p.extra_roots.len(),
                        xxhash_rust::xxh3::xxh3_64(&roots)
                    ),
                );
            }
        }
        let g = &self.logs;
        put("logs.enabled".into(), g.enabled.to_string());
        put("logs.payloads".into(), g.payloads.to_string());
        put("logs.payload_max".into(), g.payload_max.to_string());
        put("logs.sample".into(), g.sample.to_string());
        put("logs.max_rows".into(), g.max_rows.to_string());
        put("logs.max_age".into(), show::duration(g.max_age));
        put(
            "logs.flush_interval".into(),
            show::duration(g.flush_interval),
        );
        let c = &self.cache;
        put("cache.enabled".into(), c.enabled.to_string());
        put("cache.size".into(), c.size.to_string());
        put("cache.default_ttl".into(), show::duration(c.default_ttl));
        put("cache.max_entry".into(), c.max_entry.to_string());
        put("cache.shared".into(), c.shared.to_string());
        put(
            "cache.credential_headers".into(),
            show::strings(&c.credential_headers),
        );
        put("auth.required".into(), self.auth.required.to_string());
        for (id, k) in &self.keys {
            // Names are written as TOML keys: one with a dot or a line
            // break is quoted, so it cannot pass for another entry.
            let p = |f: &str| format!("keys.{}.{f}", show::bare_or_quoted(id));
            // A hash is not the secret, but only its start is shown.
            let hex: String = k.secret_sha256.iter().map(|b| format!("{b:02x}")).collect();
            let shown = if fingerprint {
                hex
            } else {
                format!("{}...", &hex[..8])
            };
            put(p("secret_sha256"), shown);
            put(p("models"), show::strings(&k.models));
            put(p("metadata"), show::metadata(&k.metadata));
        }
        // Rules as the file writes them (an inline table of every setting).
        for (i, r) in self.rate_limits.iter().enumerate() {
            put(format!("rate_limits[{i}]"), show::rate_rule(r));
        }
        for (i, b) in self.budgets.iter().enumerate() {
            put(format!("budgets[{i}]"), show::budget(b));
        }
        for r in &self.routes {
            put(
                format!("routes.{}", show::bare_or_quoted(&r.name)),
                show::route(r),
            );
        }
        for (name, p) in &self.prices {
            // As written in the file: USD per million tokens.
            let mut v = format!("{{ input = {}, output = {}", p.input, p.output);
            for (k, x) in [
                ("cached_input", p.cached_input),
                ("cache_write", p.cache_write),
            ] {
                if let Some(x) = x {
                    v.push_str(&format!(", {k} = {x}"));
                }
            }
            if let Some(n) = p.context_window {
                v.push_str(&format!(", context_window = {n}"));
            }
            v.push_str(" }");
            put(format!("prices.{}", show::string(name)), v);
        }
        e
    }

    /// The `print-config` text: every key, its default and meaning.
    pub fn describe_keys() -> String {
        let mut out = String::from("# key = default    # meaning\n");
        for k in KEYS {
            out.push_str(&format!(
                "{:<34} = {:<22} # {}\n",
                k.path, k.default, k.meaning
            ));
        }
        out.push_str("\n# built-in providers (name kind base_url key_env):\n");
        for (name, kind, url, env) in providers::BUILTIN_PROVIDERS {
            out.push_str(&format!(
                "#   {:<11} {:<9} {:<40} {}\n",
                name,
                kind.as_str(),
                url,
                env.unwrap_or("-")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every problem in `text` as the user reads it, with no provider key variables set.
    pub(super) fn errors(text: &str) -> Vec<String> {
        match Config::from_toml_with_env(text, &|_| None) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn entries_show_every_setting_and_no_secret() {
        let c = Config::from_toml_with_env(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-hidden\"\n\
             [prices.\"up/m\"]\ninput = 0.15\noutput = 0.6\ncached_input = 0.075\n",
            &|_| None,
        )
        .unwrap();
        let shown = c.entries(false);
        assert_eq!(
            shown["prices.\"up/m\""],
            "{ input = 0.15, output = 0.6, cached_input = 0.075 }"
        );
        assert_eq!(shown["providers.up.api_key"], "****");
        assert_eq!(shown["providers.up.base_url"], "http://127.0.0.1:9/v1");
        assert_eq!(shown["timeouts.first_byte"], "300s");
        let fp = c.entries(true);
        assert!(!fp.values().any(|v| v.contains("sk-hidden")));
        assert!(!shown.values().any(|v| v.contains("sk-hidden")));
        let other = Config::from_toml_with_env(
            "[providers.up]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-other\"\n",
            &|_| None,
        )
        .unwrap();
        assert_ne!(
            fp["providers.up.api_key"],
            other.entries(true)["providers.up.api_key"]
        );
    }

    #[test]
    fn a_key_variable_name_that_may_be_a_key_is_never_shown() {
        let c = Config::from_toml_with_env(
            "[providers.a]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"gsk_8fJx2LkQabc\"\n\
             [providers.b]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key_env = \"MY_KEY_2\"\n",
            &|_| None,
        )
        .unwrap();
        let shown = c.entries(false);
        assert!(
            !shown["providers.a.api_key_env"].contains("gsk_"),
            "{shown:?}"
        );
        assert_eq!(shown["providers.b.api_key_env"], "MY_KEY_2");
        let e = errors(
            "[routes.r]\ntargets = [{ provider = \"mock\", model = \"m\", api_keys_env = [\"AIzaSyD8abc\", \"UNSET_K\"] }]\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|m| !m.contains("AIzaSyD8abc")), "{e:?}");
        assert!(e[0].contains("is not set"), "{e:?}");
        assert!(e[1].contains("`UNSET_K` is not set"), "{e:?}");
    }

    #[test]
    fn rules_show_as_the_inline_tables_a_file_would_write() {
        let text = "[[rate_limits]]\nname = \"per-key\"\nscope = \"metadata.user\"\ncount = \"total_tokens\"\nlimit = 5000\nwindow = \"60s\"\ntechnique = \"fixed\"\nmodels = [\"openai/*\"]\n\
             [[rate_limits]]\nscope = \"gateway\"\ncount = \"concurrent\"\nlimit = 8\n\
             [[budgets]]\nscope = \"key\"\nusd = 25.5\nwindow = \"1h\"\nalert_at = 0.8\nkeys = [\"alice\"]\n\
             [[budgets]]\nname = \"month\"\nscope = \"provider\"\nusd = 100.0\nwindow = \"monthly\"\n";
        let c = Config::from_toml_with_env(text, &|_| None).unwrap();
        let shown = c.entries(false);
        // Each value reads back as TOML holding what the file set.
        let read = |k: &str| -> toml::Table {
            toml::from_str(&format!("v = {}", shown[k]))
                .unwrap_or_else(|e| panic!("{k}: {e}: {}", shown[k]))
        };
        let r0 = read("rate_limits[0]");
        let v = &r0["v"];
        assert_eq!(v["name"].as_str(), Some("per-key"));
        assert_eq!(v["scope"].as_str(), Some("metadata.user"));
        assert_eq!(v["count"].as_str(), Some("total_tokens"));
        assert_eq!(v["limit"].as_integer(), Some(5000));
        assert_eq!(v["window"].as_str(), Some("60s"));
        assert_eq!(v["technique"].as_str(), Some("fixed"));
        assert_eq!(
            v["models"].as_array().unwrap()[0].as_str(),
            Some("openai/*")
        );
        let r1 = read("rate_limits[1]");
        assert_eq!(r1["v"]["count"].as_str(), Some("concurrent"));
        assert!(
            r1["v"].get("window").is_none(),
            "{}",
            shown["rate_limits[1]"]
        );
        let b0 = read("budgets[0]");
        let v = &b0["v"];
        assert_eq!(v["usd"].as_float(), Some(25.5));
        assert_eq!(v["window"].as_str(), Some("3600s"));
        assert_eq!(v["alert_at"].as_float(), Some(0.8));
        assert_eq!(v["keys"].as_array().unwrap()[0].as_str(), Some("alice"));
        // Text that could close a string, escapes, sub-second windows, a
        // route and a key's metadata read back too.
        let odd = Config::from_toml_with_env(
            "[[rate_limits]]\nname = \"caf\u{e9}\\u0301 \\\"x\\\" \\n\"\nscope = 'metadata.team\", note = \"'\ncount = \"requests\"\nlimit = 3\nwindow = \"1500ms\"\n\
             [keys.\"team.alice\"]\nsecret_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nmetadata = { \"a b\" = \"x\\\"y\" }\n\
             [routes.r]\nstrategy = \"weighted\"\ntargets = [{ provider = \"mock\", model = \"m\\\"1\", weight = 2, first_byte = \"2500ms\" }]\nvariants = [{ when = { \"metadata.tier\" = \"free\" }, targets = [{ provider = \"mock\", model = \"small\" }] }]\nretry = { attempts = 3, base = \"100ms\" }\nfallback_on = [429, \"timeout\"]\ncooldown = { failures = 2, window = \"10s\", duration = \"1m\" }\n",
            &|_| None,
        )
        .unwrap();
        let shown = odd.entries(false);
        for k in [
            "rate_limits[0]",
            "keys.\"team.alice\".metadata",
            "keys.\"team.alice\".models",
            "routes.r",
        ] {
            let text = &shown[k];
            let v: toml::Table = toml::from_str(&format!("v = {text}"))
                .unwrap_or_else(|e| panic!("{k}: {e}: {text}"));
            match k {
                "rate_limits[0]" => {
                    assert_eq!(
                        v["v"]["name"].as_str(),
                        Some(odd.rate_limits[0].name.as_str())
                    );
                    assert_eq!(v["v"]["scope"].as_str(), Some("metadata.team\", note = \""));
                    assert_eq!(v["v"]["window"].as_str(), Some("1500ms"));
                    assert!(v["v"].get("note").is_none());
                }
                "keys.\"team.alice\".metadata" => assert_eq!(v["v"]["a b"].as_str(), Some("x\"y")),
                "routes.r" => {
                    let r = &v["v"];
                    assert_eq!(r["strategy"].as_str(), Some("weighted"));
                    assert_eq!(r["targets"][0]["model"].as_str(), Some("m\"1"));
                    assert_eq!(r["targets"][0]["first_byte"].as_str(), Some("2500ms"));
                    assert_eq!(
                        r["variants"][0]["when"]["metadata.tier"].as_str(),
                        Some("free")
                    );
                    assert_eq!(r["retry"]["attempts"].as_integer(), Some(3));
                    assert_eq!(r["retry"]["base"].as_str(), Some("100ms"));
                    assert_eq!(r["fallback_on"].as_array().map(Vec::len), Some(2));
                    assert_eq!(r["cooldown"]["duration"].as_str(), Some("60s"));
                }
                _ => {}
            }
        }
        // A name cannot start a line of its own, nor a value.
        let forged = Config::from_toml_with_env(
            "[routes.\"fake\\nproviders.m.api_key = sk-live-SHOWN\"]\ntargets = [{ provider = \"mock\", model = \"a\\nb\" }]\n[prices.\"m/a\\nb\"]\ninput = 1.0\noutput = 1.0\n",
            &|_| None,
        )
        .unwrap();
        for (k, v) in forged.entries(false) {
            assert!(!k.contains('\n') && !v.contains('\n'), "{k:?} = {v:?}");
        }
        // What is shown parses back to the same rule.
        let again = Config::from_toml_with_env(
            &format!(
                "[[rate_limits]]\nname = {}\nscope = {}\ncount = \"requests\"\nlimit = 3\nwindow = {}\n",
                toml::Value::from(odd.rate_limits[0].name.as_str()),
                toml::Value::from(odd.rate_limits[0].scope.describe()),
                toml::Value::from("1500ms"),
            ),
            &|_| None,
        )
        .unwrap();
        assert_eq!(again.rate_limits[0], odd.rate_limits[0]);
        let b1 = read("budgets[1]");
        assert_eq!(b1["v"]["window"].as_str(), Some("monthly"));
        assert_eq!(b1["v"]["name"].as_str(), Some("month"));
        assert!(b1["v"].get("alert_at").is_none());
        // A rolling window reads back as the same rule.
        let again = Config::from_toml_with_env(
            &format!(
                "[[budgets]]\nscope = \"key\"\nusd = 1.0\nwindow = {}\n",
                toml::Value::from(v["window"].as_str().unwrap())
            ),
            &|_| None,
        )
        .unwrap();
        assert_eq!(again.budgets[0].window, c.budgets[0].window);
    }

    #[test]
    fn admin_listen_takes_a_port_for_loopback_or_an_address() {
        let listen = |v: &str| {
            Config::from_toml_with_env(&format!("[admin]\nlisten = \"{v}\"\n"), &|_| None)
                .map(|c| c.admin_listen.unwrap().to_string())
        };
        assert_eq!(listen("9090").unwrap(), "127.0.0.1:9090");
        assert_eq!(listen(":9091").unwrap(), "127.0.0.1:9091");
        assert_eq!(listen("0.0.0.0:9092").unwrap(), "0.0.0.0:9092");
        assert!(errors("[admin]\nlisten = \"nope\"\n")[0].starts_with("admin.listen:"));
        assert!(
            Config::from_toml_with_env("", &|_| None)
                .unwrap()
                .admin_listen
                .is_none()
        );
    }

    #[test]
    fn bad_values_name_their_key_paths() {
        let e = errors(
            "[server]\nlisten = \"nope\"\n[timeouts]\nhead = 5\n[providers.x]\nkind = \"grpc\"\n[providers.y]\nkind = \"openai\"\n",
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("server.listen: `nope` is not IP:PORT")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("timeouts.head: a bare number has no unit")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("providers.x.kind: unknown kind `grpc`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("providers.y.base_url: missing")),
            "{e:?}"
        );
    }
}
