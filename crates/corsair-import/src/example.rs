//! Concrete origins for findings: one the source allowed and the policy does not.
//!
//! Every candidate is checked against both sides before it is shown, so a finding never names an
//! origin that does not make its point.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Suffixes that turn an allowed origin into one on a host anyone can register.
const TAILS: [&str; 3] = [".attacker.example", "-attacker.example", "attacker.example"];

/// An origin starting with `prefix` (so the source allowed it) that the policy refuses.
pub(crate) fn prefix_example(prefix: &str, policy_allows: impl Fn(&str) -> bool) -> Option<String> {
    TAILS
        .iter()
        .map(|tail| format!("{prefix}{tail}"))
        .find(|c| is_origin(c) && !policy_allows(c))
}

/// An origin that `re` matches somewhere inside (an unanchored search, as Go's `MatchString` and
/// nginx's `~*` do) but the policy refuses.
pub(crate) fn unanchored_example(
    re: &str,
    case_insensitive: bool,
    policy_allows: impl Fn(&str) -> bool,
) -> Option<String> {
    let flags = if case_insensitive { "(?i)" } else { "" };
    let search = regex::Regex::new(&format!("{flags}{re}")).ok()?;
    let base = sample(re)?;
    let mut candidates: Vec<String> = TAILS.iter().map(|t| format!("{base}{t}")).collect();
    // Only the start unanchored: something in front of the scheme.
    candidates.push(format!("x{base}"));
    candidates
        .into_iter()
        .find(|c| is_origin(c) && search.is_match(c) && !policy_allows(c))
}

/// A short string that `re` matches in full: literals as written, the first member of each class
/// (a lowercase letter where the class has one), each repetition at least once.
pub(crate) fn sample(re: &str) -> Option<String> {
    let hir = regex_syntax::parse(re).ok()?;
    let mut out = String::new();
    walk(&hir, &mut out)?;
    let whole = regex::Regex::new(&format!("^(?:{re})$")).ok()?;
    whole.is_match(&out).then_some(out)
}

fn walk(hir: &Hir, out: &mut String) -> Option<()> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => out.push_str(std::str::from_utf8(&lit.0).ok()?),
        HirKind::Class(Class::Unicode(class)) => {
            let pick = class
                .ranges()
                .iter()
                .find(|r| r.start() <= 'a' && 'a' <= r.end())
                .map(|_| 'a')
                .or_else(|| class.ranges().first().map(|r| r.start()))?;
            out.push(pick);
        }
        HirKind::Class(Class::Bytes(class)) => {
            let b = class.ranges().first()?.start();
            out.push(char::from(b));
        }
        HirKind::Repetition(rep) => {
            let times = rep.min.max(1);
            for _ in 0..times {
                walk(&rep.sub, out)?;
            }
        }
        HirKind::Capture(cap) => walk(&cap.sub, out)?,
        HirKind::Concat(items) => {
            for item in items {
                walk(item, out)?;
            }
        }
        HirKind::Alternation(items) => walk(items.first()?, out)?,
    }
    Some(())
}

/// `scheme://host[:port]` with a plausible host: what a browser could send.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            rest
        }
    });
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+')
        && !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
