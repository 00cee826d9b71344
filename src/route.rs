//! Routing: stage 2. Turns a request path (and, for unified routes, the model
//! string) into where the request goes.
//!
//! Owns the three URL layouts: unified `/v1/<endpoint>`, passthrough
//! `/<provider>/<rest>`, and Cloudflare's `/v1/<account>/<gateway>/...`. Does not
//! know providers' addresses or keys (`upstream`).

/// Endpoints of the OpenAI-compatible unified API.
pub const UNIFIED_ENDPOINTS: &[&str] =
    &["chat/completions", "completions", "embeddings", "responses"];

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// OpenAI-compatible request; the provider comes from `model: "provider/model"`.
    Unified {
        endpoint: &'static str,
        query: &'a str,
        cloudflare: bool,
    },
    /// Forward `rest` (no leading slash, query included) to `provider`'s base URL.
    Passthrough {
        provider: &'a str,
        rest: &'a str,
        cloudflare: bool,
    },
    NotFound,
    /// A path that tries to climb out of its base URL (`..`).
    Traversal,
}

pub fn route(target: &str) -> Route<'_> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, ""),
    };
    if path == "/healthz" {
        return Route::Health;
    }
    if has_dot_segment(path) {
        return Route::Traversal;
    }
    if let Some(rest) = path.strip_prefix("/v1/") {
        if let Some(ep) = unified(rest) {
            return Route::Unified {
                endpoint: ep,
                query,
                cloudflare: false,
            };
        }
        // Cloudflare layout: /v1/<account>/<gateway>/<provider or compat>/<rest>
        let mut parts = rest.splitn(4, '/');
        let (Some(account), Some(gateway), Some(provider), Some(tail)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Route::NotFound;
        };
        if account.is_empty() || gateway.is_empty() || provider.is_empty() {
            return Route::NotFound;
        }
        if provider == "compat" {
            return match unified(tail) {
                Some(ep) => Route::Unified {
                    endpoint: ep,
                    query,
                    cloudflare: true,
                },
                None => Route::NotFound,
            };
        }
        let start = target.len() - query.len() - tail.len();
        return Route::Passthrough {
            provider,
            rest: &target[start..],
            cloudflare: true,
        };
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Route::NotFound;
    };
    match rest.split_once('/') {
        Some((provider, _)) if !provider.is_empty() => Route::Passthrough {
            provider,
            rest: &target[provider.len() + 2..],
            cloudflare: false,
        },
        _ => Route::NotFound,
    }
}

fn unified(rest: &str) -> Option<&'static str> {
    let rest = rest.trim_end_matches('/');
    UNIFIED_ENDPOINTS.iter().copied().find(|e| *e == rest)
}

/// `.` or `..` segments, also percent-encoded, which could escape a base path.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let mut rest = seg.as_bytes();
        let mut dots = 0;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && (rest[2] | 0x20) == b'e'
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// Splits `provider/model` at the first slash.
pub fn split_model(model: &str) -> Option<(&str, &str)> {
    let (p, m) = model.split_once('/')?;
    (!p.is_empty() && !m.is_empty()).then_some((p, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_layouts_route() {
        assert_eq!(
            route("/v1/chat/completions"),
            Route::Unified {
                endpoint: "chat/completions",
                query: "",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/v1/embeddings?x=1"),
            Route::Unified {
                endpoint: "embeddings",
                query: "?x=1",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/openai/chat/completions?a=b"),
            Route::Passthrough {
                provider: "openai",
                rest: "chat/completions?a=b",
                cloudflare: false
            }
        );
        assert_eq!(
            route("/v1/acct/gw/anthropic/v1/messages"),
            Route::Passthrough {
                provider: "anthropic",
                rest: "v1/messages",
                cloudflare: true
            }
        );
        assert_eq!(
            route("/v1/acct/gw/compat/chat/completions"),
            Route::Unified {
                endpoint: "chat/completions",
                query: "",
                cloudflare: true
            }
        );
        assert_eq!(route("/healthz"), Route::Health);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/v1/models"), Route::NotFound);
        assert_eq!(route("/openai/../x"), Route::Traversal);
        assert_eq!(route("/openai/%2E%2e/x"), Route::Traversal);
    }

    #[test]
    fn model_strings_split_at_the_first_slash() {
        assert_eq!(
            split_model("openrouter/meta/llama"),
            Some(("openrouter", "meta/llama"))
        );
        assert_eq!(split_model("gpt-4o"), None);
        assert_eq!(split_model("/x"), None);
    }
}
