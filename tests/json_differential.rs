//! The gateway's reading of request bodies against the ways providers' JSON
//! parsers read them. What aigw forwards must mean to every parser what aigw
//! understood: when aigw accepts a body, each modelled reader finds the same
//! model, stream, output cap, answer count and usage request in it; when a
//! strict parser (serde_json) accepts a body aigw refuses, aigw's reason must
//! hold. The cache key's canonical form must mean what the body means, and a
//! rewritten body what the rewrite says. Bodies are mutated from realistic
//! seeds, many thousands per run, from a fixed seed (a failure repeats).
//!
//! The readers modelled, each over every member a strict parser accepts:
//! - exact, last wins: Python's `json`, JavaScript's `JSON.parse`, serde_json;
//! - exact, first wins: streaming readers that stop at the first match;
//! - case-folded, last wins: Go's `encoding/json` and ASP.NET Core, which
//!   match a member to a field ignoring case (Go also folds `ſ` to `s`, the
//!   Kelvin sign to `k`, and `ı` and `İ` to `i`);
//! - lax numbers: pydantic's default mode, which reads `1e2`, `100.0` and
//!   `"100"` as the integer 100 (vLLM and other OpenAI-compatible servers).

use aigw::cache::key::{self, NoKey};
use aigw::json::{self, BodyError, RequestFields, Rewrite};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that keeps every member of an object, repeats included, in order.
#[derive(Clone, Debug, PartialEq)]
enum J {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<J, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = J;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<J, E> {
                Ok(J::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<J, E> {
                Ok(J::Bool(b))
            }
            fn visit_u64<E>(self, n: u64) -> Result<J, E> {
                Ok(J::Num(n.into()))
            }
            fn visit_i64<E>(self, n: i64) -> Result<J, E> {
                Ok(J::Num(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<J, E> {
                serde_json::Number::from_f64(n)
                    .map(J::Num)
                    .ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<J, E> {
                Ok(J::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<J, E> {
                Ok(J::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(J::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = map.next_entry::<String, J>()? {
                    v.push((k, x));
                }
                Ok(J::Obj(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object's members, in order.
type Members = [(String, J)];

/// The body as a strict parser reads it (`None`: it refuses the body).
fn strict(body: &[u8]) -> Option<J> {
    serde_json::from_slice(body).ok()
}

/// A member name as Go's `encoding/json` compares it: each character as the
/// upper case of its lower case where each is one character (Go lowers `İ`
/// to `i`), written here apart from the gateway's own folding and held to
/// Go's own results by `the_test_folds_as_go_does`.
fn folded(name: &str) -> String {
    let one = |c: char, mapped: Vec<char>| if mapped.len() == 1 { mapped[0] } else { c };
    name.chars()
        .map(|c| {
            let lower = if c == '\u{130}' {
                'i'
            } else {
                one(c, c.to_lowercase().collect())
            };
            one(lower, lower.to_uppercase().collect())
        })
        .collect()
}

#[test]
fn the_test_folds_as_go_does() {
    // strings.EqualFold and encoding/json's folding, by Go's unicode tables.
    for (c, go) in [
        ("a", "A"),
        ("\u{17f}", "S"),
        ("\u{212a}", "K"),
        ("\u{131}", "I"),
        ("\u{130}", "I"),
        ("\u{df}", "\u{df}"),
        ("\u{fb06}", "\u{fb06}"),
        ("\u{1c5}", "\u{1c4}"),
        ("\u{e9}", "\u{c9}"),
        ("\u{3c2}", "\u{3a3}"),
        ("\u{ff41}", "\u{ff21}"),
    ] {
        assert_eq!(folded(c), go, "{c}");
    }
}

#[derive(Clone, Copy, Debug)]
enum Reader {
    ExactLast,
    ExactFirst,
    FoldLast,
}

const READERS: [Reader; 3] = [Reader::ExactLast, Reader::ExactFirst, Reader::FoldLast];

/// The value `reader` finds for `name` among `members`.
fn read<'a>(members: &'a [(String, J)], name: &str, reader: Reader) -> Option<&'a J> {
    let mut hits = members.iter().filter(|(k, _)| match reader {
        Reader::ExactLast | Reader::ExactFirst => k == name,
        Reader::FoldLast => folded(k) == name.to_ascii_uppercase(),
    });
    match reader {
        Reader::ExactFirst => hits.next(),
        _ => hits.next_back(),
    }
    .map(|(_, v)| v)
}

/// How many members `name` has, exactly and once folded.
fn counts(members: &[(String, J)], name: &str) -> (usize, usize) {
    (
        members.iter().filter(|(k, _)| k == name).count(),
        members
            .iter()
            .filter(|(k, _)| folded(k) == name.to_ascii_uppercase())
            .count(),
    )
}

/// An integer as pydantic's lax mode reads one (a whole number written any
/// way JSON allows, or digits in a string).
fn lax_integer(v: &J) -> Option<u64> {
    match v {
        J::Num(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f >= 0.0 && f.fract() == 0.0 && f < 1e19).then_some(f as u64)
        }),
        J::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

/// An integer as a strict reader reads one: a JSON integer.
fn strict_integer(v: &J) -> Option<u64> {
    match v {
        J::Num(n) => n.as_u64(),
        _ => None,
    }
}

const CAPS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// What aigw read from an accepted body.
#[derive(Debug, PartialEq)]
struct Reading {
    model: Option<String>,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
    choices: u64,
}

fn aigw_reading(body: &[u8], f: &RequestFields) -> Reading {
    Reading {
        model: f.model(body).map(|m| m.into_owned()),
        stream: f.is_stream(body),
        include_usage: json::client_asked_usage(body, f),
        max_tokens: f.max_tokens(body),
        choices: f.choices(body),
    }
}

/// What `reader` reads from a body's top-level members, with `integer`
/// reading the numbers.
fn reader_reading(top: &[(String, J)], reader: Reader, integer: fn(&J) -> Option<u64>) -> Reading {
    let options = match read(top, "stream_options", reader) {
        Some(J::Obj(m)) => Some(m.as_slice()),
        _ => None,
    };
    Reading {
        model: match read(top, "model", reader) {
            Some(J::Str(s)) => Some(s.clone()),
            _ => None,
        },
        stream: read(top, "stream", reader) == Some(&J::Bool(true)),
        include_usage: options.and_then(|m| read(m, "include_usage", reader))
            == Some(&J::Bool(true)),
        max_tokens: CAPS
            .iter()
            .filter_map(|c| read(top, c, reader).and_then(integer))
            .max(),
        choices: read(top, "n", reader).and_then(integer).unwrap_or(1).max(1),
    }
}

/// Checks one body: aigw's scan against the readers, the canonical form
/// against the strict reading, and the rewrite against what it promises.
/// Returns whether aigw accepted it.
fn check(body: &[u8], rng: &mut Rng) -> bool {
    let scanned = json::scan_request(body);
    let mut canon = Vec::new();
    let canonical = key::canonical(body, &mut canon);
    let Some(value) = strict(body) else {
        // Nothing to compare with, but nothing may panic either (above), and
        // a refused body has no reading to forward.
        return scanned.is_ok();
    };
    check_canonical(body, &value, &canonical, &canon, rng);
    let J::Obj(top) = &value else {
        assert!(scanned.is_err(), "a body that is not an object is refused");
        return false;
    };
    match scanned {
        Ok(f) => {
            let ours = aigw_reading(body, &f);
            for reader in READERS {
                let theirs = reader_reading(top, reader, strict_integer);
                assert_eq!(
                    ours,
                    theirs,
                    "{reader:?} reads {} otherwise",
                    String::from_utf8_lossy(body)
                );
            }
            let lax = reader_reading(top, Reader::ExactLast, lax_integer);
            assert_eq!(
                (ours.max_tokens, ours.choices),
                (lax.max_tokens, lax.choices),
                "a lax reader reads the numbers of {} otherwise",
                String::from_utf8_lossy(body)
            );
            check_rewrite(body, &f, top);
            true
        }
        Err(e) => {
            assert!(
                refusal_holds(&e, top),
                "{e} does not hold for {}",
                String::from_utf8_lossy(body)
            );
            false
        }
    }
}

/// Whether a strictly valid object really has what `e` says, of the field
/// `e` names.
fn refusal_holds(e: &BodyError, top: &[(String, J)]) -> bool {
    // The object and member name a field's path names: `include_usage` in
    // the `stream_options` the gateway read (the one spelled exactly).
    let at = |path: &str| -> Option<(&Members, String)> {
        match path.strip_prefix("stream_options.") {
            Some(inner) => match read(top, "stream_options", Reader::ExactLast) {
                Some(J::Obj(m)) => Some((m.as_slice(), inner.to_string())),
                _ => None,
            },
            None => Some((top, path.to_string())),
        }
    };
    let value = |path: &str| at(path).and_then(|(m, n)| read(m, &n, Reader::ExactLast).cloned());
    match *e {
        BodyError::Duplicate(path) => at(path).is_some_and(|(m, n)| counts(m, &n).0 > 1),
        BodyError::CaseVariant(path) => at(path).is_some_and(|(m, n)| {
            let (exact, folds) = counts(m, &n);
            folds > exact
        }),
        BodyError::NotBoolean(path) => !matches!(value(path), None | Some(J::Bool(_) | J::Null)),
        BodyError::NotInteger(path) => {
            value(path).is_some_and(|v| v != J::Null && strict_integer(&v).is_none())
        }
        BodyError::NotString(path) => !matches!(value(path), None | Some(J::Null | J::Str(_))),
        // Every member of a strictly valid object splits and decodes.
        BodyError::Invalid(_) => false,
    }
}

/// Objects compared as sets of members (the canonical form reorders them).
fn same_meaning(a: &J, b: &J) -> bool {
    match (a, b) {
        (J::Obj(x), J::Obj(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .find(|(k2, _)| k2 == k)
                        .is_some_and(|(_, v2)| same_meaning(v, v2))
                })
        }
        (J::Arr(x), J::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_meaning(v, w))
        }
        (J::Num(x), J::Num(y)) => x.to_string() == y.to_string(),
        _ => a == b,
    }
}

/// Whether any object in `v` has two members a reader could take for one.
fn has_repeats(v: &J) -> bool {
    match v {
        J::Obj(m) => {
            let mut names: Vec<String> = m.iter().map(|(k, _)| folded(k)).collect();
            names.sort();
            names.windows(2).any(|w| w[0] == w[1]) || m.iter().any(|(_, v)| has_repeats(v))
        }
        J::Arr(a) => a.iter().any(has_repeats),
        _ => false,
    }
}

fn check_canonical(
    body: &[u8],
    value: &J,
    canonical: &Result<(), NoKey>,
    canon: &[u8],
    rng: &mut Rng,
) {
    let text = || String::from_utf8_lossy(body).into_owned();
    if has_repeats(value) {
        assert_eq!(
            *canonical,
            Err(NoKey::DuplicateKey),
            "a body whose readers disagree has no key: {}",
            text()
        );
        return;
    }
    assert_eq!(
        *canonical,
        Ok(()),
        "a strictly valid body has a key: {}",
        text()
    );
    let back = strict(canon).unwrap_or_else(|| {
        panic!(
            "the canonical form of {} is not JSON: {}",
            text(),
            String::from_utf8_lossy(canon)
        )
    });
    assert!(
        same_meaning(value, &back),
        "the canonical form of {} means something else: {}",
        text(),
        String::from_utf8_lossy(canon)
    );
    let mut again = Vec::new();
    key::canonical(canon, &mut again).expect("a canonical form has a key");
    assert_eq!(
        again, canon,
        "the canonical form of a canonical form is itself"
    );
    // Any two spellings of the same value have the same form (numbers are
    // written as serde_json writes them, which need not be as the body did:
    // a number keeps its spelling in the key).
    let respell = |rng: &mut Rng| {
        let (mut other, mut form) = (Vec::new(), Vec::new());
        write_shuffled(value, rng, &mut other);
        key::canonical(&other, &mut form).expect("a respelled body has a key");
        (other, form)
    };
    let (a, form_a) = respell(rng);
    let (b, form_b) = respell(rng);
    assert_eq!(
        form_a,
        form_b,
        "{} and {} differ only in spelling",
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&b)
    );
}

/// The rewrite of the unified route: the model replaced and usage asked
/// for, everything else as it was.
fn check_rewrite(body: &[u8], f: &RequestFields, top: &[(String, J)]) {
    let model = "up/m\"odel\\ \u{1}é";
    let mut out = Vec::new();
    json::rewrite_body(
        body,
        f,
        &Rewrite {
            model: model.as_bytes(),
            include_usage: true,
        },
        &mut out,
    );
    let text = || {
        format!(
            "{} -> {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&out)
        )
    };
    let Some(J::Obj(new)) = strict(&out) else {
        panic!("a rewritten body is a JSON object: {}", text());
    };
    let g = json::scan_request(&out).unwrap_or_else(|e| panic!("{e}: {}", text()));
    let ours = aigw_reading(&out, &g);
    for reader in READERS {
        let theirs = reader_reading(&new, reader, strict_integer);
        assert_eq!(ours, theirs, "{reader:?}: {}", text());
    }
    assert!(ours.include_usage, "usage is asked for: {}", text());
    if f.model.is_some() {
        assert_eq!(ours.model.as_deref(), Some(model), "{}", text());
    }
    // Every other member stays, in order, as it was.
    let rest = |m: &[(String, J)]| -> Vec<(String, J)> {
        m.iter()
            .filter(|(k, _)| k != "model" && k != "stream_options")
            .cloned()
            .collect()
    };
    assert_eq!(rest(top), rest(&new), "{}", text());
    let options = |m: &[(String, J)]| match read(m, "stream_options", Reader::ExactLast) {
        Some(J::Obj(o)) => rest(o)
            .into_iter()
            .filter(|(k, _)| k != "include_usage")
            .collect(),
        _ => Vec::new(),
    };
    assert_eq!(options(top), options(&new), "{}", text());
}

/// SplitMix64: a fixed seed, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Writes `v` with its members in a random order, random whitespace, and
/// characters escaped at random.
fn write_shuffled(v: &J, rng: &mut Rng, out: &mut Vec<u8>) {
    let ws = |rng: &mut Rng, out: &mut Vec<u8>| {
        for _ in 0..rng.below(3) {
            out.push(*rng.pick(b" \t\n\r"));
        }
    };
    match v {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        J::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
        J::Str(s) => write_string(s, rng, out),
        J::Arr(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                ws(rng, out);
                write_shuffled(x, rng, out);
                ws(rng, out);
            }
            out.push(b']');
        }
        J::Obj(m) => {
            let mut order: Vec<usize> = (0..m.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            out.push(b'{');
            for (n, &i) in order.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                ws(rng, out);
                write_string(&m[i].0, rng, out);
                ws(rng, out);
                out.push(b':');
                ws(rng, out);
                write_shuffled(&m[i].1, rng, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, rng: &mut Rng, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        if must || rng.below(6) == 0 {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                if rng.below(2) == 0 {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                } else {
                    out.extend_from_slice(format!("\\u{u:04X}").as_bytes());
                }
            }
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    out.push(b'"');
}

/// Realistic request bodies to mutate.
const SEEDS: &[&str] = &[
    r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":64,"temperature":0,"stream":false}"#,
    r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}],"n":2}"#,
    r#"{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"model":"claude-sonnet-4","max_tokens":1024,"stream":true,"metadata":{"user_id":"u1"}}"#,
    r#" {"model" : "mock/echo" , "max_completion_tokens" : 5 , "tools" : [ {"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"number"}}}}} ] , "stream_options" : null } "#,
    r#"{"model":"m","input":"hello","max_output_tokens":100,"stream":false,"top_p":0.5,"stop":["\n"],"logit_bias":{"50256":-100}}"#,
    r#"{"mod\u0065l":"a\/b","stream":null,"stream_options":{},"n":1,"seed":-1.5e-3,"user":""}"#,
];

/// Pieces a mutation splices in: JSON's own bytes and broken ones.
const PIECES: &[&str] = &[
    "\"", "\\", "{", "}", "[", "]", ":", ",", " ", "\n", "0", "1", "9", "-", "+", ".", "e", "E",
    "t", "n", "u", "a", "M", "S", "\u{17f}", "\u{212a}", "\u{131}", "\u{130}", "\\u", "\\ud800",
    "\\udc00", "\\u00", "\\u017f", "\\u212a", "\\n", "null", "true", "false",
];

/// Whole members to insert after a body's opening brace.
const MEMBERS: &[&str] = &[
    "\"MODEL\":\"big\",",
    "\"Model\":\"big\",",
    "\"model\":\"other\",",
    "\"Stream\":true,",
    "\"stream\":true,",
    "\"ſtream\":true,",
    "\"max_tokens\":1e2,",
    "\"max_tokens\":100.0,",
    "\"max_tokens\":\"100\",",
    "\"MAX_TOKENS\":9,",
    "\"ma\\u0078_tokens\":7,",
    "\"max_to\u{212a}ens\":8,",
    "\"n\":\"3\",",
    "\"N\":3,",
    "\"n\":2.0,",
    "\"stream_options\":{\"include_usage\":false},",
    "\"Stream_Options\":{\"include_usage\":true},",
    "\"stream_options\":{\"Include_Usage\":true,\"include_usage\":false},",
    "\"stream_options\":{\"ınclude_usage\":true},",
    "\"stream_options\":5,",
    "\"x\":{\"a\":1,\"A\":2},",
    "\"y\":[{\"k\":1,\"\u{212a}\":2}],",
    "\"z\":{\"a\":1,\"a\":2},",
    "\"w\":{\"\u{e9}\":1,\"\u{c9}\":2},",
    "\"\u{fb06}ream\":true,",
    "\"u\":{\"\u{df}\":1,\"ss\":2},",
    "\"v\":{\"\\u00e9\":1,\"\u{c9}\":2},",
];

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.pick(PIECES).as_bytes()[0];
            }
            1 if at < b.len() => {
                let end = (at + 1 + rng.below(4)).min(b.len());
                b.drain(at..end);
            }
            2 => {
                let from = if rng.below(4) == 0 { MEMBERS } else { PIECES };
                let piece = rng.pick(from);
                b.splice(at..at, piece.bytes());
            }
            3 if !b.is_empty() => {
                // A letter in the other case.
                let i = at.min(b.len() - 1);
                b[i] = if b[i].is_ascii_lowercase() {
                    b[i].to_ascii_uppercase()
                } else {
                    b[i].to_ascii_lowercase()
                };
            }
            _ => {
                // A member right after the opening brace, as a whole.
                if let Some(open) = b.iter().position(|&c| c == b'{') {
                    let piece = rng.pick(MEMBERS);
                    b.splice(open + 1..open + 1, piece.bytes());
                }
            }
        }
    }
    b
}

#[test]
fn every_reader_reads_an_accepted_body_as_aigw_does() {
    let mut rng = Rng(0x5eed_0fa1_6a00);
    let (mut accepted, mut valid) = (0, 0);
    for seed in SEEDS {
        assert!(check(seed.as_bytes(), &mut rng), "seed refused: {seed}");
    }
    for n in 0..20_000 {
        let seed = SEEDS[n % SEEDS.len()].as_bytes();
        let body = mutate(seed, &mut rng);
        valid += usize::from(strict(&body).is_some());
        accepted += usize::from(check(&body, &mut rng));
    }
    // The mutations must reach both sides of every check.
    assert!(valid > 3_000, "only {valid} strictly valid mutants");
    assert!(accepted > 2_000, "only {accepted} accepted mutants");
}

#[test]
fn respelled_bodies_keep_their_meaning_and_their_key() {
    // Strictly valid bodies only, respelled many ways (escapes, order, space).
    let mut rng = Rng(0xca_fe);
    for seed in SEEDS {
        let value = strict(seed.as_bytes()).expect("seeds are JSON");
        for _ in 0..300 {
            let mut body = Vec::new();
            write_shuffled(&value, &mut rng, &mut body);
            assert!(check(&body, &mut rng), "{}", String::from_utf8_lossy(&body));
        }
    }
}
